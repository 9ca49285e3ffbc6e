//! The MSR Cambridge trace reader on arbitrary bytes: no panic, one item
//! per line at most, errors name the file and a line of the input,
//! requests stay below 2^64 and `MAX_REQUEST_BYTES`, times are not
//! negative.

use tierblk::trace::{fuzz::read, Format};
use tierblk_fuzz::violated;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Err(e) = read(Format::Msr, data) {
            violated(e);
        }
    });
}
