#!/bin/sh
# Phase 1 writes and flushes a pattern; phase 2 keeps writing elsewhere (and
# verifies what it wrote after each of its 6 loops) while the host kills and
# restarts tierblk; phase 3 verifies the phase-1 data. (A time-based fio
# write never reaches its verify phase: phase 2 is size-based with loops.)
. /tests/lib.sh
run_fio phase1-write --rw=write --bs=64k --size=16m --verify=crc32c \
    --do_verify=0 --end_fsync=1
echo "@@PHASE1-DONE"
run_fio phase2-write-through-restart --rw=randwrite --bs=16k --offset=32m \
    --size=32m --loops=6 --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --randseed=5
run_fio phase3-verify-flushed --rw=write --bs=64k --size=16m --verify=crc32c \
    --verify_only=1 --verify_fatal=1
