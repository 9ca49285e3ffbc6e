//! Property tests feeding hostile descriptor chains to the virtio-blk
//! request parser: arbitrary descriptors (addresses in, across and outside
//! guest memory, which has a hole; any lengths, directions and order),
//! arbitrary headers (types, sectors) and discard / write-zeroes segments,
//! against any volume size. The parser never panics; its outcome matches a
//! model of virtio 1.2 5.2.6 written from the spec (OK, IOERR, UNSUPP, or
//! no status when the chain has no usable status byte); what it accepts is
//! in range. A second test builds real split virtqueues (descriptor table,
//! `next` links, indirect tables, loops) and parses the chains
//! virtio-queue pops from them, as the worker does.

// Outside tests (the `fuzzing` feature) only the checks are used, by the
// AFL targets in fuzz/.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

use proptest::{prelude::*, sample::Index};
use virtio_bindings::{
    virtio_blk::{VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_GET_ID},
    virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE},
};
use virtio_queue::{desc::RawDescriptor, mock::MockSplitQueue, Queue, QueueT};
use vm_memory::{Address, GuestMemoryMmap, GuestUsize};

use super::*;
use crate::fuzzing;

/// Guest memory: two regions with a hole between them.
const R1: (u64, u64) = (0, 0x10_0000);
const R2: (u64, u64) = (0x20_0000, 0x1_0000);
/// Where headers and segments are written, in each region.
pub const SPOTS: [u64; 4] = [0x1_0000, 0x1_0100, R2.0, R1.1 - 8];
/// Descriptor addresses at the edges of guest memory and of `u64`.
pub const EDGE_ADDRS: &[u64] = &[
    0,
    1,
    0x2000,
    0x3000,
    R1.1 - 16,
    R1.1 - 1,
    R1.1,
    R1.1 + 1,
    R2.0 - 1,
    R2.0 + 16,
    R2.0 + R2.1 - 16,
    R2.0 + R2.1 - 1,
    R2.0 + R2.1,
    u64::MAX,
    u64::MAX - 15,
    u64::MAX - 511,
    1 << 63,
];
/// Descriptor lengths at the edges of what a request holds.
pub const EDGE_LENS: &[u32] = &[
    0,
    1,
    2,
    8,
    15,
    16,
    17,
    20,
    21,
    31,
    32,
    48,
    511,
    512,
    513,
    528,
    1024,
    4096,
    16 + 16 * MAX_DISCARD_SEG,
    16 + 16 * (MAX_DISCARD_SEG + 1),
    u32::MAX,
    u32::MAX - 15,
];
/// The request types virtio-blk defines (and we serve).
pub const KINDS: &[u32] = &[
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_WRITE_ZEROES,
];
/// Sectors at the edges of a volume and of `u64`.
pub const EDGE_SECTORS: &[u64] = &[
    0,
    1,
    2047,
    2048,
    4095,
    4096,
    u64::MAX,
    u64::MAX / 512,
    u64::MAX / 512 + 1,
    1 << 55,
];
/// Volume sizes: small ones the spots reach into, and edge cases.
pub const CAPACITIES: &[u64] = &[1 << 20, 2 << 20, 4 << 20, 0, 512, u64::MAX, u64::MAX - 511];
/// Indirect descriptor tables (queue test).
const INDIRECT: u64 = 0x8000;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Guest memory for the chains: two regions with a hole between them.
pub fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(R1.0), R1.1 as usize),
        (GuestAddress(R2.0), R2.1 as usize),
    ])
    .expect("test memory")
}

/// The most bytes a case writes at a spot: a header and one segment more
/// than a request may carry.
const SPOT_BYTES: u64 = 16 + 16 * (MAX_DISCARD_SEG as u64 + 1);
/// What a case writes: the queue (at 0), the indirect table, the spots.
const WRITTEN: [(u64, u64); 3] = [
    (R1.0, SPOTS[1] + SPOT_BYTES),
    (SPOTS[3], R1.1 - SPOTS[3]),
    (SPOTS[2], SPOT_BYTES),
];
const _: () = assert!(INDIRECT + 16 * 20 <= SPOTS[0] && SPOTS[0] < SPOTS[1]);

