//! Whole-daemon tests: the real `tierblk serve` driven by a real
//! vhost-user-blk client (blkio, driver virtio-blk-vhost-user).

mod common;

use common::*;

/// Non-zero bytes in a tier file's extents (after its 64 KiB header).
fn nonzero_bytes(path: &std::path::Path) -> usize {
    std::fs::read(path).unwrap()[64 * KIB as usize..]
        .iter()
        .filter(|&&b| b != 0)
        .count()
}

#[test]
fn write_read_verify_across_chunk_and_tier_boundaries() {
    // New chunks of an unknown VM are cold and go to the slowest tier; it
    // holds 4 chunks here, so a 1 MiB write overflows onto tier 1 and the
    // request is split over chunks on two tiers.
    let mut tiers = tiers3();
    tiers[2].capacity = 256 * KIB;
    let d = Daemon::start(&tiers, &[VolumeSpec::default()]);
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    assert_eq!(c.capacity(), 16 * MIB);
    let data = pattern(MIB as usize, 1);
    let off = 32 * KIB + 512;
    assert_eq!(c.write(0, off, &data), 0, "{}", d.log());
    let (r, back) = c.read(0, off, data.len());
    assert_eq!(r, 0, "{}", d.log());
    assert!(back == data, "read-back differs");
    // Unwritten space around it reads zeros.
    let (_, head) = c.read(0, 0, (32 * KIB) as usize);
    assert!(head.iter().all(|&b| b == 0));
    assert_eq!(c.flush(0), 0, "{}", d.log());
    assert!(nonzero_bytes(&d.tier_file(1)) > 0, "tier 1 holds data");
    assert!(
        nonzero_bytes(&d.tier_file(2)) > 0,
        "tier 2 holds the overflow"
    );
}

#[test]
fn discard_and_write_zeroes_read_back_zeros() {
    let d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    let data = pattern(512 * KIB as usize, 2);
    assert_eq!(c.write(0, 0, &data), 0, "{}", d.log());
    // Whole chunks 1..3 and a partial range inside chunk 0.
    assert_eq!(c.discard(0, 64 * KIB, 128 * KIB), 0, "{}", d.log());
    assert_eq!(c.write_zeroes(0, 4 * KIB, 4 * KIB, false), 0, "{}", d.log());
    assert_eq!(
        c.write_zeroes(0, 256 * KIB, 64 * KIB, true),
        0,
        "{}",
        d.log()
    );
    let (r, back) = c.read(0, 0, data.len());
    assert_eq!(r, 0, "{}", d.log());
    let zero = |a: u64, b: u64| back[a as usize..b as usize].iter().all(|&x| x == 0);
    let same = |a: u64, b: u64| back[a as usize..b as usize] == data[a as usize..b as usize];
    assert!(same(0, 4 * KIB) && zero(4 * KIB, 8 * KIB) && same(8 * KIB, 64 * KIB));
    assert!(zero(64 * KIB, 192 * KIB) && same(192 * KIB, 256 * KIB));
    assert!(zero(256 * KIB, 320 * KIB) && same(320 * KIB, 512 * KIB));
}

#[test]
fn out_of_range_io_fails_and_daemon_keeps_serving() {
    let d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    let end = 16 * MIB;
    assert_ne!(c.write(0, end - 512, &[1u8; 1024]), 0);
    assert_ne!(c.read(0, end, 512).0, 0);
    assert_eq!(c.write(0, end - 512, &[1u8; 512]), 0, "{}", d.log());
    assert_eq!(c.read(0, end - 512, 512).1, vec![1u8; 512]);
}

#[test]
fn flushed_data_survives_kill9_and_restart() {
    let mut d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    let data = pattern(3 * MIB as usize, 3);
    {
        let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
        assert_eq!(c.write(0, 5 * MIB, &data), 0, "{}", d.log());
        assert_eq!(c.flush(0), 0, "{}", d.log());
        d.kill9();
    }
    d.restart();
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    let (r, back) = c.read(0, 5 * MIB, data.len());
    assert_eq!(r, 0, "{}", d.log());
    assert!(back == data, "flushed data lost after kill -9");
}

#[test]
fn clean_shutdown_persists_unflushed_writes() {
    let mut d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    let data = pattern(256 * KIB as usize, 4);
    {
        let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
        assert_eq!(c.write(0, MIB, &data), 0, "{}", d.log());
        assert!(d.stop().success(), "{}", d.log());
    }
    d.restart();
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    assert!(c.read(0, MIB, data.len()).1 == data);
}

#[test]
fn reconnect_serves_same_data() {
    let d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    let data = pattern(128 * KIB as usize, 5);
    {
        let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
        assert_eq!(c.write(0, 0, &data), 0, "{}", d.log());
    }
    for round in 0..3 {
        let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
        let (status, got) = c.read(0, 0, data.len());
        let first_bad = got.iter().zip(&data).position(|(a, b)| a != b);
        assert!(
            status == 0 && first_bad.is_none(),
            "connection {round}: status {status}, first wrong byte at {first_bad:?}\n{}",
            d.log()
        );
    }
}

#[test]
fn multiqueue_serves_both_queues_concurrently() {
    let vol = VolumeSpec {
        queues: 2,
        ..Default::default()
    };
    let d = Daemon::start(&tiers3(), &[vol]);
    let mut c = Client::connect(&d.socket("vol0"), 2, false).unwrap();
    assert_eq!(c.queues.len(), 2);
    // Submit on both queues before waiting on either.
    let n = 64usize;
    let len = 16 * KIB as usize;
    let data = pattern(n * len, 6);
    c.buf_mut(n * len).copy_from_slice(&data);
    for i in 0..n {
        let p = (c.buf.addr + i * len) as *const u8;
        c.queues[i % 2].write((i * len) as u64, p, len, i, blkio::ReqFlags::empty());
    }
    assert!(c.wait(0, n / 2).iter().all(|&r| r == 0));
    assert!(c.wait(1, n / 2).iter().all(|&r| r == 0));
    for q in 0..2 {
        let (r, back) = c.read(q, 0, n * len);
        assert_eq!(r, 0, "{}", d.log());
        assert!(back == data, "queue {q} reads different data");
    }
}

