use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::GuestMemoryMmap;

use super::*;

const MEM: u64 = 0x10_0000;
const CAP: u64 = 1 << 20;
const LIMITS: Limits = Limits {
    capacity: CAP,
    read_only: false,
};

fn mem() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

fn header(m: &GuestMemoryMmap<()>, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(at)).unwrap();
}

fn rd(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, 0, 0)
}

fn wr(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
}

fn run(m: &GuestMemoryMmap<()>, descs: &[Descriptor], limits: Limits) -> Result<Request, Reject> {
    let mut bufs = RequestBufs::default();
    parse(descs.iter().copied(), m, limits, &mut bufs)
}

fn code(r: Result<Request, Reject>) -> (u8, Option<GuestAddress>) {
    let e = r.unwrap_err();
    (e.code, e.status)
}

const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn read_with_split_data_parses() {
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_IN, 8);
    let mut bufs = RequestBufs::default();
    let d = [
        rd(0x1000, 16),
        wr(0x2000, 512),
        wr(0x3000, 1024),
        wr(0x4000, 1),
    ];
    let r = parse(d.iter().copied(), &m, LIMITS, &mut bufs).unwrap();
    assert_eq!(r.kind, Kind::Read);
    assert_eq!(r.offset, 8 * 512);
    assert_eq!(r.data_len, 1536);
    assert_eq!(r.status, GuestAddress(0x4000));
    assert_eq!(bufs.data, vec![(0x2000, 512), (0x3000, 1024)]);
}

#[test]
fn write_with_header_and_status_sharing_descriptors_parses() {
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
    let mut bufs = RequestBufs::default();
    // Header and data in one readable descriptor.
    let d = [rd(0x1000, 16 + 4096), wr(0x9000, 1)];
    let r = parse(d.iter().copied(), &m, LIMITS, &mut bufs).unwrap();
    assert_eq!((r.kind, r.data_len), (Kind::Write, 4096));
    assert_eq!(bufs.data, vec![(0x1010, 4096)]);
}

#[test]
fn header_split_over_two_descriptors_is_read_whole() {
    let m = mem();
    let mut h = [0u8; 16];
    h[8..16].copy_from_slice(&3u64.to_le_bytes());
    m.write_slice(&h[..5], GuestAddress(0x1000)).unwrap();
    m.write_slice(&h[5..], GuestAddress(0x5000)).unwrap();
    let r = run(
        &m,
        &[rd(0x1000, 5), rd(0x5000, 11), wr(0x2000, 513)],
        LIMITS,
    )
    .unwrap();
    assert_eq!((r.kind, r.offset), (Kind::Read, 3 * 512));
}

#[test]
fn chain_without_writable_byte_has_no_status() {
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        code(run(&m, &[rd(0x1000, 16 + 512)], LIMITS)),
        (IOERR, None)
    );
}

#[test]
fn status_outside_guest_memory_is_not_written() {
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
    let r = run(
        &m,
        &[rd(0x1000, 16), wr(0x2000, 512), wr(MEM + 0x1000, 1)],
        LIMITS,
    );
    assert_eq!(code(r), (IOERR, None));
}

#[test]
fn short_header_is_ioerr() {
    let m = mem();
    let r = run(&m, &[rd(0x1000, 8), wr(0x2000, 1)], LIMITS);
    assert_eq!(code(r), (IOERR, Some(GuestAddress(0x2000))));
}

#[test]
fn header_outside_guest_memory_is_ioerr() {
    let m = mem();
    let r = run(&m, &[rd(MEM - 8, 16), wr(0x2000, 1)], LIMITS);
    assert_eq!(code(r), (IOERR, Some(GuestAddress(0x2000))));
}

#[test]
fn readable_after_writable_is_ioerr() {
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
    let r = run(
        &m,
        &[
            rd(0x1000, 16),
            wr(0x3000, 1),
            rd(0x2000, 512),
            wr(0x4000, 1),
        ],
        LIMITS,
    );
    assert_eq!(code(r).0, IOERR);
}

#[test]
fn wrong_direction_data_is_ioerr() {
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
    // A read whose data buffer is device-readable.
    assert_eq!(
        code(run(&m, &[rd(0x1000, 16 + 512), wr(0x4000, 1)], LIMITS)).0,
        IOERR
    );
    header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
    // A write whose data buffer is device-writable.
    assert_eq!(
        code(run(&m, &[rd(0x1000, 16), wr(0x2000, 513)], LIMITS)).0,
        IOERR
    );
}

#[test]
fn length_not_multiple_of_512_is_ioerr() {
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        code(run(
            &m,
            &[rd(0x1000, 16), wr(0x2000, 100), wr(0x4000, 1)],
            LIMITS
        ))
        .0,
        IOERR
    );
}

