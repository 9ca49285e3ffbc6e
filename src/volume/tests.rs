use std::path::Path;

use super::*;
use crate::config::{ByteSize, PerformanceMetrics, TierDefinition};

pub(super) const CHUNK: u64 = 64 * 1024;

fn tier_def(id: u8, dir: &Path, cap: u64) -> TierDefinition {
    let d = dir.join(format!("t{id}"));
    std::fs::create_dir_all(&d).unwrap();
    TierDefinition {
        tier_id: id,
        name: format!("t{id}"),
        performance_metrics: PerformanceMetrics {
            read_latency_us: 10.0,
            write_latency_us: 10.0,
            iops: 0,
            bandwidth_mibps: 100.0,
        },
        capacity: ByteSize(cap),
        cost_per_gb: 0.1,
        path: d,
        direct_io: false,
        emulate: None,
        fault: None,
    }
}

pub(super) fn vol_meta(size: u64) -> VolumeMetadata {
    crate::config::Config::parse(&format!(
        r#"
[[tier]]
tier_id = 0
name = "x"
capacity = "1MiB"
cost_per_gb = 0
path = "/x"
performance_metrics = {{ read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }}
[[volume]]
name = "v"
size = {size}
chunk_size = "64KiB"
socket = "/tmp/v.sock"
"#
    ))
    .unwrap()
    .volumes
    .remove(0)
}

pub(super) struct Fixture {
    dir: tempfile::TempDir,
    tiers: Vec<TierDefinition>,
}

impl Fixture {
    /// Three tiers of `cap` bytes each.
    pub(super) fn new(cap: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tiers = (0..3).map(|i| tier_def(i, dir.path(), cap)).collect();
        Self { dir, tiers }
    }

    fn open(&self, meta: VolumeMetadata) -> Result<Volume> {
        let store = Arc::new(Store::open(&self.store_dir()).unwrap());
        let tiers = Arc::new(TierSet::open(&self.tiers, &store).unwrap());
        Volume::open(meta, tiers, store)
    }

    /// Volumes of 1 MiB named `names`, sharing one store and tier set (as
    /// a daemon's volumes do).
    pub(super) fn open_many(&self, names: &[&str]) -> Vec<Arc<Volume>> {
        let store = Arc::new(Store::open(&self.store_dir()).unwrap());
        let tiers = Arc::new(TierSet::open(&self.tiers, &store).unwrap());
        names
            .iter()
            .map(|&name| {
                let mut meta = vol_meta(1 << 20);
                meta.name = name.to_string();
                Arc::new(Volume::open(meta, tiers.clone(), store.clone()).unwrap())
            })
            .collect()
    }

