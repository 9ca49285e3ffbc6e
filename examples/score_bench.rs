//! Time to score one million chunks on one core: the shipped learned model
//! (feature extraction + burn forward pass) beside the EWMA baseline, both
//! measured in this run on the same synthetic history (every chunk active).
//!
//! Run: `cargo run --release --example score_bench` (or without `--release`:
//! dependencies, burn included, are optimised even in dev builds, this
//! crate's feature extraction is not).

use std::time::Instant;

use tierblk::{
    predict::{self, HeatMap},
    profile::{ChunkCounters, History},
};

const CHUNKS: usize = 1_000_000;
const EPOCHS: usize = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let counters = ChunkCounters::new(CHUNKS);
    let mut history = History::new(CHUNKS);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..EPOCHS {
        for c in 0..CHUNKS as u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for _ in 0..(x % 4) {
                counters.record_read(c, 4096);
            }
            if x.is_multiple_of(7) {
                counters.record_write(c, 4096);
            }
        }
        history.fold(&counters);
    }
    println!("{} active chunks of {CHUNKS}", history.active().len());
    for name in ["ewma", "learned", "gru"] {
        let mut p = match predict::load(name) {
            Ok(p) => p,
            Err(e) => {
                println!("{name}: skipped ({e})");
                continue;
            }
        };
        let mut heat = HeatMap::default();
        p.predict(&history, &mut heat); // warm-up (allocations)
        let t = Instant::now();
        p.predict(&history, &mut heat);
        let secs = t.elapsed().as_secs_f64();
        let mean = heat.scores().iter().map(|&s| s as f64).sum::<f64>() / CHUNKS as f64;
        println!(
            "{:<12} {secs:.3} s per 1M chunks (mean score {mean:.3})",
            p.name()
        );
    }
    Ok(())
}