/// Zeroes what the previous case wrote, so each case starts from zeroed
/// memory (zeroing all of it made a case ten times slower).
fn zero(mem: &GuestMemoryMmap<()>) {
    static ZEROS: [u8; (SPOTS[1] + SPOT_BYTES) as usize] = [0; (SPOTS[1] + SPOT_BYTES) as usize];
    for (at, len) in WRITTEN {
        mem.write_slice(&ZEROS[..len as usize], GuestAddress(at))
            .expect("zero");
    }
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(SPOTS.to_vec()),
        2 => prop::sample::select(EDGE_ADDRS.to_vec()),
        1 => R1.0..R1.1,
        1 => any::<u64>(),
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => prop::sample::select(EDGE_LENS.to_vec()),
        1 => 0u32..2048,
        1 => any::<u32>(),
    ]
}

fn kind() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => prop::sample::select(KINDS.to_vec()),
        1 => any::<u32>(),
    ]
}

fn sector() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => prop::sample::select(EDGE_SECTORS.to_vec()),
        2 => Just(0u64),
        3 => 0u64..5000,
        1 => any::<u64>(),
    ]
}

fn capacity() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(CAPACITIES[..3].to_vec()),
        1 => prop::sample::select(CAPACITIES[3..].to_vec()),
        1 => (0u64..100_000).prop_map(|s| s * 512),
        1 => any::<u64>(),
    ]
}

/// A discard / write-zeroes segment: sector, sectors, flags.
fn segment() -> impl Strategy<Value = (u64, u32, u32)> {
    (
        prop_oneof![3 => 0u64..2000, 1 => sector()],
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(8),
            0u32..64,
            0u32..5000,
            any::<u32>()
        ],
        prop_oneof![
            4 => Just(0u32),
            4 => Just(WRITE_ZEROES_FLAG_UNMAP),
            1 => Just(2),
            1 => any::<u32>(),
        ],
    )
}

/// The guest's bytes: a header (type, reserved, sector) at each of
/// [`SPOTS`], the same discard / write-zeroes segments (sector, sectors,
/// flags) after each.
#[derive(Debug, Clone, Default)]
pub struct Guest {
    pub headers: Vec<(u32, u32, u64)>,
    pub segments: Vec<(u64, u32, u32)>,
}

fn guest() -> impl Strategy<Value = Guest> {
    (
        prop::collection::vec((kind(), any::<u32>(), sector()), SPOTS.len()),
        prop::collection::vec(segment(), 0..=MAX_DISCARD_SEG as usize + 1),
        prop::bool::weighted(0.7),
    )
        .prop_map(|(headers, mut segments, known_flags)| {
            if known_flags {
                for s in &mut segments {
                    s.2 &= WRITE_ZEROES_FLAG_UNMAP;
                }
            }
            Guest { headers, segments }
        })
}

impl Guest {
    fn write(&self, mem: &GuestMemoryMmap<()>) {
        for (&at, &(kind, reserved, sector)) in SPOTS.iter().zip(&self.headers) {
            let mut b = Vec::with_capacity(16 + 16 * self.segments.len());
            b.extend_from_slice(&kind.to_le_bytes());
            b.extend_from_slice(&reserved.to_le_bytes());
            b.extend_from_slice(&sector.to_le_bytes());
            for &(sector, n, flags) in &self.segments {
                b.extend_from_slice(&sector.to_le_bytes());
                b.extend_from_slice(&n.to_le_bytes());
                b.extend_from_slice(&flags.to_le_bytes());
            }
            // Spots near a region's end take what fits.
            let _ = mem.write(&b, GuestAddress(at));
        }
    }
}

/// A change to a well-formed chain.
#[derive(Debug, Clone)]
enum Perturb {
    Len(u32),
    Addr(u64),
    Direction,
    Remove,
    Duplicate,
    Swap(Index),
    Insert((u64, u32, bool)),
}

fn perturb() -> impl Strategy<Value = Perturb> {
    prop_oneof![
        len().prop_map(Perturb::Len),
        addr().prop_map(Perturb::Addr),
        Just(Perturb::Direction),
        Just(Perturb::Remove),
        Just(Perturb::Duplicate),
        any::<Index>().prop_map(Perturb::Swap),
        (addr(), len(), any::<bool>()).prop_map(Perturb::Insert),
    ]
}

/// Guest buffers for data: inside memory, in either region.
fn data_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (0x2_0000u64..0x8_0000).prop_map(|a| a & !0xff),
        1 => Just(R2.0 + 0x8000),
        1 => Just(R1.1 - 512),
    ]
}

