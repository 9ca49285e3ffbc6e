use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use super::*;
use crate::{config::Config, meta::Store, tier::TierSet, volume::ChunkState};

const CHUNK: u64 = 64 * 1024;

fn config(dir: &Path, cap0: &str) -> Config {
    let mut s = String::new();
    for i in 0..3 {
        let p = dir.join(format!("t{i}"));
        std::fs::create_dir_all(&p).unwrap();
        s += &format!(
            "[[tier]]\ntier_id = {i}\nname = \"t{i}\"\ncapacity = \"{}\"\ncost_per_gb = 0.1\npath = \"{}\"\n\
             performance_metrics = {{ read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }}\n",
            if i == 0 { cap0 } else { "1MiB" },
            p.display()
        );
    }
    s += "[[volume]]\nname = \"v\"\nsize = \"1MiB\"\nchunk_size = \"64KiB\"\nsocket = \"/tmp/unused\"\n";
    Config::parse(&s).unwrap()
}

fn open(dir: &Path) -> Arc<Volume> {
    open_with(dir, "1MiB")
}

fn open_with(dir: &Path, cap0: &str) -> Arc<Volume> {
    open_config(dir, &config(dir, cap0))
}

/// The first volume of `cfg`, with its store in `dir`.
fn open_config(dir: &Path, cfg: &Config) -> Arc<Volume> {
    let store = Arc::new(Store::open(&dir.join("state")).unwrap());
    let tiers = Arc::new(TierSet::open(&cfg.tiers, &store).unwrap());
    Arc::new(Volume::open(cfg.volumes[0].clone(), tiers, store).unwrap())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

#[test]
fn moved_chunk_keeps_data_and_new_mapping_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(CHUNK as usize, 1);
    {
        let v = open(dir.path());
        v.write_at(3 * CHUNK, &data).unwrap();
        let from = v.block_metadata(3).tier.unwrap();
        let to = if from == 0 { 2 } else { 0 };
        let mut l = RateLimiter::new(0.0);
        let out = migrate_chunk(&v, 3, to, &mut l).unwrap();
        assert_eq!(out, Outcome::Moved { from, to });
        assert_eq!(v.block_metadata(3).tier, Some(to));
        assert_eq!(v.block_metadata(3).state, ChunkState::Allocated);
        let mut back = vec![0u8; data.len()];
        v.read_at(3 * CHUNK, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            v.tiers().get(from).unwrap().usage().0,
            CHUNK,
            "old extent stays reserved until the switch is durable"
        );
        v.flush().unwrap();
        assert_eq!(
            v.tiers().get(from).unwrap().usage().0,
            0,
            "old extent freed"
        );
    }
    let v = open(dir.path());
    let mut back = vec![0u8; data.len()];
    v.read_at(3 * CHUNK, &mut back).unwrap();
    assert_eq!(back, data);
    let used: u64 = v.tiers().iter().map(|t| t.usage().0).sum();
    assert_eq!(used, CHUNK, "exactly one extent referenced after restart");
}

#[test]
fn crash_before_flush_keeps_old_extent_authoritative() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(CHUNK as usize, 4);
    let from;
    {
        let v = open(dir.path());
        v.write_at(0, &data).unwrap();
        v.flush().unwrap();
        from = v.block_metadata(0).tier.unwrap();
        let to = if from == 0 { 2 } else { 0 };
        let mut l = RateLimiter::new(0.0);
        assert!(matches!(
            migrate_chunk(&v, 0, to, &mut l).unwrap(),
            Outcome::Moved { .. }
        ));
        // "Crash": drop without flushing.
    }
    let v = open(dir.path());
    assert_eq!(
        v.block_metadata(0).tier,
        Some(from),
        "old mapping after a crash"
    );
    let mut back = vec![0u8; data.len()];
    v.read_at(0, &mut back).unwrap();
    assert_eq!(back, data);
    let used: u64 = v.tiers().iter().map(|t| t.usage().0).sum();
    assert_eq!(used, CHUNK, "the new extent is free again");
}

#[test]
fn unallocated_chunk_and_same_tier_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path());
    let mut l = RateLimiter::new(0.0);
    assert_eq!(
        migrate_chunk(&v, 0, 0, &mut l).unwrap(),
        Outcome::Skipped(SkipReason::NotMovable)
    );
    v.write_at(0, &[1u8; 512]).unwrap();
    let t = v.block_metadata(0).tier.unwrap();
    assert_eq!(
        migrate_chunk(&v, 0, t, &mut l).unwrap(),
        Outcome::Skipped(SkipReason::AlreadyThere)
    );
}

