//! Load generator for vhost-user-blk backends (tierblk, qemu-storage-daemon,
//! any other), built on libblkio's Rust core as a real client
//! (`tierblk::client`, shared with `tierblk play` and the tests): one thread
//! and one virtqueue per queue, a fixed queue depth per queue, random or
//! sequential offsets. Reports IOPS, MiB/s, latency percentiles
//! (hdrhistogram) and the backend process's CPU time per I/O.
//!
//! Usage: loadgen --socket PATH [--op randread|randwrite|read|write|mixed]
//!        [--bs BYTES] [--qd N] [--queues N] [--secs S] [--size BYTES]
//!        [--pid BACKEND_PID] [--json] [--once]
//! `--once` (read/write only): each queue covers its share of the device
//! exactly once and stops, e.g. to prefill a volume.

use std::{
    mem::MaybeUninit,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use blkio::{Blkioq, Completion, ReqFlags};
use hdrhistogram::Histogram;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    RandRead,
    RandWrite,
    Read,
    Write,
    /// 70% random reads, 30% random writes.
    Mixed,
}

#[derive(Debug, Clone)]
struct Args {
    socket: String,
    op: Op,
    bs: usize,
    qd: usize,
    queues: usize,
    secs: f64,
    size: Option<u64>,
    pid: Option<u32>,
    json: bool,
    /// Sequential ops only: cover the device exactly once, then stop.
    once: bool,
}

const USAGE: &str = "usage: loadgen --socket PATH [--op randread|randwrite|read|write|mixed] \
    [--bs BYTES] [--qd N] [--queues N] [--secs S] [--size BYTES] [--pid BACKEND_PID] [--json] [--once]

A vhost-user-blk client (libblkio's virtio-blk-vhost-user driver): one thread
and virtqueue per queue, each keeping --qd requests of --bs bytes in flight
for --secs seconds (defaults: randread, 4096, 32, 1 queue, 10 s). Prints IOPS,
MiB/s, latency mean/p50/p99/p99.9 and, with --pid, the backend process's CPU
time per I/O; --json prints the same as JSON. --once (read/write only) covers
the device exactly once and stops.";

fn usage(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    eprintln!("{USAGE}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        socket: String::new(),
        op: Op::RandRead,
        bs: 4096,
        qd: 32,
        queues: 1,
        secs: 10.0,
        size: None,
        pid: None,
        json: false,
        once: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{k} needs a value")))
        };
        let num = |s: String| -> u64 {
            s.parse()
                .unwrap_or_else(|_| usage(&format!("{k}: '{s}' is not a number")))
        };
        match k.as_str() {
            "--socket" => a.socket = v(),
            "--op" => {
                a.op = match v().as_str() {
                    "randread" => Op::RandRead,
                    "randwrite" => Op::RandWrite,
                    "read" => Op::Read,
                    "write" => Op::Write,
                    "mixed" => Op::Mixed,
                    o => usage(&format!("unknown op '{o}'")),
                }
            }
            "--bs" => a.bs = num(v()) as usize,
            "--qd" => a.qd = num(v()) as usize,
            "--queues" => a.queues = num(v()) as usize,
            "--secs" => {
                a.secs = v()
                    .parse()
                    .unwrap_or_else(|_| usage("--secs: not a number"))
            }
            "--size" => a.size = Some(num(v())),
            "--pid" => a.pid = Some(num(v()) as u32),
            "--json" => a.json = true,
            "--once" => a.once = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            // `cargo bench` passes --bench to harness-less benches.
            "--bench" => {}
            _ => usage(&format!("unknown argument '{k}'")),
        }
    }
    if a.socket.is_empty() {
        usage("--socket is required");
    }
    if a.bs == 0 || !a.bs.is_multiple_of(512) || a.qd == 0 || a.queues == 0 {
        usage("--bs must be a non-zero multiple of 512; --qd and --queues at least 1");
    }
    a
}

/// utime + stime of a process, in microseconds.
fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000 / hz)
}