/// A chain shaped like a request of a valid type (header, data out, data
/// in, status), then changed in a few places; with the spot whose header
/// gets that type.
fn shaped_chain() -> impl Strategy<Value = Chain> {
    let kind = prop::sample::select(KINDS.to_vec());
    let bufs = |lens: Vec<u32>, n: std::ops::Range<usize>| {
        prop::collection::vec((data_addr(), prop::sample::select(lens)), n)
    };
    (
        prop::sample::select(SPOTS.to_vec()),
        kind,
        1u32..=MAX_DISCARD_SEG + 1,
        prop::option::weighted(0.2, 1u32..16),
        bufs(vec![512, 1024, 4096], 1..3),
        bufs(vec![20, 21, 512], 1..2),
        prop_oneof![data_addr(), Just(R2.0 + R2.1 - 1), Just(R1.1 - 1)],
        prop::collection::vec((any::<Index>(), perturb()), 0..3),
    )
        .prop_map(|(spot, kind, segs, split, data, id, status, changes)| {
            let (hdr_len, out, inn) = match kind {
                VIRTIO_BLK_T_IN => (16, vec![], data),
                VIRTIO_BLK_T_OUT => (16, data, vec![]),
                VIRTIO_BLK_T_GET_ID => (16, vec![], id),
                VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                    (16 + 16 * segs, vec![], vec![])
                }
                _ => (16, vec![], vec![]),
            };
            let mut c = Vec::new();
            match split {
                // The header split over two descriptors.
                Some(k) if k < hdr_len => {
                    c.push((spot, k, false));
                    c.push((spot + k as u64, hdr_len - k, false));
                }
                _ => c.push((spot, hdr_len, false)),
            }
            c.extend(out.into_iter().map(|(a, l)| (a, l, false)));
            c.extend(inn.into_iter().map(|(a, l)| (a, l, true)));
            c.push((status, 1, true));
            for (i, p) in changes {
                let n = i.index(c.len());
                match p {
                    Perturb::Len(l) => c[n].1 = l,
                    Perturb::Addr(a) => c[n].0 = a,
                    Perturb::Direction => c[n].2 = !c[n].2,
                    Perturb::Remove if c.len() > 1 => {
                        c.remove(n);
                    }
                    Perturb::Remove => {}
                    Perturb::Duplicate => c.insert(n, c[n]),
                    Perturb::Swap(j) => {
                        let j = j.index(c.len());
                        c.swap(n, j);
                    }
                    Perturb::Insert(d) => c.insert(n, d),
                }
            }
            Chain {
                descs: c,
                kind_at: Some((spot, kind)),
            }
        })
}

/// Descriptors (addr, len, device-writable) of a chain, and where to put a
/// header type that fits them.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    pub descs: Vec<(u64, u32, bool)>,
    pub kind_at: Option<(u64, u32)>,
}

fn chain() -> impl Strategy<Value = Chain> {
    prop_oneof![
        1 => prop::collection::vec((addr(), len(), any::<bool>()), 0..8)
            .prop_map(|descs| Chain { descs, kind_at: None }),
        4 => shaped_chain(),
    ]
}

fn descriptors(c: &[(u64, u32, bool)]) -> Vec<Descriptor> {
    c.iter()
        .map(|&(a, l, w)| Descriptor::new(a, l, if w { VRING_DESC_F_WRITE as u16 } else { 0 }, 0))
        .collect()
}

/// A byte of guest memory, `None` outside it.
fn byte(mem: &GuestMemoryMmap<()>, addr: Option<u64>) -> Option<u8> {
    let mut b = [0u8];
    mem.read_slice(&mut b, GuestAddress(addr?)).ok()?;
    Some(b[0])
}

/// The first `n` bytes of a stream of buffers, byte by byte; `None` if one
/// is outside guest memory.
fn stream(mem: &GuestMemoryMmap<()>, bufs: &[(u64, u32)], skip: u64, n: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    for &(a, l) in bufs {
        for k in 0..l as u64 {
            if out.len() as u64 == n {
                return Some(out);
            }
            if pos >= skip {
                out.push(byte(mem, a.checked_add(k))?);
            }
            pos += 1;
        }
    }
    Some(out)
}

