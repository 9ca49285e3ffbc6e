//! Parsing of virtio-blk requests from descriptor chains. The chain is
//! untrusted guest input: every malformed layout maps to a virtio status,
//! never to a panic or an access outside guest memory.
//!
//! The chain is read as two byte streams, the device-readable part then
//! the device-writable part, so a header, data or status split across
//! descriptors in any way is accepted (VIRTIO_F_ANY_LAYOUT semantics).

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::VIRTIO_BLK_ID_BYTES;

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Size of `struct virtio_blk_outhdr`.
pub const HEADER_BYTES: u64 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
pub const DISCARD_SEGMENT_BYTES: u64 = 16;
/// Discard / write-zeroes segments accepted per request (config space).
pub const MAX_DISCARD_SEG: u32 = 32;
/// The unmap flag of a write-zeroes segment.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// A guest buffer: guest-physical address and length.
pub type GuestBuf = (u64, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

/// A well-formed request. Its data buffers are in `RequestBufs::data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    /// Byte offset on the volume (sector × 512) for reads and writes.
    pub offset: u64,
    pub data_len: u64,
    pub status: GuestAddress,
}

/// A request that cannot be served. `status` is where to put the status
/// byte, if the chain had a usable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: Option<GuestAddress>,
    pub code: u8,
    pub reason: &'static str,
}

/// Reusable scratch vectors, so parsing allocates nothing per request once
/// they have grown to the queue's chain length.
#[derive(Debug, Default)]
pub struct RequestBufs {
    readable: Vec<GuestBuf>,
    writable: Vec<GuestBuf>,
    /// The request's data buffers, in order.
    pub data: Vec<GuestBuf>,
}

impl RequestBufs {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            readable: Vec::with_capacity(n),
            writable: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
        }
    }
}

/// Limits the parser checks requests against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Volume size in bytes.
    pub capacity: u64,
    pub read_only: bool,
}

fn reject(status: Option<GuestAddress>, code: u32, reason: &'static str) -> Reject {
    Reject {
        status,
        code: code as u8,
        reason,
    }
}

/// Appends to `out` the part [skip, skip+take) of the byte stream `src`.
fn slice_stream(src: &[GuestBuf], mut skip: u64, mut take: u64, out: &mut Vec<GuestBuf>) {
    for &(addr, len) in src {
        if take == 0 {
            break;
        }
        let len = len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(take);
        out.push((addr + skip, n as u32));
        take -= n;
        skip = 0;
    }
}

/// Copies the first `buf.len()` bytes of the stream into `buf`.
fn read_stream<M: GuestMemoryBackend>(
    mem: &M,
    src: &[GuestBuf],
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut pos = 0;
    for &(addr, len) in src {
        if pos == buf.len() {
            break;
        }
        let n = (len as usize).min(buf.len() - pos);
        mem.read_slice(&mut buf[pos..pos + n], GuestAddress(addr))?;
        pos += n;
    }
    Ok(())
}

/// Parses one chain. On success `bufs.data` holds the data buffers.
pub fn parse<M: GuestMemoryBackend>(
    chain: impl Iterator<Item = Descriptor>,
    mem: &M,
    limits: Limits,
    bufs: &mut RequestBufs,
) -> Result<Request, Reject> {
    bufs.readable.clear();
    bufs.writable.clear();
    bufs.data.clear();
    let (mut rd_len, mut wr_len) = (0u64, 0u64);
    let mut order_ok = true;
    for d in chain {
        if d.len() == 0 {
            continue;
        }
        if d.is_write_only() {
            bufs.writable.push((d.addr().0, d.len()));
            wr_len += d.len() as u64;
        } else {
            order_ok &= bufs.writable.is_empty();
            bufs.readable.push((d.addr().0, d.len()));
            rd_len += d.len() as u64;
        }
    }
    // The status byte is the last byte of the writable part.
    let status = bufs.writable.last().and_then(|&(addr, len)| {
        let a = GuestAddress(addr.checked_add(len as u64 - 1)?);
        mem.check_address(a)
    });
    let Some(status) = status else {
        return Err(reject(None, VIRTIO_BLK_S_IOERR, "no writable status byte"));
    };
    let io_err = |reason| reject(Some(status), VIRTIO_BLK_S_IOERR, reason);
    if !order_ok {
        return Err(io_err("device-readable descriptor after a writable one"));
    }
    if rd_len < HEADER_BYTES {
        return Err(io_err("request header shorter than 16 bytes"));
    }
    let mut hdr = [0u8; HEADER_BYTES as usize];
    read_stream(mem, &bufs.readable, &mut hdr)
        .map_err(|_| io_err("request header outside guest memory"))?;
    let kind = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
    let out_len = rd_len - HEADER_BYTES;
    let in_len = wr_len - 1;
    let (kind, data_len) = match kind {
        VIRTIO_BLK_T_IN => {
            if out_len != 0 {
                return Err(io_err("read request with device-readable data"));
            }
            slice_stream(&bufs.writable, 0, in_len, &mut bufs.data);
            (Kind::Read, in_len)
        }
        VIRTIO_BLK_T_OUT => {
            if in_len != 0 {
                return Err(io_err("write request with device-writable data"));
            }
            if limits.read_only {
                return Err(io_err("write to a read-only volume"));
            }
            slice_stream(&bufs.readable, HEADER_BYTES, out_len, &mut bufs.data);
            (Kind::Write, out_len)
        }
        VIRTIO_BLK_T_FLUSH => {
            // "A driver MUST set sector to 0 for a VIRTIO_BLK_T_FLUSH
            // request" (5.2.6.1): anything else is a driver error. Data
            // is only a SHOULD NOT, so a flush carrying some is served.
            if sector != 0 {
                return Err(io_err("flush with a nonzero sector"));
            }
            (Kind::Flush, 0)
        }
        VIRTIO_BLK_T_GET_ID => {
            // "The length of data MUST be 20 bytes" (5.2.6.1). A shorter
            // buffer cannot hold the whole ID, and a cut one could name
            // another disk: refused. A longer one gets the 20 bytes.
            if in_len < VIRTIO_BLK_ID_BYTES as u64 {
                return Err(io_err("get-id buffer shorter than 20 bytes"));
            }
            slice_stream(&bufs.writable, 0, in_len, &mut bufs.data);
            (Kind::GetId, in_len)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            // A read-only volume refuses these in `zero_segments`, after
            // the flags (which decide UNSUPP whatever the volume).
            if out_len == 0 || !out_len.is_multiple_of(DISCARD_SEGMENT_BYTES) {
                return Err(io_err("discard payload not a whole number of segments"));
            }
            if out_len / DISCARD_SEGMENT_BYTES > MAX_DISCARD_SEG as u64 {
                return Err(io_err("too many discard segments"));
            }
            slice_stream(&bufs.readable, HEADER_BYTES, out_len, &mut bufs.data);
            let k = if kind == VIRTIO_BLK_T_DISCARD {
                Kind::Discard
            } else {
                Kind::WriteZeroes
            };
            (k, out_len)
        }
        _ => {
            return Err(reject(
                Some(status),
                VIRTIO_BLK_S_UNSUPP,
                "unsupported request type",
            ))
        }
    };
    let mut offset = 0;
    if matches!(kind, Kind::Read | Kind::Write) {
        if data_len % SECTOR_SIZE != 0 {
            return Err(io_err("data length not a multiple of 512"));
        }
        offset = sector
            .checked_mul(SECTOR_SIZE)
            .filter(|o| {
                o.checked_add(data_len)
                    .is_some_and(|e| e <= limits.capacity)
            })
            .ok_or_else(|| io_err("sector out of range"))?;
    }
    Ok(Request {
        kind,
        offset,
        data_len,
        status,
    })
}