struct QueueResult {
    ios: u64,
    bytes: u64,
    errors: u64,
    hist: Histogram<u64>,
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn run_queue(
    mut q: Blkioq,
    q_index: usize,
    buf: usize,
    a: &Args,
    size: u64,
    stop: &AtomicBool,
) -> QueueResult {
    let bs = a.bs as u64;
    let blocks = (size / bs).max(1);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((q_index as u64 + 1) << 32);
    // Sequential streams: each queue walks its own share of the disk.
    let share = blocks / a.queues as u64;
    let first = share * q_index as u64;
    let last = if q_index + 1 == a.queues {
        blocks
    } else {
        first + share
    };
    let mut seq = first;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let mut started = vec![Instant::now(); a.qd];
    let (mut ios, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    // Returns false when there is nothing more to submit (--once).
    let mut submit = |q: &mut Blkioq, slot: usize, started: &mut [Instant]| -> bool {
        let (write, off) = match a.op {
            Op::RandRead => (false, xorshift(&mut rng) % blocks),
            Op::RandWrite => (true, xorshift(&mut rng) % blocks),
            Op::Mixed => (xorshift(&mut rng) % 10 < 3, xorshift(&mut rng) % blocks),
            Op::Read | Op::Write => {
                if a.once && seq >= last {
                    return false;
                }
                let off = seq;
                seq += 1;
                if seq >= last && !a.once {
                    seq = first;
                }
                (a.op == Op::Write, off)
            }
        };
        let p = buf + slot * a.bs;
        started[slot] = Instant::now();
        if write {
            q.write(off * bs, p as *const u8, a.bs, slot, ReqFlags::empty());
        } else {
            q.read(off * bs, p as *mut u8, a.bs, slot, ReqFlags::empty());
        }
        true
    };
    let mut inflight = 0;
    for slot in 0..a.qd {
        if submit(&mut q, slot, &mut started) {
            inflight += 1;
        }
    }
    let mut comps: Vec<MaybeUninit<Completion>> =
        (0..a.qd).map(|_| MaybeUninit::uninit()).collect();
    while inflight > 0 {
        let mut t = Duration::from_secs(30);
        let n = match q.do_io(&mut comps, 1, Some(&mut t), None) {
            Ok(0) | Err(_) => {
                errors += inflight as u64;
                break;
            }
            Ok(n) => n,
        };
        let now = Instant::now();
        let stopping = stop.load(Ordering::Relaxed);
        for c in &comps[..n] {
            // SAFETY: do_io initialised the first `n` completions.
            let c = unsafe { c.assume_init_ref() };
            let slot = c.user_data;
            if c.ret != 0 {
                errors += 1;
            } else {
                ios += 1;
                bytes += bs;
                let ns = now.duration_since(started[slot]).as_nanos() as u64;
                let _ = hist.record(ns.max(1));
            }
            if stopping || !submit(&mut q, slot, &mut started) {
                inflight -= 1;
            }
        }
    }
    QueueResult {
        ios,
        bytes,
        errors,
        hist,
    }
}

fn main() -> ExitCode {
    let a = parse_args();
    let client = match tierblk::client::Client::connect(
        std::path::Path::new(&a.socket),
        a.queues,
        false,
        a.qd * a.bs * a.queues,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let capacity = client.capacity().unwrap_or(0);
    // `_blkio` keeps the device open while the queue threads run.
    let (_blkio, queues, region) = client.into_parts();
    // Fill the buffers so writes carry data, not zeros.
    // SAFETY: the region is ours, `len` bytes, and no request is in flight.
    let mem = unsafe { std::slice::from_raw_parts_mut(region.addr as *mut u8, region.len) };
    let mut x = 7u64;
    for b in mem.iter_mut() {
        *b = xorshift(&mut x) as u8;
    }
    let size = a.size.unwrap_or(capacity).min(capacity);
    if size < a.bs as u64 {
        eprintln!("loadgen: device of {capacity} bytes is smaller than one block");
        return ExitCode::FAILURE;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = a.pid.and_then(cpu_us);
    let t0 = Instant::now();
    let handles: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let a = a.clone();
            let stop = stop.clone();
            let buf = region.addr + i * a.qd * a.bs;
            std::thread::spawn(move || run_queue(q, i, buf, &a, size, &stop))
        })
        .collect();
    if a.once {
        // The queues stop by themselves after one pass.
    } else {
        std::thread::sleep(Duration::from_secs_f64(a.secs));
        stop.store(true, Ordering::Relaxed);
    }
    let results: Vec<QueueResult> = handles
        .into_iter()
        .map(|h| h.join().expect("queue thread"))
        .collect();
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = a.pid.and_then(cpu_us);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let (mut ios, mut bytes, mut errors) = (0, 0, 0);
    let mut per_queue = Vec::new();
    for r in &results {
        hist.add(&r.hist).expect("same histogram bounds");
        ios += r.ios;
        bytes += r.bytes;
        errors += r.errors;
        per_queue.push(r.ios as f64 / elapsed);
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let cpu_per_io = match (cpu0, cpu1) {
        (Some(a), Some(b)) if ios > 0 => Some((b - a) as f64 / ios as f64),
        _ => None,
    };
    let iops = ios as f64 / elapsed;
    let mibps = bytes as f64 / elapsed / (1 << 20) as f64;
    if a.json {
        println!(
            "{{\"op\":\"{:?}\",\"bs\":{},\"qd\":{},\"queues\":{},\"secs\":{:.3},\"ios\":{},\"errors\":{},\
             \"iops\":{:.1},\"mibps\":{:.2},\"per_queue_iops\":[{}],\"lat_us\":{{\"mean\":{:.2},\"p50\":{:.2},\
             \"p99\":{:.2},\"p999\":{:.2}}},\"backend_cpu_us_per_io\":{}}}",
            a.op,
            a.bs,
            a.qd,
            a.queues,
            elapsed,
            ios,
            errors,
            iops,
            mibps,
            per_queue.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(","),
            hist.mean() / 1000.0,
            us(0.5),
            us(0.99),
            us(0.999),
            cpu_per_io.map_or("null".to_string(), |v| format!("{v:.3}"))
        );
    } else {
        println!(
            "{:?} bs={} qd={} queues={}: {:.0} IOPS, {:.1} MiB/s, lat us mean {:.1} p50 {:.1} p99 {:.1} p99.9 {:.1}, \
             backend CPU {} us/IO, {} errors",
            a.op,
            a.bs,
            a.qd,
            a.queues,
            iops,
            mibps,
            hist.mean() / 1000.0,
            us(0.5),
            us(0.99),
            us(0.999),
            cpu_per_io.map_or("?".to_string(), |v| format!("{v:.2}")),
            errors
        );
    }
    if errors > 0 {
        eprintln!("loadgen: {errors} requests failed");
        return ExitCode::FAILURE;
    }
    if a.once && ios != size / a.bs as u64 {
        eprintln!(
            "loadgen: --once covered {ios} of {} blocks",
            size / a.bs as u64
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