/// What virtio 1.2 5.2.6 says the device does with a chain: the kind,
/// offset and data length of a request to serve, or the status code and
/// whether there is a status byte to put it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Serve(Kind, u64, u64),
    Fail(u8, bool),
}

fn spec(mem: &GuestMemoryMmap<()>, c: &[(u64, u32, bool)], limits: Limits) -> Outcome {
    let c: Vec<_> = c.iter().filter(|d| d.1 > 0).copied().collect();
    let readable: Vec<(u64, u32)> = c.iter().filter(|d| !d.2).map(|d| (d.0, d.1)).collect();
    let writable: Vec<(u64, u32)> = c.iter().filter(|d| d.2).map(|d| (d.0, d.1)).collect();
    // The status byte: the last byte of the device-writable part.
    let Some(&(sa, sl)) = writable.last() else {
        return Outcome::Fail(IOERR, false);
    };
    if byte(mem, sa.checked_add(sl as u64 - 1)).is_none() {
        return Outcome::Fail(IOERR, false);
    }
    let fail = |code| Outcome::Fail(code, true);
    // Device-readable before device-writable (2.7.4.2).
    if c.iter().skip_while(|d| !d.2).any(|d| !d.2) {
        return fail(IOERR);
    }
    let out_len: u64 = readable.iter().map(|d| d.1 as u64).sum();
    let in_len: u64 = writable.iter().map(|d| d.1 as u64).sum::<u64>() - 1;
    if out_len < 16 {
        return fail(IOERR);
    }
    let Some(h) = stream(mem, &readable, 0, 16) else {
        return fail(IOERR);
    };
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    let data_out = out_len - 16;
    let in_range = |len: u64| {
        len.is_multiple_of(512)
            && sector
                .checked_mul(512)
                .and_then(|o| o.checked_add(len))
                .is_some_and(|e| e <= limits.capacity)
    };
    match kind {
        VIRTIO_BLK_T_IN if data_out == 0 && in_range(in_len) => {
            Outcome::Serve(Kind::Read, sector * 512, in_len)
        }
        VIRTIO_BLK_T_OUT if in_len == 0 && !limits.read_only && in_range(data_out) => {
            Outcome::Serve(Kind::Write, sector * 512, data_out)
        }
        VIRTIO_BLK_T_FLUSH if sector == 0 => Outcome::Serve(Kind::Flush, 0, 0),
        VIRTIO_BLK_T_GET_ID if in_len >= 20 => Outcome::Serve(Kind::GetId, 0, in_len),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
            if data_out > 0
                && data_out.is_multiple_of(16)
                && data_out / 16 <= MAX_DISCARD_SEG as u64 =>
        {
            let k = if kind == VIRTIO_BLK_T_DISCARD {
                Kind::Discard
            } else {
                Kind::WriteZeroes
            };
            Outcome::Serve(k, 0, data_out)
        }
        VIRTIO_BLK_T_IN
        | VIRTIO_BLK_T_OUT
        | VIRTIO_BLK_T_FLUSH
        | VIRTIO_BLK_T_GET_ID
        | VIRTIO_BLK_T_DISCARD
        | VIRTIO_BLK_T_WRITE_ZEROES => fail(IOERR),
        _ => fail(UNSUPP),
    }
}

/// What 5.2.6.2 says of a discard / write-zeroes request's segments:
/// `Ok` with the (offset, len, unmap) to zero, or the status.
fn spec_segments(
    mem: &GuestMemoryMmap<()>,
    kind: Kind,
    data: &[GuestBuf],
    limits: Limits,
) -> std::result::Result<Vec<(u64, u64, bool)>, u8> {
    let total: u64 = data.iter().map(|d| d.1 as u64).sum();
    let raw = stream(mem, data, 0, total).ok_or(IOERR)?;
    let segs: Vec<(u64, u32, u32)> = raw
        .chunks_exact(16)
        .map(|s| {
            let w =
                |r: std::ops::Range<usize>| s[r].iter().rev().fold(0u64, |a, &b| a << 8 | b as u64);
            (w(0..8), w(8..12) as u32, w(12..16) as u32)
        })
        .collect();
    if segs
        .iter()
        .any(|s| s.2 & !WRITE_ZEROES_FLAG_UNMAP != 0 || (kind == Kind::Discard && s.2 != 0))
    {
        return Err(UNSUPP);
    }
    if limits.read_only {
        return Err(IOERR);
    }
    segs.iter()
        .map(|&(sector, n, flags)| {
            let len = n as u64 * 512;
            let off = sector
                .checked_mul(512)
                .filter(|o| o.checked_add(len).is_some_and(|e| e <= limits.capacity));
            let unmap = kind == Kind::Discard || flags & WRITE_ZEROES_FLAG_UNMAP != 0;
            off.map(|o| (o, len, unmap)).ok_or(IOERR)
        })
        .collect()
}

