//! The `.bpk` model loader on arbitrary bytes: no panic (burn's own panics
//! included), no allocation out of proportion to the file, and a model
//! that loads also scores.

use tierblk::predict::learned::file_fuzz::check;
use tierblk_fuzz::violated;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Err(e) = check(data) {
            violated(e);
        }
    });
}
