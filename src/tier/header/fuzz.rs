//! Property tests feeding hostile bytes to [`TierHeader::read`]: the first
//! block of a tier device is whatever the device holds. Arbitrary bytes and
//! mutated valid headers (checksum fixed or not) read as no header, a
//! header, or an error; never a panic; a header that reads also writes
//! and reads back equal.

// Outside tests (the `fuzzing` feature) only the checks are used, by the
// AFL targets in fuzz/.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

use std::{fs::File, os::unix::fs::FileExt};

use proptest::prelude::*;

use super::*;
use crate::fuzzing;

/// Reads `b` as the start of a tier device and checks the outcome.
pub fn read_bytes(
    b: &[u8],
) -> std::result::Result<Result<Option<TierHeader>, HeaderError>, TestCaseError> {
    // One device per thread, refilled for each case (the AFL target runs
    // millions of cases).
    thread_local!(static DEVICE: File = tempfile::tempfile().expect("a temporary file"));
    DEVICE.with(|f| {
        f.set_len(0)
            .and_then(|()| f.write_all_at(b, 0))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (r, largest) = fuzzing::largest_allocation(|| TierHeader::read(f));
        prop_assert!(
            largest <= 64 << 10,
            "reading a header allocated {largest} bytes at once"
        );
        if let Ok(Some(h)) = &r {
            let g = tempfile::tempfile().map_err(|e| TestCaseError::fail(e.to_string()))?;
            h.write(&g)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = TierHeader::read(&g).ok().flatten();
            prop_assert_eq!(again.as_ref(), Some(h));
        }
        Ok(r)
    })
}

fn valid_block(name: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&TierHeader::new(name, 65536, 1 << 30)).unwrap_or_default();
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    b.extend_from_slice(&body);
    b
}

proptest! {
    #![proptest_config(fuzzing::config(10000))]

    #[test]
    fn fuzz_tier_header_bytes(
        magic in any::<bool>(),
        rest in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut b = if magic { MAGIC.to_vec() } else { vec![] };
        b.extend_from_slice(&rest);
        let _ = read_bytes(&b)?;
    }
}

proptest! {
    #![proptest_config(fuzzing::config(10000))]

    #[test]
    fn fuzz_tier_header_mutated(
        name in prop_oneof!["[a-z]{1,8}", any::<String>(), "[\u{0}-\u{1f}]{60,64}"],
        muts in fuzzing::mutations(4),
        fix_crc in any::<bool>(),
    ) {
        let mut b = fuzzing::apply(&valid_block(&name), &muts);
        // With the checksum recomputed, the mutations reach the JSON body.
        if fix_crc && b.len() >= FIXED {
            let len = (u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize)
                .min(b.len() - FIXED);
            let crc = crc32fast::hash(&b[FIXED..FIXED + len]);
            b[16..20].copy_from_slice(&crc.to_le_bytes());
        }
        let _ = read_bytes(&b)?;
    }
}
