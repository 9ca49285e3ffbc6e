#!/usr/bin/env bash
# Runs every test of tierblk on a fresh Debian 12 machine (as root): installs
# what the tests need, then lint, unit and whole-daemon tests, the real-guest
# tests (QEMU + Linux + fio, libvirt) and the replay baseline check.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n=== %s ===\n' "$*"; }

step "install test dependencies"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit tests, virtqueue tests, whole-daemon and data-safety tests through blkio)"
cargo test

step "fault and chaos tests (kill -9 during migration, reconnects with I/O in flight, full tmpfs tier, full metadata filesystem)"
cargo test --test chaos -- --ignored --nocapture --test-threads=1

step "coverage-guided fuzzing: every parser of untrusted input, 10 s each under AFL++ (long runs: README.md, Fuzzing)"
scripts/fuzz.sh --seconds 10

step "real guests: QEMU (TCG) + Linux + fio through tierblk, restart, corruption, libvirt"
python3 qemu-tests/run.py

step "trace replay vs libCacheSim on the vendored traces (tierblk LRU must match libCacheSim LRU)"
sh benches/baselines.sh

step "benchmark harness smoke (a few seconds; full runs: benches/README.md)"
python3 benches/compare.py --smoke

step "migration-yield benchmark smoke (one 2 s round, debug build; full run: benches/README.md)"
cargo build --example migration_yield --example loadgen
target/debug/examples/migration_yield --secs 2 --rounds 1
