//! The `.bpk` model loader on arbitrary bytes: no panic escapes it, no
//! allocation out of proportion to the file, and a model that loads also
//! scores. burn panics on some corrupt weights (a float stored as U32, say)
//! and the loader catches that (`predict::learned::file`, this crate
//! unwinds on panic), so the target uses `fuzz_nohook!`: a panic caught
//! inside the loader is an error like any other, one that escapes it is a
//! crash.

use tierblk::predict::learned::file_fuzz::check;
use tierblk_fuzz::violated;

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        if let Err(e) = check(data) {
            violated(e);
        }
    });
}