#[test]
fn sector_out_of_range_is_ioerr() {
    let m = mem();
    let last = CAP / 512 - 1;
    header(&m, 0x1000, VIRTIO_BLK_T_IN, last);
    assert!(run(
        &m,
        &[rd(0x1000, 16), wr(0x2000, 512), wr(0x4000, 1)],
        LIMITS
    )
    .is_ok());
    assert_eq!(
        code(run(
            &m,
            &[rd(0x1000, 16), wr(0x2000, 1024), wr(0x4000, 1)],
            LIMITS
        ))
        .0,
        IOERR
    );
    header(&m, 0x1000, VIRTIO_BLK_T_IN, u64::MAX / 256);
    assert_eq!(
        code(run(
            &m,
            &[rd(0x1000, 16), wr(0x2000, 512), wr(0x4000, 1)],
            LIMITS
        ))
        .0,
        IOERR
    );
}

#[test]
fn unknown_type_is_unsupp() {
    let m = mem();
    header(&m, 0x1000, 77, 0);
    let (c, s) = code(run(&m, &[rd(0x1000, 16), wr(0x4000, 1)], LIMITS));
    assert_eq!(
        (c, s),
        (VIRTIO_BLK_S_UNSUPP as u8, Some(GuestAddress(0x4000)))
    );
}

#[test]
fn writes_to_read_only_volume_are_ioerr() {
    let m = mem();
    let ro = Limits {
        read_only: true,
        ..LIMITS
    };
    header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        code(run(&m, &[rd(0x1000, 16 + 512), wr(0x4000, 1)], ro)).0,
        IOERR
    );
    // A discard is refused when its segments are read (after their flags).
    header(&m, 0x1000, VIRTIO_BLK_T_DISCARD, 0);
    discard_seg(&m, 0x1010, 0, 8, 0);
    let mut bufs = RequestBufs::default();
    let d = [rd(0x1000, 32), wr(0x4000, 1)];
    let r = parse(d.iter().copied(), &m, ro, &mut bufs).unwrap();
    let mut segs = Vec::new();
    let e = zero_segments(&m, r.kind, &bufs.data, ro, &mut segs).unwrap_err();
    assert_eq!(e.code, IOERR);
    assert!(segs.is_empty());
    header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
    assert!(run(&m, &[rd(0x1000, 16), wr(0x2000, 512), wr(0x4000, 1)], ro).is_ok());
}

fn discard_seg(m: &GuestMemoryMmap<()>, at: u64, sector: u64, n: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&n.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    m.write_slice(&s, GuestAddress(at)).unwrap();
}

#[test]
fn discard_segments_are_read_and_checked() {
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    discard_seg(&m, 0x1010, 8, 16, WRITE_ZEROES_FLAG_UNMAP);
    discard_seg(&m, 0x1020, 100, 1, 0);
    let mut bufs = RequestBufs::default();
    let d = [rd(0x1000, 48), wr(0x4000, 1)];
    let r = parse(d.iter().copied(), &m, LIMITS, &mut bufs).unwrap();
    assert_eq!(r.kind, Kind::WriteZeroes);
    let mut segs = Vec::new();
    zero_segments(&m, r.kind, &bufs.data, LIMITS, &mut segs).unwrap();
    assert_eq!(
        segs,
        vec![
            ZeroSegment {
                offset: 4096,
                len: 8192,
                unmap: true
            },
            ZeroSegment {
                offset: 51200,
                len: 512,
                unmap: false
            },
        ]
    );
    discard_seg(&m, 0x1020, CAP / 512, 1, 0);
    let e = zero_segments(&m, r.kind, &bufs.data, LIMITS, &mut segs).unwrap_err();
    assert_eq!(e.code, IOERR);
    // Unknown flags are UNSUPP, even next to a segment out of range.
    discard_seg(&m, 0x1010, 0, 1, 2);
    let e = zero_segments(&m, Kind::Discard, &bufs.data, LIMITS, &mut segs).unwrap_err();
    assert_eq!(e.code, VIRTIO_BLK_S_UNSUPP as u8);
    let e = zero_segments(&m, r.kind, &bufs.data, LIMITS, &mut segs).unwrap_err();
    assert_eq!(e.code, VIRTIO_BLK_S_UNSUPP as u8);
}

#[test]
fn discard_payload_must_be_whole_segments() {
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        code(run(&m, &[rd(0x1000, 16 + 10), wr(0x4000, 1)], LIMITS)).0,
        IOERR
    );
    assert_eq!(
        code(run(&m, &[rd(0x1000, 16), wr(0x4000, 1)], LIMITS)).0,
        IOERR
    );
    let too_many = 16 + 16 * (MAX_DISCARD_SEG + 1);
    assert_eq!(
        code(run(&m, &[rd(0x1000, too_many), wr(0x4000, 1)], LIMITS)).0,
        IOERR
    );
}
