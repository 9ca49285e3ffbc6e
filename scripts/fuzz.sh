#!/usr/bin/env bash
# Builds the AFL++ targets in fuzz/ (cargo afl) and runs each in turn, one
# afl-fuzz instance at a time, from a fresh output folder fuzz/out/TARGET.
#   scripts/fuzz.sh --seconds N [TARGET...]   about N s per target; stops a
#                                              target at its first crash
#   scripts/fuzz.sh --execs N [TARGET...]     N executions per target
# Prints per target: executions, time, execs/s, corpus size, crashes and
# hangs; exits non-zero if any target crashed or hung (a hang that replays
# within 20 s outside AFL is reported, not counted; the inputs' paths are
# printed) or did not run. Needs cargo-afl and its AFL++ build
# (scripts/install-test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

targets_all=(config trace_normalized trace_msr model domain_xml tier_header request)
usage() { sed -n '2,12p' "$0" >&2; exit 2; }
(($# >= 2)) || usage
case "$1" in
    --seconds) stop=(-V "$2") ;;
    --execs) stop=(-E "$2") ;;
    *) usage ;;
esac
shift 2
targets=("$@")
((${#targets[@]})) || targets=("${targets_all[@]}")

# Seeds: the committed ones (fuzz/seeds/TARGET) plus the repository's own
# examples, so those are not kept twice.
seed() {
    local t=$1 dir=$2 f
    mkdir -p "$dir"
    if [[ -d fuzz/seeds/$t ]]; then cp fuzz/seeds/"$t"/* "$dir"/; fi
    case "$t" in
        config) cp config/*.toml "$dir"/ ;;
        trace_normalized)
            for f in traces/*.csv; do
                if [[ $f != *.msr.csv ]]; then head -n 16 "$f" >"$dir/$(basename "$f")"; fi
            done ;;
        trace_msr)
            for f in traces/*.msr.csv; do head -n 16 "$f" >"$dir/$(basename "$f")"; done ;;
        model) cp models/*.bpk "$dir"/ ;;
        domain_xml) cp libvirt/*.xml "$dir"/ ;;
    esac
}

# AFL++'s own dictionaries for the text formats.
afl_share=${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/AFLplusplus/dictionaries
dict() {
    local d=
    case "$1" in
        config) d=toml.dict ;;
        domain_xml) d=xml.dict ;;
        model | tier_header) d=json.dict ;;
    esac
    if [[ -n $d && -f $afl_share/$d ]]; then echo "-x $afl_share/$d"; fi
}

stat() { sed -n "s/^$1 *: *//p" "$2"; }

# `--target` keeps cargo afl's flags (instrumentation, one codegen unit) off
# the build scripts and proc macros, which run only at build time;
# AFL_OPT_LEVEL (cargo afl's, default here 1 instead of 3) roughly halves
# the build, most of which is burn (README.md, Fuzzing).
host=$(rustc -vV | sed -n 's/^host: //p')
export AFL_OPT_LEVEL=${AFL_OPT_LEVEL:-1}
echo "building the fuzz targets (cargo afl build --release, opt-level $AFL_OPT_LEVEL)"
start=$(date +%s)
(cd fuzz && cargo afl build --release --locked --target "$host")
echo "built in $(($(date +%s) - start)) s"

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
    AFL_NO_AFFINITY=1
# A short run is a check: the first crash ends it.
if [[ ${stop[0]} == -V ]]; then export AFL_BENCH_UNTIL_CRASH=1; fi

failed=0
rows=()
for t in "${targets[@]}"; do
    bin=$root/fuzz/target/$host/release/$t
    [[ -x $bin ]] || { echo "no fuzz target '$t' (known: ${targets_all[*]})" >&2; exit 2; }
    out=$root/fuzz/out/$t
    rm -rf "$out"
    seed "$t" "$out/in"
    echo "=== $t: afl-fuzz ${stop[*]}"
    # shellcheck disable=SC2046 # dict() gives zero or two words
    if ! cargo afl fuzz -i "$out/in" -o "$out" -m none -t 2000 "${stop[@]}" $(dict "$t") \
        -- "$bin" >"$out/afl.log" 2>&1; then
        tail -n 30 "$out/afl.log" >&2
        echo "$t: afl-fuzz failed (log: $out/afl.log)" >&2
        failed=1
        continue
    fi
    s=$out/default/fuzzer_stats
    execs=$(stat execs_done "$s")
    secs=$(stat run_time "$s")
    crashes=$(stat saved_crashes "$s")
    hangs=$(stat saved_hangs "$s")
    rows+=("$(printf '%-17s %12s %7s %9s %7s %8s %6s' "$t" "$execs" "$secs" \
        "$((execs / (secs > 0 ? secs : 1)))" "$(stat corpus_count "$s")" "$crashes" "$hangs")")
    for f in "$out"/default/crashes/id:*; do
        [[ -e $f ]] || continue
        echo "$t: crash input: $f" >&2
        failed=1
    done
    # On a loaded machine a case can miss AFL's 2 s now and then: a hang
    # counts only if it still runs after 20 s alone.
    for f in "$out"/default/hangs/id:*; do
        [[ -e $f ]] || continue
        if timeout 20 "$bin" <"$f" >/dev/null 2>&1 || (($? != 124)); then
            echo "$t: timed out under AFL but replays within 20 s (not a hang): $f" >&2
        else
            echo "$t: hang input: $f" >&2
            failed=1
        fi
    done
done

printf '\n%-17s %12s %7s %9s %7s %8s %6s\n' target executions secs execs/s corpus crashes hangs
printf '%s\n' "${rows[@]}"
if ((failed)); then
    echo "fuzzing FAILED: replay an input with fuzz/target/$host/release/TARGET < INPUT" >&2
    exit 1
fi
