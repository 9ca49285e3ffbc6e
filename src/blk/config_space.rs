//! The virtio-blk configuration space (`struct virtio_blk_config`), built
//! field by field at its fixed little-endian offsets.

use super::request::{MAX_DISCARD_SEG, SECTOR_SHIFT};

/// Size of the config space we expose (up to write_zeroes_may_unmap and its
/// padding).
pub const CONFIG_SPACE_BYTES: usize = 60;
const OFF_CAPACITY: usize = 0;
const OFF_SIZE_MAX: usize = 8;
const OFF_SEG_MAX: usize = 12;
const OFF_BLK_SIZE: usize = 20;
const OFF_MIN_IO_SIZE: usize = 26;
const OFF_OPT_IO_SIZE: usize = 28;
/// The `writeback` byte: the only field a driver may write (CONFIG_WCE).
pub const OFF_WRITEBACK: usize = 32;
const OFF_NUM_QUEUES: usize = 34;
const OFF_MAX_DISCARD_SECTORS: usize = 36;
const OFF_MAX_DISCARD_SEG: usize = 40;
const OFF_DISCARD_ALIGNMENT: usize = 44;
const OFF_MAX_WRITE_ZEROES_SECTORS: usize = 48;
const OFF_MAX_WRITE_ZEROES_SEG: usize = 52;
const OFF_WRITE_ZEROES_MAY_UNMAP: usize = 56;

/// Logical block size reported to the guest.
pub const BLOCK_SIZE: u32 = 512;
/// Largest single data segment, bytes.
pub const SIZE_MAX: u32 = 1 << 20;
/// Cap on discard / write-zeroes sectors per segment.
const MAX_ZERO_SECTORS: u32 = (1 << 30) >> SECTOR_SHIFT;

/// What the config space is made from.
#[derive(Debug, Clone, Copy)]
pub struct BlkGeometry {
    pub capacity_bytes: u64,
    pub chunk_bytes: u64,
    pub num_queues: u16,
    pub seg_max: u32,
    pub writeback: bool,
}

pub fn build(g: &BlkGeometry) -> [u8; CONFIG_SPACE_BYTES] {
    let mut c = [0u8; CONFIG_SPACE_BYTES];
    let put32 = |c: &mut [u8; CONFIG_SPACE_BYTES], off: usize, v: u32| {
        c[off..off + 4].copy_from_slice(&v.to_le_bytes())
    };
    c[OFF_CAPACITY..OFF_CAPACITY + 8]
        .copy_from_slice(&(g.capacity_bytes >> SECTOR_SHIFT).to_le_bytes());
    put32(&mut c, OFF_SIZE_MAX, SIZE_MAX);
    put32(&mut c, OFF_SEG_MAX, g.seg_max);
    put32(&mut c, OFF_BLK_SIZE, BLOCK_SIZE);
    // Hint the guest to issue I/O at least page-sized and, ideally, chunk
    // aligned (min_io_size in blocks, opt_io_size in blocks).
    c[OFF_MIN_IO_SIZE..OFF_MIN_IO_SIZE + 2].copy_from_slice(&8u16.to_le_bytes());
    put32(
        &mut c,
        OFF_OPT_IO_SIZE,
        (g.chunk_bytes / BLOCK_SIZE as u64).min(u32::MAX as u64) as u32,
    );
    c[OFF_WRITEBACK] = g.writeback as u8;
    c[OFF_NUM_QUEUES..OFF_NUM_QUEUES + 2].copy_from_slice(&g.num_queues.to_le_bytes());
    put32(&mut c, OFF_MAX_DISCARD_SECTORS, MAX_ZERO_SECTORS);
    put32(&mut c, OFF_MAX_DISCARD_SEG, MAX_DISCARD_SEG);
    put32(&mut c, OFF_DISCARD_ALIGNMENT, BLOCK_SIZE >> SECTOR_SHIFT);
    put32(&mut c, OFF_MAX_WRITE_ZEROES_SECTORS, MAX_ZERO_SECTORS);
    put32(&mut c, OFF_MAX_WRITE_ZEROES_SEG, MAX_DISCARD_SEG);
    c[OFF_WRITE_ZEROES_MAY_UNMAP] = 1;
    c
}

/// The bytes of the config space visible at [offset, offset+size).
pub fn read(space: &[u8; CONFIG_SPACE_BYTES], offset: u32, size: u32) -> Vec<u8> {
    let start = (offset as usize).min(CONFIG_SPACE_BYTES);
    let end = (offset as usize)
        .saturating_add(size as usize)
        .min(CONFIG_SPACE_BYTES);
    space[start..end].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_at_virtio_offsets() {
        let c = build(&BlkGeometry {
            capacity_bytes: 1 << 30,
            chunk_bytes: 1 << 20,
            num_queues: 2,
            seg_max: 126,
            writeback: true,
        });
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap()),
            2 * 1024 * 1024
        );
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 126);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        assert_eq!(c[32], 1);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 2);
        assert_eq!(
            u32::from_le_bytes(c[40..44].try_into().unwrap()),
            MAX_DISCARD_SEG
        );
    }

    #[test]
    fn reads_past_the_end_are_clipped() {
        let c = [7u8; CONFIG_SPACE_BYTES];
        assert_eq!(read(&c, 56, 8).len(), 4);
        assert!(read(&c, 200, 4).is_empty());
        assert!(read(&c, u32::MAX, u32::MAX).is_empty());
    }
}
