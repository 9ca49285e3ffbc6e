//! The `tierblk` command line as a shell user runs it: printing into a pipe
//! whose reader is gone (`tierblk replay … | head`) or onto a full device.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

fn repo_file(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    assert!(
        p.is_file(),
        "{} not found (vendored traces: see traces/README.md)",
        p.display()
    );
    p
}

/// Printing commands with output big enough to be written in pieces.
fn printers() -> Vec<(&'static str, Vec<String>)> {
    let trace = repo_file("traces/msr_hm_0_excerpt.csv");
    let config = repo_file("config/default.toml");
    let replay = |json: bool| {
        let mut a: Vec<String> = [
            "replay",
            "--trace",
            &trace.display().to_string(),
            "--models",
            "ewma",
            "--compare",
            "none,lru",
            "--epoch-requests",
            "200",
            "--max-requests",
            "2000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if json {
            a.push("--json".into());
        }
        a
    };
    vec![
        ("replay table", replay(false)),
        ("replay --json", replay(true)),
        (
            "check-config",
            vec![
                "check-config".into(),
                "--config".into(),
                config.display().to_string(),
            ],
        ),
        ("--help", vec!["--help".into()]),
    ]
}

fn run(args: &[String], stdout: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tierblk"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("running tierblk")
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for (what, args) in printers() {
        // A pipe whose reader is already gone, as after `| head` read its
        // lines: the first write fails with EPIPE (Rust ignores SIGPIPE).
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = run(&args, writer.into());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "{what}: panicked on a broken pipe:\n{stderr}"
        );
        assert!(
            out.status.success(),
            "{what}: {:?} on a broken pipe:\n{stderr}",
            out.status
        );
    }
}

#[test]
fn other_write_errors_are_reported() {
    let full = Path::new("/dev/full");
    assert!(full.exists(), "this test needs /dev/full (Linux)");
    for (what, args) in printers() {
        if what == "--help" {
            continue; // clap prints help itself
        }
        let dev = std::fs::OpenOptions::new()
            .write(true)
            .open(full)
            .expect("opening /dev/full");
        let out = run(&args, dev.into());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "{what}: panicked on a full device:\n{stderr}"
        );
        assert_eq!(out.status.code(), Some(1), "{what}:\n{stderr}");
        assert!(
            stderr.contains("tierblk: writing to standard output") && stderr.contains("No space"),
            "{what}: error not reported:\n{stderr}"
        );
    }
}
