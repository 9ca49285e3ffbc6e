//! Shared pieces of the property tests that feed hostile input to every
//! parser of untrusted input (the `fuzz_*` tests beside each parser).
//!
//! Each target runs a case count chosen to take a few seconds in a debug
//! build; `TIERBLK_FUZZ_CASES=N` overrides it for every target, so a long
//! run is `TIERBLK_FUZZ_CASES=10000000 cargo test --release fuzz_`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use proptest::{prelude::*, sample::Index, test_runner::Config};

/// The case count: `TIERBLK_FUZZ_CASES` when set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("TIERBLK_FUZZ_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// A proptest configuration running [`cases`]`(default)` cases. Failures
/// are not persisted to files: proptest prints the shrunk input, and each
/// bug found gets a plain regression test beside its parser.
pub fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Numbers and number-like text a parser of decimal fields should refuse or
/// take in its stride.
pub const HOSTILE_NUMBERS: &[&str] = &[
    "",
    " ",
    "0",
    "-0",
    "-1",
    "+5",
    "1.5",
    "1e3",
    "1e400",
    "-1e400",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "infinity",
    "0x10",
    "1_000",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "99999999999999999999999999999999999999999999",
    "\u{0663}",
    "\u{feff}1",
    "1\u{0}",
    "\u{0}",
    "\"1\"",
    "١٢",
];

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flips one bit.
    FlipBit(Index, u8),
    /// Overwrites one byte.
    SetByte(Index, u8),
    /// Overwrites 1, 2, 4 or 8 bytes with an edge value (little endian).
    SetWord(Index, u8, u64),
    /// Inserts bytes.
    Insert(Index, Vec<u8>),
    /// Removes up to `n` bytes.
    Delete(Index, usize),
    /// Repeats up to `n` bytes in place.
    Duplicate(Index, usize),
    /// Cuts the input.
    Truncate(Index),
}

fn edge_word() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(0x7f),
        Just(0x80),
        Just(0xff),
        Just(0x7fff),
        Just(0xffff),
        Just(0x7fff_ffff),
        Just(0xffff_ffff),
        Just(0x1_0000_0000),
        Just(i64::MAX as u64),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

/// One random [`Mutation`].
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => (any::<Index>(), prop::sample::select(vec![1u8, 2, 4, 8]), edge_word())
            .prop_map(|(i, w, v)| Mutation::SetWord(i, w, v)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// 1 to `max` mutations.
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=max)
}

/// `seed` with `muts` applied in order.
pub fn apply(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let len = b.len();
        // Positions in 0..len (0..=len for inserts); an empty input only
        // takes inserts.
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
        match m {
            Mutation::Insert(i, bytes) => {
                let pos = if len == 0 { 0 } else { i.index(len + 1) };
                b.splice(pos..pos, bytes.iter().copied());
            }
            _ if len == 0 => {}
            Mutation::FlipBit(i, bit) => b[at(i)] ^= 1 << bit,
            Mutation::SetByte(i, v) => b[at(i)] = *v,
            Mutation::SetWord(i, w, v) => {
                let pos = at(i);
                let n = (*w as usize).min(len - pos);
                b[pos..pos + n].copy_from_slice(&v.to_le_bytes()[..n]);
            }
            Mutation::Delete(i, n) => {
                let pos = at(i);
                b.drain(pos..(pos + n).min(len));
            }
            Mutation::Duplicate(i, n) => {
                let pos = at(i);
                let piece = b[pos..(pos + n).min(len)].to_vec();
                b.splice(pos..pos, piece);
            }
            Mutation::Truncate(i) => b.truncate(at(i)),
        }
    }
    b
}

/// The test binary's allocator: the system's, noting the largest single
/// allocation each thread asks for, so a test can check that a parser does
/// not size a buffer from a length field it was given.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown are not tracked.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it
/// made on this thread, in bytes.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LARGEST.with(|l| l.replace(0));
    let out = f();
    let largest = LARGEST.with(|l| l.replace(before.max(l.get())));
    (out, largest)
}

#[cfg(test)]
mod tests {
    use proptest::strategy::ValueTree;

    use super::*;

    #[test]
    fn mutations_apply_to_empty_and_short_inputs_without_panicking() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for _ in 0..2000 {
            let m = mutations(6).new_tree(&mut runner).unwrap().current();
            apply(b"", &m);
            apply(b"x", &m);
            apply(b"hello, world", &m);
        }
    }

    #[test]
    fn largest_allocation_is_measured() {
        let (v, n) = largest_allocation(|| vec![0u8; 3 << 20]);
        assert_eq!(v.len(), 3 << 20);
        assert!(n >= 3 << 20, "{n}");
        let ((), n) = largest_allocation(|| ());
        assert!(n < 3 << 20, "{n}");
    }

    #[test]
    fn case_count_defaults_when_unset() {
        if std::env::var_os("TIERBLK_FUZZ_CASES").is_none() {
            assert_eq!(cases(123), 123);
        }
    }
}
