//! criterion micro-benchmarks of the request path's pieces: chunk-map
//! lookup and pin, request split by chunk, the profiler's counter update and
//! virtio-blk request parsing. Run: cargo bench --bench request_path

use std::{hint::black_box, sync::Arc};

use criterion::{criterion_group, criterion_main, Criterion};
use tierblk::{
    blk::request::{self, Limits, RequestBufs},
    config::Config,
    meta::Store,
    tier::TierSet,
    volume::{ChunkMap, Mapping, Volume},
};
use virtio_bindings::{virtio_blk::VIRTIO_BLK_T_IN, virtio_ring::VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CHUNKS: u32 = 1 << 16;

fn volume(dir: &std::path::Path) -> Arc<Volume> {
    let cfg = Config::parse(&format!(
        r#"
[[tier]]
tier_id = 0
name = "t0"
capacity = "256MiB"
cost_per_gb = 0.1
path = "{}"
performance_metrics = {{ read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }}
[[volume]]
name = "v"
size = "128MiB"
chunk_size = "64KiB"
socket = "/tmp/unused.sock"
"#,
        dir.display()
    ))
    .unwrap();
    let store = Arc::new(Store::open(&dir.join("state")).unwrap());
    let tiers = Arc::new(TierSet::open(&cfg.tiers, &store).unwrap());
    let v = Arc::new(Volume::open(cfg.volumes[0].clone(), tiers, store).unwrap());
    // Allocate every chunk so lookups find extents.
    for c in 0..v.chunk_count() as u64 {
        v.write_at(c * v.chunk_size(), &[1u8; 512]).unwrap();
    }
    v
}

fn bench_chunk_map(c: &mut Criterion) {
    let map = ChunkMap::new(CHUNKS as usize);
    for i in 0..CHUNKS {
        map.load(
            i,
            Mapping {
                tier: (i % 3) as u8,
                unit: i as u64,
            },
        );
    }
    let mut i = 0u32;
    c.bench_function("chunk_map pin_read + unpin", |b| {
        b.iter(|| {
            i = i.wrapping_mul(1_664_525).wrapping_add(1_013_904_223) % CHUNKS;
            let m = map.pin_read(black_box(i));
            map.unpin(i);
            m
        })
    });
}

fn bench_split(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let v = volume(dir.path());
    let mut segs = Vec::with_capacity(64);
    let mut off = 0u64;
    c.bench_function("volume map_read 4k + release", |b| {
        b.iter(|| {
            off = (off + 7 * 4096) % (v.size() - 4096);
            segs.clear();
            v.map_read(black_box(off), 4096, &mut segs).unwrap();
            v.release(&segs);
        })
    });
    c.bench_function("volume map_write 128k across 2 chunks + release", |b| {
        b.iter(|| {
            segs.clear();
            v.map_write(black_box(64 * 1024 - 4096), 128 * 1024, &mut segs)
                .unwrap();
            v.release_written(&segs);
        })
    });
    c.bench_function("volume record_access 4k", |b| {
        b.iter(|| {
            off = (off + 7 * 4096) % (v.size() - 4096);
            v.record_access(false, black_box(off), 4096, false)
        })
    });
}

fn bench_parse(c: &mut Criterion) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    hdr[8..16].copy_from_slice(&8u64.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(0x1000)).unwrap();
    let w = VRING_DESC_F_WRITE as u16;
    let chain = [
        Descriptor::new(0x1000, 16, 0, 0),
        Descriptor::new(0x2000, 4096, w, 0),
        Descriptor::new(0x4000, 1, w, 0),
    ];
    let limits = Limits {
        capacity: 1 << 30,
        read_only: false,
    };
    let mut bufs = RequestBufs::with_capacity(8);
    c.bench_function("request parse (read, 3 descriptors)", |b| {
        b.iter(|| request::parse(black_box(chain).into_iter(), &mem, limits, &mut bufs).unwrap())
    });
}

criterion_group!(benches, bench_chunk_map, bench_split, bench_parse);
criterion_main!(benches);