/// Checks what `parse` made of a chain that virtio-queue produced or the
/// test built; `spec_outcome`, when given, is what the spec says.
fn check(
    mem: &GuestMemoryMmap<()>,
    limits: Limits,
    parsed: std::result::Result<Request, Reject>,
    bufs: &RequestBufs,
    spec_outcome: Option<Outcome>,
) -> std::result::Result<(), TestCaseError> {
    let outcome = match parsed {
        Ok(r) => {
            prop_assert!(mem.check_address(r.status).is_some());
            let total: u64 = bufs.data.iter().map(|d| d.1 as u64).sum();
            prop_assert_eq!(total, r.data_len);
            prop_assert!(bufs.data.iter().all(|d| d.1 > 0));
            match r.kind {
                Kind::Read | Kind::Write => {
                    prop_assert!(r.data_len % SECTOR_SIZE == 0 && r.offset % SECTOR_SIZE == 0);
                    prop_assert!(r
                        .offset
                        .checked_add(r.data_len)
                        .is_some_and(|e| e <= limits.capacity));
                    prop_assert!(!(r.kind == Kind::Write && limits.read_only));
                }
                Kind::Flush => prop_assert_eq!(r.data_len, 0),
                Kind::GetId => prop_assert!(r.data_len >= VIRTIO_BLK_ID_BYTES as u64),
                Kind::Discard | Kind::WriteZeroes => {
                    prop_assert!(r.data_len > 0 && r.data_len % DISCARD_SEGMENT_BYTES == 0);
                    prop_assert!(r.data_len <= MAX_DISCARD_SEG as u64 * DISCARD_SEGMENT_BYTES);
                    let mut segs = Vec::new();
                    let z = zero_segments(mem, r.kind, &bufs.data, limits, &mut segs);
                    let got = z
                        .map(|()| {
                            segs.iter()
                                .map(|s| (s.offset, s.len, s.unmap))
                                .collect::<Vec<_>>()
                        })
                        .map_err(|e| e.code);
                    prop_assert_eq!(got, spec_segments(mem, r.kind, &bufs.data, limits));
                }
            }
            Outcome::Serve(r.kind, r.offset, r.data_len)
        }
        Err(e) => {
            prop_assert!(e.code == IOERR || e.code == UNSUPP, "{e:?}");
            prop_assert!(!e.reason.is_empty());
            if let Some(s) = e.status {
                prop_assert!(mem.check_address(s).is_some());
            }
            Outcome::Fail(e.code, e.status.is_some())
        }
    };
    if let Some(want) = spec_outcome {
        prop_assert_eq!(outcome, want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzzing::config(12000))]

    #[test]
    fn fuzz_request_chains_match_the_spec(
        g in guest(),
        c in chain(),
        cap in capacity(),
        read_only in prop::bool::weighted(0.2),
    ) {
        thread_local!(static MEM: GuestMemoryMmap<()> = memory());
        MEM.with(|mem| chain_matches_spec(mem, &g, &c, Limits { capacity: cap, read_only }))?;
    }
}

/// Writes the guest's bytes to `mem` (from [`memory`]), parses the chain
/// and checks the outcome against the spec.
pub fn chain_matches_spec(
    mem: &GuestMemoryMmap<()>,
    g: &Guest,
    c: &Chain,
    limits: Limits,
) -> std::result::Result<(), TestCaseError> {
    zero(mem);
    g.write(mem);
    if let Some((at, kind)) = c.kind_at {
        let _ = mem.write_obj(kind, GuestAddress(at));
    }
    let mut bufs = RequestBufs::default();
    let parsed = parse(descriptors(&c.descs).into_iter(), mem, limits, &mut bufs);
    check(
        mem,
        limits,
        parsed,
        &bufs,
        Some(spec(mem, &c.descs, limits)),
    )
}

