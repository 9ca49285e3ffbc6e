//! Data-safety tests of the real daemon: ordinary operator actions (config
//! edits, a lost store, moved tier files, a second daemon, a loose umask,
//! SIGHUP) must never lose, hide or expose a volume's data. Each test did
//! lose, hide or expose data before the fix it covers.

mod common;

use std::{os::unix::fs::PermissionsExt, path::Path};

use common::*;

fn vol(name: &'static str) -> VolumeSpec {
    VolumeSpec {
        name,
        ..VolumeSpec::default()
    }
}

/// Writes `len` bytes of pattern `seed` from offset 0 and flushes.
fn fill(d: &Daemon, volume: &str, len: u64, seed: u64) {
    let mut c = Client::connect(&d.socket(volume), 1, false).unwrap();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(MIB);
        let data = pattern(n as usize, seed + off);
        assert_eq!(c.write(0, off, &data), 0, "{}", d.log());
        off += n;
    }
    assert_eq!(c.flush(0), 0, "{}", d.log());
}

/// Checks the pattern `fill` wrote.
fn verify(d: &Daemon, volume: &str, len: u64, seed: u64) {
    let mut c = Client::connect(&d.socket(volume), 1, false).unwrap();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(MIB);
        let (r, back) = c.read(0, off, n as usize);
        assert_eq!(r, 0, "{}", d.log());
        assert!(
            back == pattern(n as usize, seed + off),
            "volume '{volume}': data at {off} differs"
        );
        off += n;
    }
}