    pub(super) fn store_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn unallocated_chunks_read_as_zeros() {
    let f = Fixture::new(1 << 20);
    let v = f.open(vol_meta(1 << 20)).unwrap();
    let mut buf = vec![0xffu8; 8192];
    v.read_at(100 * 512, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(v.block_metadata(0).state, ChunkState::Unallocated);
}

#[test]
fn write_spanning_chunks_and_tiers_reads_back() {
    let f = Fixture::new(1 << 20);
    let v = f.open(vol_meta(1 << 20)).unwrap();
    // Chunk 1 hot (tier 0), chunk 2 lukewarm (tier 1), chunk 3 cold (tier 2).
    v.set_score(1, 0.9);
    v.set_score(2, 0.5);
    v.set_score(3, 0.1);
    let data = pattern(2 * CHUNK as usize + 8192, 7);
    let off = CHUNK + CHUNK / 2;
    v.write_at(off, &data).unwrap();
    let tiers: Vec<_> = (1..=3).map(|c| v.block_metadata(c).tier.unwrap()).collect();
    assert_eq!(tiers, vec![0, 1, 2]);
    let mut back = vec![0u8; data.len()];
    v.read_at(off, &mut back).unwrap();
    assert_eq!(back, data);
    // The untouched first half of chunk 1 reads zeros.
    let mut head = vec![1u8; (CHUNK / 2) as usize];
    v.read_at(CHUNK, &mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0));
}

#[test]
fn accesses_served_off_tier_0_are_posted_as_misses_once_each() {
    let f = Fixture::new(1 << 20);
    let v = f.open(vol_meta(1 << 20)).unwrap();
    // Chunk 1 on tier 0, chunk 2 on tier 1, chunk 3 on tier 2, chunk 4 none.
    for (c, s) in [(1, 0.9), (2, 0.5), (3, 0.1)] {
        v.set_score(c, s);
        v.write_at(c as u64 * CHUNK, &[1u8; 512]).unwrap();
    }
    for _ in 0..3 {
        let mut segs = Vec::new();
        v.map_read(CHUNK, 4 * CHUNK, &mut segs).unwrap();
        v.count_served(false, &segs);
        v.release(&segs);
    }
    let mut segs = Vec::new();
    v.map_write(3 * CHUNK, 512, &mut segs).unwrap();
    v.count_served(true, &segs);
    v.release_written(&segs);
    assert_eq!((v.misses().posted(), v.misses().dropped()), (2, 0));
    assert_eq!(v.misses().pop(), Some(2));
    assert_eq!(v.misses().pop(), Some(3));
    assert_eq!(v.misses().pop(), None);
}

#[test]
fn out_of_range_request_is_rejected_without_pins() {
    let f = Fixture::new(1 << 20);
    let v = f.open(vol_meta(1 << 20)).unwrap();
    let mut segs = Vec::new();
    let e = v.map_write((1 << 20) - 512, 1024, &mut segs).unwrap_err();
    assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
    assert!(v.map_read(u64::MAX - 10, 512, &mut segs).is_err());
    assert!(segs.is_empty());
}

#[test]
fn discard_of_whole_chunk_frees_extent_after_flush() {
    let f = Fixture::new(1 << 20);
    let v = f.open(vol_meta(1 << 20)).unwrap();
    v.write_at(0, &pattern(2 * CHUNK as usize, 1)).unwrap();
    let t = v.block_metadata(0).tier.unwrap();
    let used = v.tiers().get(t).unwrap().usage().0;
    v.zero_range(0, CHUNK, true).unwrap();
    assert_eq!(v.block_metadata(0).state, ChunkState::Unallocated);
    assert_eq!(
        v.tiers().get(t).unwrap().usage().0,
        used,
        "extent stays reserved until the unmap is durable"
    );
    v.flush().unwrap();
    assert_eq!(v.tiers().get(t).unwrap().usage().0, used - CHUNK);
    let mut buf = vec![1u8; CHUNK as usize];
    v.read_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn partial_discard_zeroes_only_its_range() {
    let f = Fixture::new(1 << 20);
    let v = f.open(vol_meta(1 << 20)).unwrap();
    let data = pattern(CHUNK as usize, 3);
    v.write_at(0, &data).unwrap();
    v.zero_range(4096, 8192, true).unwrap();
    let mut back = vec![0u8; CHUNK as usize];
    v.read_at(0, &mut back).unwrap();
    assert_eq!(&back[..4096], &data[..4096]);
    assert!(back[4096..12288].iter().all(|&b| b == 0));
    assert_eq!(&back[12288..], &data[12288..]);
    assert_eq!(v.block_metadata(0).state, ChunkState::Allocated);
}

#[test]
fn write_zeroes_without_unmap_keeps_allocation() {
    let f = Fixture::new(1 << 20);
    let v = f.open(vol_meta(1 << 20)).unwrap();
    v.write_at(0, &pattern(CHUNK as usize, 3)).unwrap();
    v.zero_range(0, CHUNK, false).unwrap();
    assert_eq!(v.block_metadata(0).state, ChunkState::Allocated);
    let mut back = vec![1u8; CHUNK as usize];
    v.read_at(0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
}

#[test]
fn flushed_data_survives_reopen_and_unflushed_mapping_does_not() {
    let f = Fixture::new(1 << 20);
    let a = pattern(CHUNK as usize, 9);
    {
        let v = f.open(vol_meta(1 << 20)).unwrap();
        v.write_at(0, &a).unwrap();
        v.flush().unwrap();
        v.write_at(5 * CHUNK, &a).unwrap(); // never flushed
    }
    let v = f.open(vol_meta(1 << 20)).unwrap();
    let mut back = vec![0u8; a.len()];
    v.read_at(0, &mut back).unwrap();
    assert_eq!(back, a);
    assert_eq!(v.block_metadata(5).state, ChunkState::Unallocated);
    // The unflushed chunk's extent is free again after restart.
    let used: u64 = v.tiers().iter().map(|t| t.usage().0).sum();
    assert_eq!(used, CHUNK);
}

#[test]
fn full_tiers_fall_back_then_report_no_space() {
    // Each tier holds two 64 KiB extents: six chunks fit in all.
    let f = Fixture::new(2 * CHUNK);
    let v = f.open(vol_meta(1 << 20)).unwrap();
    for c in 0..6u64 {
        v.write_at(c * CHUNK, &[1u8; 512]).unwrap();
    }
    let per_tier: Vec<u64> = v.tiers().iter().map(|t| t.usage().0).collect();
    assert_eq!(per_tier, vec![2 * CHUNK; 3]);
    let e = v.write_at(6 * CHUNK, &[1u8; 512]).unwrap_err();
    assert!(matches!(e, Error::NoSpace { chunk: 6, .. }), "{e}");
}

#[test]
fn changing_chunk_size_of_existing_volume_is_refused() {
    let f = Fixture::new(1 << 20);
    drop(f.open(vol_meta(1 << 20)).unwrap());
    let mut m = vol_meta(1 << 20);
    m.chunk_size = ByteSize(128 * 1024);
    let e = f.open(m).unwrap_err().to_string();
    assert!(e.contains("chunk_size") && e.contains("64KiB"), "{e}");
}

#[test]
fn tiering_disabled_pins_to_slowest_tier() {
    let f = Fixture::new(1 << 20);
    let mut m = vol_meta(1 << 20);
    m.tiering_enabled = false;
    let v = f.open(m).unwrap();
    v.set_score(0, 1.0);
    v.write_at(0, &[1u8; 512]).unwrap();
    assert_eq!(v.block_metadata(0).tier, Some(2));
}

#[test]
fn concurrent_first_writes_to_one_chunk_share_one_extent() {
    let f = Fixture::new(1 << 20);
    let v = Arc::new(f.open(vol_meta(1 << 20)).unwrap());
    let threads: Vec<_> = (0..4u8)
        .map(|i| {
            let v = v.clone();
            std::thread::spawn(move || v.write_at(i as u64 * 4096, &[i + 1; 4096]).unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let used: u64 = v.tiers().iter().map(|t| t.usage().0).sum();
    assert_eq!(used, CHUNK);
    let mut buf = vec![0u8; 4 * 4096];
    v.read_at(0, &mut buf).unwrap();
    for i in 0..4 {
        assert!(buf[i * 4096..(i + 1) * 4096]
            .iter()
            .all(|&b| b == i as u8 + 1));
    }
}

#[test]
fn flush_commits_only_changes_made_before_it() {
    let f = Fixture::new(1 << 20);
    let v = f.open(vol_meta(1 << 20)).unwrap();
    v.write_at(0, &[1u8; 512]).unwrap();
    let ticket = v.flush_ticket();
    v.write_at(CHUNK, &[2u8; 512]).unwrap(); // after the flush started
    v.commit(ticket).unwrap();
    assert!(
        v.has_pending_changes(),
        "the later allocation waits for its own flush"
    );
    assert_eq!(v.store().chunk_map("v").unwrap().len(), 1);
    // An older ticket commits nothing more.
    v.commit(ticket).unwrap();
    assert_eq!(v.store().chunk_map("v").unwrap().len(), 1);
    v.flush().unwrap();
    assert!(!v.has_pending_changes());
    assert_eq!(v.store().chunk_map("v").unwrap().len(), 2);
}

#[test]
fn restored_changes_go_back_ahead_of_newer_ones() {
    let f = Fixture::new(1 << 20);
    let v = f.open(vol_meta(1 << 20)).unwrap();
    v.write_at(0, &[1u8; 512]).unwrap();
    v.flush().unwrap();
    v.zero_range(0, CHUNK, true).unwrap();
    // A commit takes the unmap; chunk 0 is mapped again meanwhile; the
    // commit fails and puts the unmap back.
    let taken = v.take_pending(v.flush_ticket()).unwrap();
    v.write_at(0, &[2u8; 512]).unwrap();
    let ticket = v.flush_ticket();
    taken.restore();
    v.commit(ticket).unwrap();
    assert!(!v.has_pending_changes());
    let entry = v.chunk_map().get(0).unwrap().to_persistent();
    assert_eq!(v.store().chunk_map("v").unwrap(), vec![(0, entry)]);
}