#[test]
fn full_target_tier_leaves_chunk_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let v = open_with(dir.path(), "128KiB"); // tier 0 holds two chunks
    for c in 0..2u32 {
        v.set_score(c, 1.0);
        v.write_at(c as u64 * CHUNK, &[2u8; 512]).unwrap();
    }
    v.set_score(2, 0.0);
    let data = pattern(CHUNK as usize, 9);
    v.write_at(2 * CHUNK, &data).unwrap();
    assert_eq!(v.block_metadata(2).tier, Some(2));
    let mut l = RateLimiter::new(0.0);
    assert_eq!(
        migrate_chunk(&v, 2, 0, &mut l).unwrap(),
        Outcome::Skipped(SkipReason::TargetFull)
    );
    assert_eq!(v.block_metadata(2).tier, Some(2));
    assert_eq!(v.block_metadata(2).state, ChunkState::Allocated);
    let mut back = vec![0u8; data.len()];
    v.read_at(2 * CHUNK, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn writes_during_migration_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path());
    let block = 4096usize;
    let blocks = (CHUNK as usize) / block;
    v.write_at(0, &vec![0u8; CHUNK as usize]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let v = v.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Model of what each block must hold at the end.
            let mut model = vec![0u8; blocks];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let b = (i.wrapping_mul(2654435761) % blocks as u64) as usize;
                let val = (i % 251) as u8 + 1;
                v.write_at((b * block) as u64, &vec![val; block]).unwrap();
                model[b] = val;
            }
            model
        })
    };
    let mut l = RateLimiter::new(0.0);
    let mut moved = 0;
    for round in 0..30 {
        let to = [0u8, 2, 1][round % 3];
        if let Outcome::Moved { .. } = migrate_chunk(&v, 0, to, &mut l).unwrap() {
            moved += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let model = writer.join().unwrap();
    assert!(moved >= 10, "only {moved} migrations happened");
    let mut back = vec![0u8; CHUNK as usize];
    v.read_at(0, &mut back).unwrap();
    for (b, &want) in model.iter().enumerate() {
        let got = &back[b * block..(b + 1) * block];
        assert!(
            got.iter().all(|&x| x == want),
            "block {b}: want {want}, got {}",
            got[0]
        );
    }
    v.flush().unwrap();
    let used: u64 = v.tiers().iter().map(|t| t.usage().0).sum();
    assert_eq!(
        used, CHUNK,
        "no extent leaked once the switches are durable"
    );
}

#[test]
fn a_panic_inside_a_migration_releases_the_chunk_and_its_slot() {
    // migrate_chunk's steps up to the hold, then a panic (the brain
    // catches it and goes on): the chunk must not stay held, which would
    // block every later I/O on it, nor migrating, nor keep its slot.
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path());
    let data = pattern(CHUNK as usize, 5);
    v.write_at(2 * CHUNK, &data).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let slot = v.dirty_tracker().register(2).unwrap();
        let guard = EndOnUnwind::new(&v, 2, slot);
        v.chunk_map().begin_migration(2).unwrap();
        guard.begun();
        assert!(v.chunk_map().try_hold_idle(2));
        panic!("injected panic during a migration");
    }));
    assert!(r.is_err());
    assert_eq!(
        v.block_metadata(2).state,
        ChunkState::Allocated,
        "chunk left held or migrating"
    );
    let slots: Vec<usize> = (0..crate::volume::dirty::SLOTS as u32)
        .map_while(|c| v.dirty_tracker().register(100 + c))
        .collect();
    assert_eq!(slots.len(), crate::volume::dirty::SLOTS, "slot leaked");
    for s in slots {
        v.dirty_tracker().unregister(s);
    }
    // I/O and later migrations of the chunk go on.
    let mut back = vec![0u8; CHUNK as usize];
    v.read_at(2 * CHUNK, &mut back).unwrap();
    assert!(back == data);
    let from = v.block_metadata(2).tier.unwrap();
    let to = if from == 0 { 2 } else { 0 };
    let out = migrate_chunk(&v, 2, to, &mut RateLimiter::new(0.0)).unwrap();
    assert_eq!(out, Outcome::Moved { from, to });
    v.read_at(2 * CHUNK, &mut back).unwrap();
    assert!(back == data);
}

