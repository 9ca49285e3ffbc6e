//! Fault and chaos tests of the real daemon, each printing its figures.
//! They are `#[ignore]`d in the plain `cargo test` run and run by
//! `scripts/test.sh` on their own, with their output shown:
//!
//!     cargo test --test chaos -- --ignored --nocapture --test-threads=1
//!
//! `TIERBLK_CHAOS_ROUNDS` scales the loops (default: the short versions).

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::*;

/// Bytes of one verified block.
const BLOCK: usize = 4096;

fn rounds(default: usize) -> usize {
    std::env::var("TIERBLK_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), seeded per test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The content of block `block` at generation `gen`: a header naming both,
/// then bytes derived from them, so a block at the wrong place, from another
/// generation or half-written is told apart from the right one.
fn block_data(block: u64, gen: u64) -> Vec<u8> {
    let mut b = pattern(BLOCK, block.wrapping_mul(1_000_003) ^ gen);
    b[..8].copy_from_slice(&block.to_le_bytes());
    b[8..16].copy_from_slice(&gen.to_le_bytes());
    b
}

/// What a block may hold after a crash: the generation last made durable
/// by a completed flush, or any generation written after it.
#[derive(Default, Clone)]
struct Allowed {
    flushed: u64,
    later: Vec<u64>,
}

/// The writer's model of the volume: generation 0 = never written (zeros).
struct Model {
    blocks: HashMap<u64, Allowed>,
}

impl Model {
    fn wrote(&mut self, block: u64, gen: u64) {
        self.blocks.entry(block).or_default().later.push(gen);
    }

    fn flushed(&mut self) {
        for a in self.blocks.values_mut() {
            if let Some(&g) = a.later.last() {
                a.flushed = g;
                a.later.clear();
            }
        }
    }

    /// After a crash every block settles on what it now holds.
    fn settle(&mut self, block: u64, gen: u64) {
        let a = self.blocks.entry(block).or_default();
        a.flushed = gen;
        a.later.clear();
    }
}

/// Reads every block of the model back; returns (verified, corrupt).
fn verify_model(c: &mut Client, m: &mut Model, log: &dyn Fn() -> String) -> (u64, u64) {
    let mut blocks: Vec<u64> = m.blocks.keys().copied().collect();
    blocks.sort_unstable();
    let (mut ok, mut bad) = (0, 0);
    for b in blocks {
        let (r, data) = c.read(0, b * BLOCK as u64, BLOCK);
        assert_eq!(r, 0, "read of block {b} failed:\n{}", log());
        let a = m.blocks[&b].clone();
        let gen = if data.iter().all(|&x| x == 0) {
            Some(0)
        } else {
            let g = u64::from_le_bytes(data[8..16].try_into().unwrap());
            (data == block_data(b, g)).then_some(g)
        };
        match gen {
            Some(g) if g == a.flushed || a.later.contains(&g) => {
                ok += 1;
                m.settle(b, g);
            }
            other => {
                bad += 1;
                eprintln!(
                    "block {b}: holds {other:?}, allowed {} or {:?}",
                    a.flushed, a.later
                );
            }
        }
    }
    (ok, bad)
}

/// Chunk moves the brain reported in the log ("N promoted, M demoted").
fn moves(log: &str) -> u64 {
    let number_before = |line: &str, word: &str| -> u64 {
        line.find(word)
            .and_then(|i| line[..i].trim_end().rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    log.lines()
        .filter(|l| l.contains("moves planned"))
        .map(|l| number_before(l, " promoted") + number_before(l, " demoted"))
        .sum()
}

#[test]
#[ignore = "chaos: run by scripts/test.sh with --ignored --nocapture"]
fn kill9_at_random_moments_during_migration_loses_no_flushed_block() {
    // A small fast tier and 1-second epochs: the brain promotes and demotes
    // every epoch while the writer works on a hot set and a cold spread.
    let tiers = tiers(&[2 * MIB, 8 * MIB, 32 * MIB]);
    let kills = rounds(20);
    let mut d = Daemon::start(&tiers, &[VolumeSpec::default()]);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut m = Model {
        blocks: HashMap::new(),
    };
    let blocks = 16 * MIB / BLOCK as u64;
    let mut gen = 0u64;
    let (mut verified, mut corrupt, mut flushes) = (0u64, 0u64, 0u64);
    for round in 0..kills {
        let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
        let (ok, bad) = verify_model(&mut c, &mut m, &|| d.log());
        verified += ok;
        corrupt += bad;
        // Run for a random time, then kill -9 wherever the daemon is.
        let run = Duration::from_millis(300 + rng.below(2200));
        let t = Instant::now();
        let mut since_flush = 0;
        while t.elapsed() < run {
            // 3/4 of the writes go to a hot set of 8 chunks.
            let b = if rng.below(4) < 3 {
                rng.below(8 * 16)
            } else {
                rng.below(blocks)
            };
            gen += 1;
            if c.write(0, b * BLOCK as u64, &block_data(b, gen)) != 0 {
                panic!("write failed in round {round}:\n{}", d.log());
            }
            m.wrote(b, gen);
            // Reads heat the hot set for the brain.
            let hot = rng.below(8 * 16);
            c.read(0, hot * BLOCK as u64, BLOCK);
            since_flush += 1;
            if since_flush > rng.below(64) {
                assert_eq!(c.flush(0), 0, "{}", d.log());
                m.flushed();
                flushes += 1;
                since_flush = 0;
            }
        }
        drop(c);
        d.kill9();
        d.restart();
    }
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    let (ok, bad) = verify_model(&mut c, &mut m, &|| d.log());
    verified += ok;
    corrupt += bad;
    let log = d.log();
    println!(
        "chaos kill9: {kills} kill -9, {flushes} flushes, {} chunk moves completed between kills, {verified} blocks verified, corruptions = {corrupt}",
        moves(&log)
    );
    assert_eq!(corrupt, 0, "corrupted blocks after kill -9");
}

#[test]
#[ignore = "chaos: run by scripts/test.sh with --ignored --nocapture"]
fn client_reconnects_with_io_in_flight_keep_the_data() {
    let n = rounds(50);
    let d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    let mut rng = Rng(0xfeed_0042_1357_9bdf);
    let mut m = Model {
        blocks: HashMap::new(),
    };
    let blocks = 16 * MIB / BLOCK as u64;
    let mut gen = 0;
    let mut in_flight_at_drop = 0usize;
    for _ in 0..n {
        let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
        // Completed, flushed writes: must survive every reconnect.
        for _ in 0..8 {
            let b = rng.below(blocks);
            gen += 1;
            assert_eq!(
                c.write(0, b * BLOCK as u64, &block_data(b, gen)),
                0,
                "{}",
                d.log()
            );
            m.wrote(b, gen);
        }
        assert_eq!(c.flush(0), 0, "{}", d.log());
        m.flushed();
        // Requests submitted and never waited for: the client goes away
        // with them in flight. Reads only, so the model stays exact.
        let k = 1 + rng.below(16) as usize;
        let p = c.buf.addr as *mut u8;
        for i in 0..k {
            let b = rng.below(blocks);
            // SAFETY: the buffer is 8 MiB; k ≤ 16 blocks of 4 KiB fit.
            let dst = unsafe { p.add(i * BLOCK) };
            c.queues[0].read(b * BLOCK as u64, dst, BLOCK, 0, blkio::ReqFlags::empty());
        }
        in_flight_at_drop += k;
        drop(c);
    }
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    let (ok, bad) = verify_model(&mut c, &mut m, &|| d.log());
    println!(
        "chaos reconnect: {n} reconnects, {in_flight_at_drop} requests in flight at disconnect, {ok} blocks verified, corruptions = {bad}"
    );
    assert_eq!(bad, 0);
}

/// A small filesystem mounted for one test, unmounted when dropped (the
/// mounts need root; CI and scripts/test.sh run as root).
struct Mount(std::path::PathBuf);

impl Mount {
    fn run(cmd: &mut std::process::Command) {
        let ok = cmd.status().is_ok_and(|st| st.success());
        assert!(ok, "{cmd:?} failed: this test needs root");
    }

    /// A tmpfs of `bytes` at `dir`: no FALLOC_FL_ZERO_RANGE.
    fn tmpfs(dir: &std::path::Path, bytes: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        Self::run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(dir),
        );
        Self(dir.to_path_buf())
    }

    /// An ext2 filesystem of `bytes` in `image`, loop-mounted at `dir`: no
    /// fallocate at all (no preallocation, no ZERO_RANGE).
    fn ext2(dir: &std::path::Path, image: &std::path::Path, bytes: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::File::create(image)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        Self::run(std::process::Command::new("mkfs.ext2").arg("-q").arg(image));
        Self::run(
            std::process::Command::new("mount")
                .args(["-t", "ext2", "-o", "loop"])
                .arg(image)
                .arg(dir),
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills a 4 MiB tier through an 8 MiB volume of 64 KiB chunks, checks
/// what fitted, frees 2 MiB and writes new chunks into the freed extents,
/// which must read back zeroed beyond the new data. Returns (chunks
/// written, writes refused, reused extents checked).
fn fill_free_reuse(d: &Daemon) -> (u64, u64, u64) {
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    let data = pattern(64 * KIB as usize, 9);
    let (mut written, mut refused) = (0u64, 0u64);
    for i in 0..(8 * MIB / (64 * KIB)) {
        if c.write(0, i * 64 * KIB, &data) == 0 {
            written += 1;
        } else {
            refused += 1;
        }
    }
    assert_eq!(
        written,
        4 * MIB / (64 * KIB),
        "the tier holds 4 MiB:\n{}",
        d.log()
    );
    assert!(refused > 0);
    for i in 0..written {
        let (r, back) = c.read(0, i * 64 * KIB, data.len());
        assert!(
            r == 0 && back == data,
            "chunk {i} after the tier filled:\n{}",
            d.log()
        );
    }
    // Free half, make it durable, and write again: reused extents are
    // zeroed first (by a fallback where ZERO_RANGE is missing).
    assert_eq!(c.discard(0, 0, 2 * MIB), 0, "{}", d.log());
    assert_eq!(c.flush(0), 0, "{}", d.log());
    let small = pattern(4 * KIB as usize, 10);
    let mut rewritten = 0;
    for i in 0..(2 * MIB / (64 * KIB)) {
        let off = 4 * MIB + i * 64 * KIB;
        assert_eq!(
            c.write(0, off, &small),
            0,
            "write after freeing:\n{}",
            d.log()
        );
        let (_, back) = c.read(0, off, 64 * KIB as usize);
        assert!(back[..small.len()] == small[..], "new data at {off}");
        assert!(
            back[small.len()..].iter().all(|&b| b == 0),
            "a reused extent shows old data at {off}"
        );
        rewritten += 1;
    }
    (written, refused, rewritten)
}

fn small_volume() -> [VolumeSpec; 1] {
    [VolumeSpec {
        size: 8 * MIB,
        ..VolumeSpec::default()
    }]
}

#[test]
#[ignore = "chaos: run by scripts/test.sh with --ignored --nocapture"]
fn a_tier_on_a_small_tmpfs_fills_then_serves_again_once_freed() {
    let dir = tempfile::tempdir().unwrap();
    let _fs = Mount::tmpfs(&dir.path().join("tier0"), 6 * MIB);
    let config = write_config(dir.path(), &tiers(&[4 * MIB]), &small_volume());
    let d = Daemon::start_at(dir, config);
    let (written, refused, rewritten) = fill_free_reuse(&d);
    println!(
        "chaos tmpfs: tier full after {written} chunks, {refused} writes refused, 2 MiB freed, {rewritten} reused extents zeroed and written"
    );
}

#[test]
#[ignore = "chaos: run by scripts/test.sh with --ignored --nocapture"]
fn a_tier_on_ext2_gets_only_the_room_it_has_and_zeroes_reused_extents() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("tier0");
    let _fs = Mount::ext2(&mnt, &dir.path().join("ext2.img"), 8 * MIB);
    // ext2 cannot preallocate: a 16 MiB tier on an 8 MiB filesystem would
    // be a sparse promise the disk cannot keep. Refused, and no file left.
    let config = write_config(dir.path(), &tiers(&[16 * MIB]), &small_volume());
    let mut d = Daemon::not_started(dir, config);
    let err = d.start_refused();
    assert!(
        err.contains("tier0") && err.contains("bytes free"),
        "the refusal names the tier and the room: {err}"
    );
    assert!(
        !mnt.join("extents.dat").exists(),
        "a refused tier leaves no file"
    );
    // A tier that fits is served; extent reuse zeroes without ZERO_RANGE.
    d.edit_config(|c| {
        c.replace(
            &format!("capacity = {}", 16 * MIB),
            &format!("capacity = {}", 4 * MIB),
        )
    });
    d.restart();
    let (written, refused, rewritten) = fill_free_reuse(&d);
    println!(
        "chaos ext2: a 16 MiB tier on an 8 MiB ext2 refused; a 4 MiB one full after {written} chunks, {refused} writes refused, {rewritten} reused extents zeroed and written"
    );
}

/// A loop block device over a file of `bytes`, detached when dropped
/// (needs root).
struct Loop {
    dev: std::path::PathBuf,
}

impl Loop {
    fn new(image: &std::path::Path, bytes: u64) -> Self {
        std::fs::File::create(image)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup failed (this test needs root and loop devices): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self { dev: dev.into() }
    }

    fn first_bytes(&self, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut buf = vec![0u8; n];
        std::fs::File::open(&self.dev)
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        buf
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .status();
    }
}

#[test]
#[ignore = "chaos: run by scripts/test.sh with --ignored --nocapture"]
fn a_tier_on_a_block_device_carries_its_identity_and_reuses_zeroed_extents() {
    let dir = tempfile::tempdir().unwrap();
    let a = Loop::new(&dir.path().join("a.img"), 8 * MIB + 64 * KIB);
    let b = Loop::new(&dir.path().join("b.img"), 8 * MIB + 64 * KIB);
    let small = Loop::new(&dir.path().join("small.img"), 2 * MIB);
    // Old bytes on the device: a new tier must never show them.
    std::fs::write(&a.dev, vec![0x5a; MIB as usize]).unwrap();
    let config = write_config(dir.path(), &tiers(&[4 * MIB]), &small_volume());
    let tier_dir = format!("{}", dir.path().join("tier0").display());
    let on = |dev: &std::path::Path| {
        let dev = dev.display().to_string();
        let from = tier_dir.clone();
        move |c: String| c.replace(&from, &dev)
    };
    let mut d = Daemon::not_started(dir, config);
    // A device too small for the tier is refused before anything is
    // written to it.
    d.edit_config(on(&small.dev));
    let err = d.start_refused();
    assert!(err.contains("tier0") && err.contains("bytes"), "{err}");
    assert!(
        small.first_bytes(4096).iter().all(|&x| x == 0),
        "nothing written"
    );
    let small_dev = small.dev.display().to_string();
    let a_dev = a.dev.display().to_string();
    d.edit_config(|c| c.replace(&small_dev, &a_dev));
    d.restart();
    assert!(
        a.first_bytes(8).starts_with(b"TIERBLK\0"),
        "the device got its identity header"
    );
    {
        // The first extent lies where the old bytes were.
        let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
        let head = pattern(4 * KIB as usize, 3);
        assert_eq!(c.write(0, 0, &head), 0, "{}", d.log());
        let (_, back) = c.read(0, 0, 64 * KIB as usize);
        assert!(back[..head.len()] == head[..]);
        assert!(
            back[head.len()..].iter().all(|&x| x == 0),
            "a new chunk shows the device's old bytes"
        );
    }
    let (written, refused, rewritten) = fill_free_reuse(&d);
    d.stop();
    // Another (empty) device in its place is refused, naming the tier and
    // the UUID it expected; the data stays on the right one.
    let b_dev = b.dev.display().to_string();
    d.edit_config(|c| c.replace(&a_dev, &b_dev));
    let err = d.start_refused();
    assert!(err.contains("tier0") && err.contains(&b_dev), "{err}");
    assert!(
        b.first_bytes(4096).iter().all(|&x| x == 0),
        "nothing written"
    );
    d.edit_config(|c| c.replace(&b_dev, &a_dev));
    d.restart();
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    let (r, back) = c.read(0, 2 * MIB, 64 * KIB as usize);
    assert!(
        r == 0 && back == pattern(64 * KIB as usize, 9),
        "data on the block device after the refused swap:\n{}",
        d.log()
    );
    println!(
        "chaos block device: too small and swapped devices refused untouched; a 4 MiB tier on {} full after {written} chunks, {refused} writes refused, {rewritten} reused extents zeroed (BLKZEROOUT) and written, data kept across restarts",
        a.dev.display()
    );
}

#[test]
#[ignore = "chaos: run by scripts/test.sh with --ignored --nocapture"]
fn a_full_metadata_filesystem_fails_flushes_until_space_returns() {
    // The store on a small tmpfs, filled up by another file: commits fail
    // (the guest's FLUSH gets IOERR), and once the file is gone the store
    // is reopened and the next FLUSH commits everything before it.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _tmpfs = Mount::tmpfs(&state, 8 * MIB);
    let config = write_config(dir.path(), &tiers3(), &[VolumeSpec::default()]);
    let mut d = Daemon::start_at(dir, config);
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    let data = pattern(4096, 11);
    assert_eq!(c.write(0, 0, &data), 0);
    assert_eq!(c.flush(0), 0, "{}", d.log());
    // Fill the store's filesystem.
    let filler = state.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    // New chunks need new chunk-map entries: the commit needs room.
    let (mut failed_flushes, mut chunk) = (0, 1u64);
    while failed_flushes == 0 && chunk < 256 {
        for _ in 0..16 {
            assert_eq!(c.write(0, chunk * 64 * KIB, &pattern(4096, chunk)), 0);
            chunk += 1;
        }
        failed_flushes += (c.flush(0) != 0) as u32;
    }
    assert!(
        failed_flushes > 0,
        "no flush failed on a full filesystem:\n{}",
        d.log()
    );
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(c.flush(0), 0, "flush after space returned:\n{}", d.log());
    drop(c);
    d.kill9();
    d.restart();
    let mut c = Client::connect(&d.socket("vol0"), 1, false).unwrap();
    for i in 1..chunk {
        let (r, back) = c.read(0, i * 64 * KIB, 4096);
        assert!(
            r == 0 && back == pattern(4096, i),
            "chunk {i} lost after kill -9"
        );
    }
    println!(
        "chaos full store: {failed_flushes} flush(es) failed while the store's filesystem was full, recovered without restart, {} chunks verified after kill -9",
        chunk - 1
    );
}
