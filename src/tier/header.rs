//! The identity header every tier device carries in its first 64 KiB: a
//! UUID, the tier's name, the extent unit, the data capacity and the format
//! version. It is written when a device becomes a tier and checked against
//! the metadata store at every open, so a wrong, emptied, swapped or foreign
//! device is refused instead of being read as zeros or as another tier's
//! data (DESIGN decision 8).
//!
//! Layout (little endian), then zeros up to `HEADER_BYTES`:
//! ```text
//!  0      8        12        16       20
//! | magic | version | body len | crc32 | body (JSON) ...
//! ```

use std::{fs::File, os::unix::fs::FileExt};

use serde::{Deserialize, Serialize};

/// Bytes reserved at the start of every tier device for the header; the
/// extents follow it.
pub const HEADER_BYTES: u64 = 64 * 1024;
const MAGIC: &[u8; 8] = b"TIERBLK\0";
/// On-device format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const FIXED: usize = 20;
/// Largest body accepted (the header block holds far less).
const MAX_BODY: usize = 4096 - FIXED;

/// What a tier device says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierHeader {
    /// Random identity given when the device became a tier.
    pub uuid: String,
    /// Name of the tier the device was made for.
    pub tier_name: String,
    /// Extent allocation unit, bytes.
    pub unit_bytes: u64,
    /// Bytes of extents after the header.
    pub capacity: u64,
}

/// Why a header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("reading the tier header: {0}")]
    Io(#[from] std::io::Error),
    #[error("tier header format version {0} is not supported (this tierblk reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("tier header is damaged ({0})")]
    Damaged(String),
}

impl TierHeader {
    /// A header with a fresh random UUID.
    pub fn new(tier_name: &str, unit_bytes: u64, capacity: u64) -> Self {
        Self {
            uuid: uuid::Uuid::new_v4().to_string(),
            tier_name: tier_name.to_string(),
            unit_bytes,
            capacity,
        }
    }

    /// Reads the header at the start of `file`: `Ok(None)` when the device
    /// carries no tierblk header at all (new, empty or foreign).
    pub fn read(file: &File) -> Result<Option<Self>, HeaderError> {
        let mut block = vec![0u8; FIXED + MAX_BODY];
        let n = read_up_to(file, &mut block)?;
        if n < FIXED || &block[..8] != MAGIC {
            return Ok(None);
        }
        let word =
            |i: usize| u32::from_le_bytes([block[i], block[i + 1], block[i + 2], block[i + 3]]);
        let version = word(8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        let len = word(12) as usize;
        if len > MAX_BODY || FIXED + len > n {
            return Err(HeaderError::Damaged(format!("body length {len}")));
        }
        let body = &block[FIXED..FIXED + len];
        if crc32fast::hash(body) != word(16) {
            return Err(HeaderError::Damaged("checksum mismatch".into()));
        }
        serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| HeaderError::Damaged(e.to_string()))
    }

    /// Writes the header at the start of `file` and makes it durable.
    pub fn write(&self, file: &File) -> std::io::Result<()> {
        let body = serde_json::to_vec(self).expect("a tier header serializes");
        assert!(body.len() <= MAX_BODY, "tier header body too long");
        let mut block = vec![0u8; 4096];
        block[..8].copy_from_slice(MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[12..16].copy_from_slice(&(body.len() as u32).to_le_bytes());
        block[16..20].copy_from_slice(&crc32fast::hash(&body).to_le_bytes());
        block[FIXED..FIXED + body.len()].copy_from_slice(&body);
        file.write_all_at(&block, 0)?;
        file.sync_data()
    }
}

/// Reads from offset 0 until `buf` is full or the device ends.
fn read_up_to(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file() -> File {
        tempfile::tempfile().unwrap()
    }

    #[test]
    fn header_round_trips_and_uuids_differ() {
        let f = temp_file();
        let h = TierHeader::new("nvme", 65536, 1 << 30);
        h.write(&f).unwrap();
        assert_eq!(TierHeader::read(&f).unwrap(), Some(h.clone()));
        assert_ne!(TierHeader::new("nvme", 65536, 1 << 30).uuid, h.uuid);
    }

    #[test]
    fn empty_or_foreign_device_has_no_header() {
        let f = temp_file();
        assert_eq!(TierHeader::read(&f).unwrap(), None);
        f.write_all_at(b"\x7fELF some other file", 0).unwrap();
        assert_eq!(TierHeader::read(&f).unwrap(), None);
    }

    #[test]
    fn damaged_header_is_an_error_not_a_blank_device() {
        let f = temp_file();
        TierHeader::new("ssd", 65536, 1 << 20).write(&f).unwrap();
        f.write_all_at(b"X", 30).unwrap();
        let e = TierHeader::read(&f).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        f.write_all_at(&9u32.to_le_bytes(), 8).unwrap();
        assert!(matches!(TierHeader::read(&f), Err(HeaderError::Version(9))));
    }
}