/// The [[volume]] section of `name` in a test config.
fn section_of(config: &str, name: &str) -> String {
    let start = config
        .find(&format!("[[volume]]\nname = \"{name}\""))
        .unwrap();
    let rest = &config[start + 1..];
    let end = rest
        .find("[[volume]]")
        .map_or(config.len(), |e| start + 1 + e);
    config[start..end].to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn volume_left_out_of_the_config_is_kept_and_its_extents_never_reused() {
    // Room for one volume's data and a little more: had vol0's extents been
    // freed while it was out of the config, vol1 would be given them.
    let tiers = tiers(&[4 * MIB, 4 * MIB, 12 * MIB]);
    let mut d = Daemon::start(&tiers, &[vol("vol0"), vol("vol1")]);
    fill(&d, "vol0", 16 * MIB, 100);
    d.stop();
    let full = std::fs::read_to_string(&d.config).unwrap();
    let vol0 = section_of(&full, "vol0");
    d.edit_config(|c| c.replace(&vol0, ""));
    d.restart_serving(&["vol1"]);
    assert!(!d.socket("vol0").exists(), "vol0 is not served");
    assert!(d
        .log()
        .contains("volume 'vol0' is in the metadata store but not in the config"));
    {
        // Fill vol1: only the 4 MiB vol0 does not use can be had.
        let mut c = Client::connect(&d.socket("vol1"), 1, false).unwrap();
        let data = pattern(MIB as usize, 7);
        for i in 0..16 {
            c.write(0, i * MIB, &data);
        }
        c.flush(0);
    }
    d.stop();
    let (ok, out, _) = tierblk(&["volume", "list", "--config", d.config.to_str().unwrap()]);
    assert!(
        ok && out.contains("vol0") && out.contains("not in config"),
        "{out}"
    );
    std::fs::write(&d.config, &full).unwrap();
    d.restart();
    verify(&d, "vol0", 16 * MIB, 100);
    d.stop();
    // Deleting needs the volume out of the config first; then it is gone.
    let cfg = d.config.to_str().unwrap().to_string();
    let (ok, _, err) = tierblk(&["volume", "delete", "--config", &cfg, "vol0"]);
    assert!(!ok && err.contains("still in the config"), "{err}");
    d.edit_config(|c| c.replace(&vol0, ""));
    let (ok, _, err) = tierblk(&["volume", "delete", "--config", &cfg, "vol0"]);
    assert!(ok, "{err}");
    let (_, out, _) = tierblk(&["volume", "list", "--config", &cfg]);
    assert!(!out.contains("vol0"), "{out}");
}

#[test]
fn a_missing_or_emptied_store_beside_tier_data_is_refused() {
    let mut d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    fill(&d, "vol0", 2 * MIB, 1);
    d.stop();
    let store = d.dir.path().join("state/meta.redb");
    let saved = std::fs::read(&store).unwrap();
    std::fs::remove_file(&store).unwrap();
    let err = d.start_refused();
    assert!(
        err.contains("does not know") && err.contains("tier"),
        "{err}"
    );
    std::fs::write(&store, b"").unwrap();
    let err = d.start_refused();
    assert!(err.contains("does not know"), "{err}");
    std::fs::write(&store, &saved).unwrap();
    d.restart();
    verify(&d, "vol0", 2 * MIB, 1);
}

#[test]
fn changed_swapped_or_deleted_tier_paths_are_refused_and_the_data_stays() {
    let mut d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    fill(&d, "vol0", 8 * MIB, 2);
    d.stop();
    let full = std::fs::read_to_string(&d.config).unwrap();
    let root = d.dir.path().to_path_buf();
    let t = |i: usize| root.join(format!("tier{i}")).display().to_string();
    // A new, empty directory in place of tier 1.
    let moved = d.dir.path().join("elsewhere");
    std::fs::create_dir_all(&moved).unwrap();
    d.edit_config(|c| {
        c.replace(
            &format!("\"{}\"", t(1)),
            &format!("\"{}\"", moved.display()),
        )
    });
    let err = d.start_refused();
    assert!(
        err.contains("tier 'tier1'") && err.contains("missing") && err.contains("UUID"),
        "{err}"
    );
    assert!(
        !moved.join("extents.dat").exists(),
        "a refused start creates no tier file"
    );
    // Tier 0 and tier 1 swapped.
    std::fs::write(&d.config, &full).unwrap();
    d.edit_config(|c| {
        c.replace(&format!("\"{}\"", t(0)), "\"@0\"")
            .replace(&format!("\"{}\"", t(1)), &format!("\"{}\"", t(0)))
            .replace("\"@0\"", &format!("\"{}\"", t(1)))
    });
    let err = d.start_refused();
    assert!(err.contains("swapped"), "{err}");
    // Two tiers on one directory.
    std::fs::write(&d.config, &full).unwrap();
    d.edit_config(|c| c.replace(&format!("\"{}\"", t(1)), &format!("\"{}\"", t(0))));
    let err = d.start_refused();
    assert!(err.contains("already the path of tier[0]"), "{err}");
    // The extent file deleted (kept aside to restore).
    std::fs::write(&d.config, &full).unwrap();
    let f = d.tier_file(2);
    std::fs::rename(&f, d.dir.path().join("aside.dat")).unwrap();
    let err = d.start_refused();
    assert!(
        err.contains("tier 'tier2'") && err.contains("missing"),
        "{err}"
    );
    std::fs::rename(d.dir.path().join("aside.dat"), &f).unwrap();
    d.restart();
    verify(&d, "vol0", 8 * MIB, 2);
}

#[test]
fn renumbered_tiers_keep_their_data() {
    let mut d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    fill(&d, "vol0", 8 * MIB, 3);
    d.stop();
    // A new fastest tier in front: every old tier_id moves up by one.
    let fast = d.dir.path().join("fast");
    std::fs::create_dir_all(&fast).unwrap();
    d.edit_config(|c| {
        let c = c
            .replace("tier_id = 2", "tier_id = 3")
            .replace("tier_id = 1", "tier_id = 2")
            .replace("tier_id = 0", "tier_id = 1");
        let first = c.find("[[tier]]").unwrap();
        format!(
            "{}[[tier]]\ntier_id = 0\nname = \"fast\"\ncapacity = {}\ncost_per_gb = 1\npath = \"{}\"\n\
             performance_metrics = {{ read_latency_us = 10, write_latency_us = 10, bandwidth_mibps = 1000 }}\n{}",
            &c[..first],
            MIB,
            fast.display(),
            &c[first..]
        )
    });
    d.restart();
    verify(&d, "vol0", 8 * MIB, 3);
    assert!(d.log().contains("renumbered"), "{}", d.log());
}

#[test]
fn a_tier_holding_data_cannot_leave_the_config() {
    let mut d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    fill(&d, "vol0", 8 * MIB, 4);
    d.stop();
    d.edit_config(|c| {
        let start = c.find("[[tier]]\ntier_id = 2").unwrap();
        let end = c.find("[[volume]]").unwrap();
        format!("{}{}", &c[..start], &c[end..])
    });
    let err = d.start_refused();
    assert!(
        err.contains("tier 'tier2'") && err.contains("'vol0'") && err.contains("not in the config"),
        "{err}"
    );
    let (ok, _, err) = tierblk(&["check-config", "--config", d.config.to_str().unwrap()]);
    assert!(!ok && err.contains("tier 'tier2'"), "check-config: {err}");
}

#[test]
fn a_second_daemon_can_take_neither_the_tiers_nor_the_socket() {
    let d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    fill(&d, "vol0", MIB, 5);
    // Same tier directories, its own state directory.
    let other = d.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&d.config).unwrap();
    let state = d.dir.path().join("state").display().to_string();
    let sock = d.socket("vol0").display().to_string();
    std::fs::write(
        &other,
        text.replace(&state, &format!("{state}-2"))
            .replace(&sock, &format!("{sock}-2")),
    )
    .unwrap();
    let (ok, _, err) = tierblk(&["serve", "--config", other.to_str().unwrap()]);
    assert!(!ok && err.contains("in use by another process"), "{err}");
    // Its own state and tiers, the same socket.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = write_config(dir2.path(), &tiers3(), &[VolumeSpec::default()]);
    let text2 = std::fs::read_to_string(&cfg2).unwrap();
    let sock2 = dir2.path().join("vol0.sock").display().to_string();
    std::fs::write(&cfg2, text2.replace(&sock2, &sock)).unwrap();
    let (ok, _, err) = tierblk(&["serve", "--create-dirs", "--config", cfg2.to_str().unwrap()]);
    assert!(!ok && err.contains("served by another process"), "{err}");
    // The first daemon still serves its data.
    verify(&d, "vol0", MIB, 5);
}