#[test]
fn volumes_migrating_at_once_share_the_daemons_budget() {
    // Two volumes each move 8 chunks (512 KiB) at once under one 2 MiB/s
    // budget: together 1 MiB, so at least about half a second; with a
    // budget each they would take a quarter.
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let budget = Arc::new(Budget::new(2.0, 2));
    let start = std::time::Instant::now();
    let threads: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(slot, d)| {
            let v = open_with(d.path(), "1MiB");
            for c in 0..8u32 {
                v.write_at(c as u64 * CHUNK, &pattern(4096, c as u8))
                    .unwrap();
            }
            let from = v.tier_index(0).unwrap() as u8;
            let to = if from == 0 { 2 } else { 0 };
            let jobs: Vec<Job> = (0..8)
                .map(|chunk| Job {
                    m: crate::place::Move { chunk, from, to },
                    planned: true,
                    prefetch: false,
                })
                .collect();
            let mut pacer = Pacer::new(Arc::clone(&budget), slot);
            std::thread::spawn(move || {
                let done = mover::execute(&v, &jobs, &mut pacer);
                assert!(done
                    .iter()
                    .all(|d| matches!(d.result, Ok(Outcome::Moved { .. }))));
                for c in 0..8u32 {
                    let mut buf = vec![0; 4096];
                    v.read_at(c as u64 * CHUNK, &mut buf).unwrap();
                    assert_eq!(buf, pattern(4096, c as u8));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let took = start.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(400),
        "1 MiB at a shared 2 MiB/s took {took:?}"
    );
}

/// A volume of 32 chunks on an SSD-like tier and an emulated HDD of
/// 8 MiB/s that guest and mover share.
fn open_shared_hdd(dir: &Path) -> Arc<Volume> {
    let mut s = String::new();
    for (i, emulate) in ["", "emulate = { bandwidth_mibps = 8 }\n"]
        .iter()
        .enumerate()
    {
        let p = dir.join(format!("t{i}"));
        std::fs::create_dir_all(&p).unwrap();
        s += &format!(
            "[[tier]]\ntier_id = {i}\nname = \"t{i}\"\ncapacity = \"4MiB\"\ncost_per_gb = 0.1\npath = \"{}\"\n\
             performance_metrics = {{ read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }}\n{emulate}",
            p.display()
        );
    }
    s += "[[volume]]\nname = \"v\"\nsize = \"2MiB\"\nchunk_size = \"64KiB\"\nsocket = \"/tmp/unused\"\n";
    open_config(dir, &Config::parse(&s).unwrap())
}

#[test]
fn the_mover_yields_to_a_guest_it_slows_down_and_speeds_up_when_the_guest_is_idle() {
    let dir = tempfile::tempdir().unwrap();
    let v = open_shared_hdd(dir.path());
    let n = v.chunk_count();
    for c in 0..n {
        v.write_at(u64::from(c) * CHUNK, &pattern(CHUNK as usize, c as u8))
            .unwrap();
    }
    // A guest on the emulated HDD: one 64 KiB read at a time (7.8 ms
    // alone at 8 MiB/s), counted as the queue workers count requests.
    let hdd = v.tiers().get(1).unwrap().emulator().unwrap();
    let stop = AtomicBool::new(false);
    let mut lowest = 1.0f64;
    std::thread::scope(|s| {
        s.spawn(|| {
            let q = v.guest_load().register();
            while !stop.load(Ordering::Relaxed) {
                q.start();
                let t = std::time::Instant::now();
                std::thread::sleep(hdd.delay(false, CHUNK, std::time::Duration::ZERO));
                q.finish(t.elapsed());
            }
        });
        // The mover moves every chunk between the two tiers, at the HDD's
        // whole bandwidth: without yielding, the guest's reads would wait
        // behind its copies.
        let budget = Arc::new(Budget::new(8.0, 1));
        let mut mover = MoverThread::spawn(Arc::clone(&v), Pacer::new(budget, 0)).unwrap();
        let mut next = 0;
        let mut send = |mover: &mut MoverThread| {
            if mover.queued() < 8 {
                let jobs = (0..4)
                    .map(|_| {
                        let c = next;
                        next = (next + 1) % n;
                        let on = v.tier_index(c).unwrap() as u8;
                        mover::Job {
                            m: crate::place::Move {
                                chunk: c,
                                from: on,
                                to: 1 - on,
                            },
                            planned: true,
                            prefetch: false,
                        }
                    })
                    .collect();
                mover.send(jobs).unwrap();
            }
            mover.finished();
        };
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(1500) {
            send(&mut mover);
            lowest = lowest.min(v.served().migration_share());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        // The guest is idle now: the share comes back.
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(3) && v.served().migration_share() < 1.0
        {
            send(&mut mover);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(v.served().migration_share(), 1.0, "back to the whole share");
        while mover.queued() > 0 {
            mover.finished();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    assert!(lowest <= 0.5, "the mover never backed off: {lowest}");
    assert!(lowest >= backoff::FLOOR, "below the floor: {lowest}");
    for c in 0..n {
        let mut back = vec![0u8; CHUNK as usize];
        v.read_at(u64::from(c) * CHUNK, &mut back).unwrap();
        assert!(back == pattern(CHUNK as usize, c as u8), "chunk {c}");
    }
}