#[test]
fn read_only_volume_is_advertised_and_readable() {
    let vol = VolumeSpec {
        read_only: true,
        ..Default::default()
    };
    let d = Daemon::start(&tiers3(), &[vol]);
    // A client that wants to write is refused at start (RO feature).
    assert!(Client::connect(&d.socket("vol0"), 1, false).is_err());
    let mut c = Client::connect(&d.socket("vol0"), 1, true).unwrap();
    let (r, back) = c.read(0, 0, 4096);
    assert_eq!(r, 0, "{}", d.log());
    assert!(back.iter().all(|&b| b == 0));
    assert_ne!(c.write(0, 0, &[1u8; 512]), 0);
}

#[test]
fn two_volumes_in_one_daemon_are_independent() {
    let a = VolumeSpec {
        name: "a",
        ..Default::default()
    };
    let b = VolumeSpec {
        name: "b",
        chunk: MIB,
        ..Default::default()
    };
    let d = Daemon::start(&tiers3(), &[a, b]);
    let mut ca = Client::connect(&d.socket("a"), 1, false).unwrap();
    let mut cb = Client::connect(&d.socket("b"), 1, false).unwrap();
    assert_eq!(ca.write(0, 0, &[0xaa; 4096]), 0, "{}", d.log());
    assert_eq!(cb.write(0, 0, &[0xbb; 4096]), 0, "{}", d.log());
    assert_eq!(ca.read(0, 0, 4096).1, vec![0xaa; 4096]);
    assert_eq!(cb.read(0, 0, 4096).1, vec![0xbb; 4096]);
}

#[test]
fn emulated_slow_tier_delays_completions() {
    let tiers = vec![TierSpec {
        capacity: 32 * MIB,
        emulate: "{ read_latency_us = 20000 }",
    }];
    let d = Daemon::start(&tiers, &[VolumeSpec::default()]);
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    assert_eq!(c.write(0, 0, &[1u8; 4096]), 0, "{}", d.log());
    let t = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(c.read(0, 0, 4096).0, 0, "{}", d.log());
    }
    // Five reads of a tier that answers in 20 ms cannot take less than
    // 100 ms; this checks the emulation is applied, not a speed.
    assert!(t.elapsed() >= std::time::Duration::from_millis(100));
}

#[test]
fn bad_config_is_reported_with_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[tier]]\ntier_id = 0\nname = \"a\"\ncapacity = \"1GiB\"\ncost_per_gb = 1\npath = \"/nonexistent\"\n\
         performance_metrics = { read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }\n\
         [[volume]]\nname = \"v\"\nsize = \"1GiB\"\nchunk_size = \"3MiB\"\nsocket = \"/tmp/x.sock\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tierblk"))
        .args(["serve", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chunk_size") && err.contains("3MiB"), "{err}");
}

#[test]
fn hot_chunk_is_promoted_in_the_background_and_heat_map_survives_restart() {
    // epoch_secs = 1 in the test config; the volume uses the EWMA predictor.
    let mut d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    let data = pattern(MIB as usize, 7);
    {
        let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
        assert_eq!(c.write(0, 0, &data), 0, "{}", d.log());
        assert_eq!(c.flush(0), 0, "{}", d.log());
        assert_eq!(nonzero_bytes(&d.tier_file(0)), 0, "new chunks start cold");
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(4) {
            let (r, back) = c.read(0, 3 * 64 * KIB, 4096);
            assert_eq!(r, 0, "{}", d.log());
            assert!(back[..] == data[3 * 64 * KIB as usize..][..4096]);
        }
        // Promoted while being read: the data is now on tier 0, unchanged.
        assert!(nonzero_bytes(&d.tier_file(0)) > 0, "{}", d.log());
        let (_, back) = c.read(0, 0, data.len());
        assert!(back == data);
    }
    // Chunks on tier 0 in the first stats snapshot numbered `seq` or more
    // (snapshots are numbered from 1 since the daemon opened the volume).
    let stats = tierblk::stats::stats_path(&d.dir.path().join("state"), "vol0");
    let on_tier_0 = |d: &Daemon, seq: u64| {
        let t = std::time::Instant::now();
        loop {
            if let Ok(s) = tierblk::stats::VolumeStats::load(&stats) {
                if s.seq >= seq {
                    return (s.seq, s.chunks_per_tier[0].chunks);
                }
            }
            assert!(
                t.elapsed().as_secs() < 20,
                "no stats snapshot {seq}: {}",
                d.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let (now, _) = on_tier_0(&d, 1);
    assert_eq!(
        on_tier_0(&d, now + 1).1,
        1,
        "the read chunk is on tier 0: {}",
        d.log()
    );
    assert!(d.stop().success());
    // The snapshots after the restart count from 1 again.
    std::fs::remove_file(&stats).unwrap();
    d.restart();
    assert!(
        d.log().contains("starting from its saved heat map"),
        "{}",
        d.log()
    );
    // Warm restart: the saved heat map seeds the predictor, so the hot
    // chunk, idle since, is still on tier 0 two epochs later (its seeded
    // score decays, and new history outweighs it within a few epochs).
    assert_eq!(on_tier_0(&d, 2).1, 1, "{}", d.log());
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    assert!(c.read(0, 0, data.len()).1 == data);
}