#[test]
fn tier_files_store_and_socket_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &tiers3(), &[VolumeSpec::default()]);
    let sock = dir.path().join("vol0.sock");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec '{}' serve --create-dirs --config '{}'",
            env!("CARGO_BIN_EXE_tierblk"),
            config.display()
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !sock.exists() {
        assert!(t.elapsed().as_secs() < 20, "socket never appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let modes = [
        mode(&sock),
        mode(&dir.path().join("state/meta.redb")),
        mode(&dir.path().join("state")),
        mode(&dir.path().join("tier0/extents.dat")),
    ];
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(modes, [0o600, 0o600, 0o700, 0o600]);
}

#[test]
fn sighup_is_ignored_and_every_stop_removes_the_socket() {
    let mut d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    fill(&d, "vol0", MIB, 6);
    // SAFETY: kill(2) with a valid pid and signal number has no memory
    // effects in this process.
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    verify(&d, "vol0", MIB, 6);
    assert!(d.log().contains("SIGHUP"), "{}", d.log());
    assert!(d.stop().success());
    assert!(!d.socket("vol0").exists(), "socket removed on exit");
}

#[test]
fn check_config_runs_the_checks_serve_runs() {
    let mut d = Daemon::start(&tiers3(), &[VolumeSpec::default()]);
    fill(&d, "vol0", MIB, 8);
    d.stop();
    let cfg = d.config.to_str().unwrap().to_string();
    let full = std::fs::read_to_string(&cfg).unwrap();
    let (ok, _, err) = tierblk(&["check-config", "--config", &cfg]);
    assert!(ok, "{err}");
    let cases = [
        (
            "num_queues = 1",
            "num_queues = 1\nprediction_model = \"/no/such/model.bpk\"",
            "prediction_model",
        ),
        (
            "num_queues = 1",
            "num_queues = 1\ndomain_xml = \"/no/such/domain.xml\"",
            "domain_xml",
        ),
        (
            &format!("size = {}", 16 * MIB),
            &format!("size = {}", 8 * MIB),
            "shrinking",
        ),
    ];
    for (from, to, want) in cases {
        std::fs::write(&cfg, full.replace(from, to)).unwrap();
        let (ok, _, err) = tierblk(&["check-config", "--config", &cfg]);
        assert!(!ok && err.contains(want), "{want}: {err}");
        let err = d.start_refused();
        assert!(err.contains(want), "serve, {want}: {err}");
    }
}

#[test]
fn a_double_referenced_extent_refuses_only_the_volumes_involved() {
    let mut d = Daemon::start(&tiers3(), &[vol("a"), vol("b"), vol("c")]);
    for (i, v) in ["a", "b", "c"].iter().enumerate() {
        fill(&d, v, MIB, 10 + i as u64);
    }
    d.stop();
    {
        let store = tierblk::meta::Store::open(&d.dir.path().join("state")).unwrap();
        let a0 = store.chunk_map("a").unwrap()[0].1;
        store.apply_chunk_changes("b", &[(3, a0)]).unwrap();
    }
    d.restart_serving(&["c"]);
    verify(&d, "c", MIB, 12);
    let log = d.log();
    assert!(!d.socket("a").exists() && !d.socket("b").exists(), "{log}");
    assert!(
        log.contains("volume 'a' chunk 0") && log.contains("volume 'b' chunk 3"),
        "{log}"
    );
}

