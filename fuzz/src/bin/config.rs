//! `Config::parse` on arbitrary text: no panic; an error has a message
//! (TOML errors a line); a config that parses validates, prints and reads
//! back equal. The first line also goes to the byte-size parser.

use tierblk::config::fuzz::{byte_size_checked, parse_checked};
use tierblk_fuzz::{text, violated};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let text = text(data);
        if let Err(e) = parse_checked(&text) {
            violated(e);
        }
        if let Err(e) = byte_size_checked(text.lines().next().unwrap_or_default()) {
            violated(e);
        }
    });
}
