//! Test harness: starts the real `tierblk` binary on a temporary config and
//! drives it with a real vhost-user-blk client (libblkio's Rust core).

#![allow(dead_code)]

use std::{
    mem::MaybeUninit,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use blkio::{Completion, ReqFlags};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// A tier of the test config: (capacity bytes, emulate section or "").
pub struct TierSpec {
    pub capacity: u64,
    pub emulate: &'static str,
}

pub struct VolumeSpec {
    pub name: &'static str,
    pub size: u64,
    pub chunk: u64,
    pub queues: u16,
    pub read_only: bool,
    pub extra: &'static str,
}

impl Default for VolumeSpec {
    fn default() -> Self {
        Self {
            name: "vol0",
            size: 16 * MIB,
            chunk: 64 * KIB,
            queues: 1,
            read_only: false,
            extra: "",
        }
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Option<Child>,
}

/// Tiers of these capacities, no emulation, fastest first.
pub fn tiers(capacities: &[u64]) -> Vec<TierSpec> {
    capacities
        .iter()
        .map(|&capacity| TierSpec {
            capacity,
            emulate: "",
        })
        .collect()
}

pub fn tiers3() -> Vec<TierSpec> {
    tiers(&[4 * MIB, 4 * MIB, 32 * MIB])
}

pub fn write_config(dir: &Path, tiers: &[TierSpec], vols: &[VolumeSpec]) -> PathBuf {
    let mut s = format!(
        "[daemon]\nstate_dir = \"{}\"\nepoch_secs = 1\n",
        dir.join("state").display()
    );
    for (i, t) in tiers.iter().enumerate() {
        s += &format!(
            "[[tier]]\ntier_id = {i}\nname = \"tier{i}\"\ncapacity = {}\ncost_per_gb = {}\npath = \"{}\"\n\
             performance_metrics = {{ read_latency_us = {}, write_latency_us = {}, bandwidth_mibps = 100 }}\n{}\n",
            t.capacity,
            0.2 / (i + 1) as f64,
            dir.join(format!("tier{i}")).display(),
            100 * (i + 1),
            100 * (i + 1),
            if t.emulate.is_empty() { String::new() } else { format!("emulate = {}", t.emulate) },
        );
    }
    for v in vols {
        s += &format!(
            "[[volume]]\nname = \"{}\"\nsize = {}\nchunk_size = {}\nsocket = \"{}\"\nnum_queues = {}\nread_only = {}\n{}\n",
            v.name,
            v.size,
            v.chunk,
            dir.join(format!("{}.sock", v.name)).display(),
            v.queues,
            v.read_only,
            v.extra
        );
    }
    let p = dir.join("tierblk.toml");
    std::fs::write(&p, s).unwrap();
    p
}

impl Daemon {
    pub fn start(tiers: &[TierSpec], vols: &[VolumeSpec]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), tiers, vols);
        let mut d = Self {
            dir,
            config,
            child: None,
        };
        d.restart();
        d
    }

    /// Starts the daemon on a config already written into `dir`.
    pub fn start_at(dir: tempfile::TempDir, config: PathBuf) -> Self {
        let mut d = Self::not_started(dir, config);
        d.restart();
        d
    }

    /// A daemon of this config, not started (for `start_refused`).
    pub fn not_started(dir: tempfile::TempDir, config: PathBuf) -> Self {
        Self {
            dir,
            config,
            child: None,
        }
    }

    pub fn socket(&self, volume: &str) -> PathBuf {
        self.dir.path().join(format!("{volume}.sock"))
    }

    pub fn tier_file(&self, tier: usize) -> PathBuf {
        self.dir.path().join(format!("tier{tier}/extents.dat"))
    }

    /// Starts (again) the daemon on the same config and state; waits for
    /// every volume's socket.
    pub fn restart(&mut self) {
        let sockets: Vec<PathBuf> = std::fs::read_to_string(&self.config)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("socket = \""))
            .map(|l| PathBuf::from(l.trim_end_matches('"')))
            .collect();
        for s in &sockets {
            let _ = std::fs::remove_file(s);
        }
        self.spawn_and_wait(&sockets);
    }

    /// Starts the daemon expecting it to refuse (exit non-zero within 30 s);
    /// returns what it printed.
    pub fn start_refused(&mut self) -> String {
        assert!(self.child.is_none(), "daemon already running");
        let out = self.dir.path().join("refused.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tierblk"))
            .args(["serve", "--create-dirs", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&out).unwrap()))
            .spawn()
            .expect("start tierblk");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tierblk started instead of refusing:\n{}",
                    std::fs::read_to_string(&out).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(
            !status.success(),
            "tierblk exited 0 instead of refusing:\n{err}"
        );
        err
    }

    /// Starts the daemon and waits only for the sockets of `served`.
    pub fn restart_serving(&mut self, served: &[&str]) {
        let sockets: Vec<PathBuf> = served.iter().map(|v| self.socket(v)).collect();
        self.spawn_and_wait(&sockets);
    }

    fn spawn_and_wait(&mut self, sockets: &[PathBuf]) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tierblk"))
            .args(["serve", "--create-dirs", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start tierblk");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sockets.iter().all(|s| s.exists()) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tierblk exited early ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sockets never appeared:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites the config file through `f`.
    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, f(text)).unwrap();
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        // SAFETY: kill(2) with a valid pid and signal number has no memory
        // effects in this process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The library's vhost-user-blk client (8 MiB buffer) with the tests'
/// one-request-at-a-time helpers.
pub struct Client(tierblk::client::Client);

impl std::ops::Deref for Client {
    type Target = tierblk::client::Client;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Client {
    pub fn connect(
        socket: &Path,
        queues: i32,
        read_only: bool,
    ) -> Result<Self, tierblk::client::Error> {
        tierblk::client::Client::connect(socket, queues as usize, read_only, 8 * MIB as usize)
            .map(Self)
    }

    pub fn capacity(&self) -> u64 {
        self.0.capacity().unwrap()
    }

    pub fn buf_mut(&mut self, len: usize) -> &mut [u8] {
        self.0.buf_mut(0, len)
    }

    /// Waits for `n` completions on queue `q`; returns their ret values.
    pub fn wait(&mut self, q: usize, n: usize) -> Vec<i32> {
        let mut out = Vec::new();
        let mut comps: Vec<MaybeUninit<Completion>> =
            (0..n).map(|_| MaybeUninit::uninit()).collect();
        while out.len() < n {
            let mut t = Duration::from_secs(30);
            let got = self.queues[q]
                .do_io(&mut comps[..n - out.len()], 1, Some(&mut t), None)
                .expect("do_io");
            assert!(got > 0, "request timed out");
            for c in &comps[..got] {
                // SAFETY: do_io initialised the first `got` completions.
                out.push(unsafe { c.assume_init_ref() }.ret);
            }
        }
        out
    }

    pub fn write(&mut self, q: usize, offset: u64, data: &[u8]) -> i32 {
        self.buf_mut(data.len()).copy_from_slice(data);
        let p = self.ptr(0);
        self.queues[q].write(offset, p, data.len(), 0, ReqFlags::empty());
        self.wait(q, 1)[0]
    }

    pub fn read(&mut self, q: usize, offset: u64, len: usize) -> (i32, Vec<u8>) {
        let p = self.ptr(0);
        self.buf_mut(len).fill(0xee);
        self.queues[q].read(offset, p, len, 0, ReqFlags::empty());
        let r = self.wait(q, 1)[0];
        (r, self.buf_mut(len).to_vec())
    }

    pub fn flush(&mut self, q: usize) -> i32 {
        self.queues[q].flush(0, ReqFlags::empty());
        self.wait(q, 1)[0]
    }

    pub fn discard(&mut self, q: usize, offset: u64, len: u64) -> i32 {
        self.queues[q].discard(offset, len, 0, ReqFlags::empty());
        self.wait(q, 1)[0]
    }

    pub fn write_zeroes(&mut self, q: usize, offset: u64, len: u64, unmap: bool) -> i32 {
        let flags = if unmap {
            ReqFlags::empty()
        } else {
            ReqFlags::NO_UNMAP
        };
        self.queues[q].write_zeroes(offset, len, 0, flags);
        self.wait(q, 1)[0]
    }
}

/// Runs `tierblk ARGS` (killed after 30 s: a `serve` that should have
/// refused); returns (success, stdout, stderr).
pub fn tierblk(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("timeout")
        .args(["30", env!("CARGO_BIN_EXE_tierblk")])
        .args(args)
        .output()
        .expect("run tierblk");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
