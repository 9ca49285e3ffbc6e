//! Shared pieces of the AFL targets (`src/bin/*.rs`): each target feeds the
//! fuzzer's bytes to one parser through the same check its `fuzz_*`
//! property test uses (`tierblk::…::fuzz`), and a failed check panics,
//! which the `fuzz!` loop turns into a crash AFL records.

use std::fmt::Display;

/// Panics with the violated property: AFL saves the input as a crash.
pub fn violated(e: impl Display) -> ! {
    panic!("property violated: {e}")
}

/// Text for the text parsers: invalid UTF-8 is replaced, not dropped, so
/// every input reaches the parser.
pub fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Structured values read off the fuzzer's bytes (little endian; reads
/// past the end give zeros, so every input decodes).
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let n = N.min(self.0.len());
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        b
    }

    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// One of `edges` (three times in four) or a value from `other`.
    pub fn edge_or<T: Copy>(&mut self, edges: &[T], other: impl FnOnce(&mut Self) -> T) -> T {
        let tag = self.u8();
        if tag % 4 == 3 || edges.is_empty() {
            other(self)
        } else {
            edges[usize::from(tag / 4) % edges.len()]
        }
    }
}
