//! `VmProfile::parse` (libvirt domain XML) on arbitrary text: no panic, no
//! allocation out of proportion to the input, the nesting bound holds, and
//! a profile that parses yields prior heat maps in range.

use tierblk::profile::vm_fuzz::check;
use tierblk_fuzz::{text, violated};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Err(e) = check(&text(data)) {
            violated(e);
        }
    });
}