/// A descriptor written over the queue's table (or over the indirect
/// table): index, address, length, flags (`NEXT`, `WRITE`, `INDIRECT`),
/// `next`, whether in the indirect table.
pub type Noise = (u16, u64, u32, u16, u16, bool);

proptest! {
    #![proptest_config(fuzzing::config(12000))]

    #[test]
    fn fuzz_request_virtqueue_chains(
        g in guest(),
        c in chain(),
        indirect in prop::bool::weighted(0.3),
        noise in prop::collection::vec(
            (0u16..16, addr(), len(), 0u16..8, 0u16..20, any::<bool>()),
            0..3,
        ),
        cap in capacity(),
        read_only in prop::bool::weighted(0.2),
    ) {
        thread_local!(static MEM: GuestMemoryMmap<()> = memory());
        MEM.with(|mem| {
            let limits = Limits { capacity: cap, read_only };
            virtqueue_chain(mem, &g, &c, indirect, &noise, limits)
        })?;
    }
}

/// Writes the guest's bytes and a split virtqueue holding the chain (in
/// the descriptor table or an indirect table, then overwritten by `noise`)
/// to `mem` (from [`memory`]); parses the chain virtio-queue pops, as the
/// worker does, and checks the outcome.
pub fn virtqueue_chain(
    mem: &GuestMemoryMmap<()>,
    g: &Guest,
    c: &Chain,
    indirect: bool,
    noise: &[Noise],
    limits: Limits,
) -> std::result::Result<(), TestCaseError> {
    let fail = |e: &dyn std::fmt::Debug| TestCaseError::fail(format!("{e:?}"));
    zero(mem);
    g.write(mem);
    if let Some((at, kind)) = c.kind_at {
        let _ = mem.write_obj(kind, GuestAddress(at));
    }
    let q = MockSplitQueue::new(mem, 16);
    // The chain, linked by `next`, in the descriptor table or in an
    // indirect table the first descriptor points at.
    let n = c.descs.len().min(16) as u16;
    let linked = |i: u16, (a, l, w): (u64, u32, bool)| {
        let mut f = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
        if i + 1 < n {
            f |= VRING_DESC_F_NEXT as u16;
        }
        RawDescriptor::from(Descriptor::new(a, l, f, i + 1))
    };
    for (i, &d) in c.descs.iter().take(16).enumerate() {
        let d = linked(i as u16, d);
        if indirect {
            mem.write_obj(d, GuestAddress(INDIRECT + 16 * i as GuestUsize))
                .map_err(|e| fail(&e))?;
        } else {
            q.desc_table().store(i as u16, d).map_err(|e| fail(&e))?;
        }
    }
    if indirect {
        let d = Descriptor::new(INDIRECT, 16 * n as u32, VRING_DESC_F_INDIRECT as u16, 0);
        q.desc_table()
            .store(0, RawDescriptor::from(d))
            .map_err(|e| fail(&e))?;
    }
    // Then some descriptors are overwritten: in the table or in the
    // indirect table, with any flags (INDIRECT too) and `next` (loops, or
    // past the table).
    for &(i, a, l, f, next, in_indirect) in noise {
        let f = f & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT) as u16;
        let (a, l) = if f & VRING_DESC_F_INDIRECT as u16 != 0 && a % 2 == 0 {
            (INDIRECT, 16 * (l % 20))
        } else {
            (a, l)
        };
        let d = RawDescriptor::from(Descriptor::new(a, l, f, next));
        if in_indirect {
            mem.write_obj(d, GuestAddress(INDIRECT + 16 * i as GuestUsize))
                .map_err(|e| fail(&e))?;
        } else {
            q.desc_table().store(i, d).map_err(|e| fail(&e))?;
        }
    }
    let avail = q.avail_addr();
    mem.write_obj(0u16, avail.unchecked_add(4))
        .map_err(|e| fail(&e))?;
    mem.write_obj(1u16, avail.unchecked_add(2))
        .map_err(|e| fail(&e))?;
    let mut queue: Queue = q.create_queue().map_err(|e| fail(&e))?;
    if let Some(chain) = queue.pop_descriptor_chain(mem) {
        let mut bufs = RequestBufs::default();
        let parsed = parse(chain, mem, limits, &mut bufs);
        check(mem, limits, parsed, &bufs, None)?;
    }
    Ok(())
}
