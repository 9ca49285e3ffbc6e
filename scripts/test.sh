#!/usr/bin/env bash
# Runs every test of tierblk on a fresh Debian 12 machine: installs what the
# tests need, then lint, unit and whole-daemon tests.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s ===\n' "$*"; }

step "install test dependencies"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit tests and whole-daemon tests through blkio)"
cargo test
