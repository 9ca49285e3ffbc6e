//! `TierHeader::read` on arbitrary first bytes of a device: no panic, no
//! large allocation, and a header that reads writes and reads back equal.

use tierblk::tier::header::fuzz::read_bytes;
use tierblk_fuzz::violated;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Err(e) = read_bytes(data) {
            violated(e);
        }
    });
}