/// Numbers before `word` in the brain's epoch lines, summed.
fn epoch_sum(log: &str, word: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("moves planned"))
        .filter_map(|l| {
            let i = l.find(word)?;
            l[..i].trim_end().rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn a_failing_tier_fails_only_what_touches_it_and_never_switches_a_migration() {
    let pinned = |name, tier| VolumeSpec {
        name,
        extra: if tier == 1 {
            "tiering_enabled = false\npinned_tier = 1"
        } else {
            "tiering_enabled = false\npinned_tier = 2"
        },
        ..VolumeSpec::default()
    };
    // No epoch until phase 3, so c's chunks stay on tier 2 where written.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &tiers3(),
        &[pinned("a", 2), pinned("b", 1), vol("c")],
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("epoch_secs = 1\n", "epoch_secs = 600\n"),
    )
    .unwrap();
    let mut d = Daemon::start_at(dir, config);
    for (i, v) in ["a", "b", "c"].iter().enumerate() {
        fill(&d, v, 2 * MIB, 20 + i as u64);
    }
    d.stop();
    let full = std::fs::read_to_string(&d.config).unwrap();
    let with_fault = |tier: usize, fault: &str| {
        let at = full.find(&format!("name = \"tier{tier}\"")).unwrap();
        let end = at + full[at..].find("\n[[").unwrap();
        format!("{}\nfault = {fault}{}", &full[..end], &full[end..])
    };
    // Tier 1 (volume b's) fails every read, write and sync.
    std::fs::write(
        &d.config,
        with_fault(
            1,
            "{ reads = true, writes = true, syncs = true, kind = \"eio\" }",
        ),
    )
    .unwrap();
    d.restart();
    {
        let mut b = Client::connect(&d.socket("b"), 1, false).unwrap();
        let mut failed = 0;
        for i in 0..200u64 {
            failed += (b.read(0, (i % 32) * 64 * KIB, 4096).0 != 0) as u64;
        }
        assert_eq!(failed, 200, "every read of the failing tier fails");
        assert_ne!(b.write(0, 0, &pattern(4096, 99)), 0);
        assert_ne!(b.flush(0), 0, "b's unsynced write is on the failing tier");
    }
    // Volume a never touched tier 1: reads, writes and its flushes work.
    verify(&d, "a", 2 * MIB, 20);
    fill(&d, "a", MIB, 30);
    verify(&d, "c", 2 * MIB, 22);
    let log = d.log();
    let io_lines = log
        .lines()
        .filter(|l| l.contains("Input/output error"))
        .count();
    assert!(
        (1..30).contains(&io_lines),
        "201 failed requests: logged, but not each one ({io_lines} lines)"
    );
    d.stop();
    // Tier 2 (a's and c's) gives short reads: c's hot chunks cannot be
    // copied to tier 0, so no migration may switch.
    std::fs::write(
        &d.config,
        with_fault(2, "{ reads = true, kind = \"short\" }")
            .replace("epoch_secs = 600\n", "epoch_secs = 1\n"),
    )
    .unwrap();
    d.restart();
    {
        let mut c = Client::connect(&d.socket("c"), 1, false).unwrap();
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(3500) {
            for i in 0..8 {
                assert_ne!(c.read(0, i * 64 * KIB, 4096).0, 0, "short read must fail");
            }
        }
    }
    let log = d.log();
    assert!(
        epoch_sum(&log, " failed") > 0,
        "a promotion off the failing tier was tried:\n{log}"
    );
    d.stop();
    // Faults gone: every volume holds exactly what was acknowledged.
    std::fs::write(&d.config, &full).unwrap();
    d.restart();
    verify(&d, "a", MIB, 30);
    verify(&d, "b", 2 * MIB, 21);
    verify(&d, "c", 2 * MIB, 22);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// Whether user `nobody` (in group nogroup) can connect to `sock`.
fn nobody_can_connect(sock: &Path) -> bool {
    let st = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "python3", "-c"])
        .arg(format!(
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect('{}')",
            sock.display()
        ))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("runuser (this test runs as root, as scripts/test.sh does)");
    st.success()
}

#[test]
fn another_local_user_cannot_connect_unless_given_the_socket_group() {
    let dir = tempfile::tempdir().unwrap();
    // Let other users reach the socket's directory: only the socket's own
    // mode may keep them out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(dir.path(), &tiers3(), &[VolumeSpec::default()]);
    let mut d = Daemon::start_at(dir, config);
    let sock = d.socket("vol0");
    assert!(!nobody_can_connect(&sock), "user nobody reached the volume");
    d.stop();
    d.edit_config(|c| {
        c.replace(
            "epoch_secs = 1\n",
            "epoch_secs = 1\nsocket_mode = \"0660\"\nsocket_group = \"nogroup\"\n",
        )
    });
    d.restart();
    assert!(
        nobody_can_connect(&sock),
        "the socket group (QEMU's user) can connect"
    );
}