/// One discard / write-zeroes segment, validated against the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroSegment {
    pub offset: u64,
    pub len: u64,
    pub unmap: bool,
}

/// Why a discard / write-zeroes request is refused: the virtio status
/// and a reason for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentReject {
    pub code: u8,
    pub reason: &'static str,
}

/// Reads and checks the discard / write-zeroes segments of a request. The
/// checks run in an order that meets every device rule of virtio 1.2
/// 5.2.6.2 at once: flags first (unknown bits, or `unmap` on a discard, are
/// UNSUPP whatever else is wrong with the request), then the read-only
/// volume (IOERR, nothing written), then each segment's range (IOERR).
/// Nothing is zeroed unless every segment passes.
pub fn zero_segments<M: GuestMemoryBackend>(
    mem: &M,
    kind: Kind,
    data: &[GuestBuf],
    limits: Limits,
    out: &mut Vec<ZeroSegment>,
) -> Result<(), SegmentReject> {
    let io_err = |reason| SegmentReject {
        code: VIRTIO_BLK_S_IOERR as u8,
        reason,
    };
    let unsupp = |reason| SegmentReject {
        code: VIRTIO_BLK_S_UNSUPP as u8,
        reason,
    };
    out.clear();
    let total: u64 = data.iter().map(|d| d.1 as u64).sum();
    let mut raw = [0u8; (MAX_DISCARD_SEG as u64 * DISCARD_SEGMENT_BYTES) as usize];
    let raw = raw
        .get_mut(..total as usize)
        .ok_or(io_err("too many discard segments"))?;
    read_stream(mem, data, raw).map_err(|_| io_err("discard segments outside guest memory"))?;
    let flags_of = |seg: &[u8]| u32::from_le_bytes(seg[12..16].try_into().expect("4 bytes"));
    for seg in raw.chunks_exact(DISCARD_SEGMENT_BYTES as usize) {
        let flags = flags_of(seg);
        if flags & !WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(unsupp("discard or write-zeroes segment with unknown flags"));
        }
        if kind == Kind::Discard && flags != 0 {
            return Err(unsupp("discard segment with the unmap flag"));
        }
    }
    if limits.read_only {
        return Err(io_err("discard or write-zeroes on a read-only volume"));
    }
    for seg in raw.chunks_exact(DISCARD_SEGMENT_BYTES as usize) {
        let sector = u64::from_le_bytes(seg[0..8].try_into().expect("8 bytes"));
        let sectors = u32::from_le_bytes(seg[8..12].try_into().expect("4 bytes"));
        // A discard deallocates; a write-zeroes may when `unmap` is set.
        let unmap = kind == Kind::Discard || flags_of(seg) & WRITE_ZEROES_FLAG_UNMAP != 0;
        let len = sectors as u64 * SECTOR_SIZE;
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .filter(|o| o.checked_add(len).is_some_and(|e| e <= limits.capacity))
            .ok_or(io_err("discard segment out of range"))?;
        out.push(ZeroSegment { offset, len, unmap });
    }
    Ok(())
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
#[cfg(test)]
mod tests;
