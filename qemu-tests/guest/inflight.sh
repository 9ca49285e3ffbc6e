#!/bin/sh
# Requests completed out of order while tierblk is killed: one fio process on
# one vCPU (so one virtqueue) writes 16 MiB at random, 4 KiB at a time (writes
# take 100 ms, emulated: longer than the guest leaves the writer unscheduled,
# so every kill finds writes in flight), beside a reader of never-written
# blocks (served at once, so it overtakes them), libaio with 16 requests in
# flight each. The host kills tierblk (SIGKILL) several times meanwhile;
# every request must complete exactly once and none may hang, and fio then
# reads back and verifies every block written.
echo "@@PHASE1-DONE"
. /tests/lib.sh
# The writer is run_fio's job; the reader a second job of the same fio.
run_fio inflight-out-of-order --ioengine=libaio --iodepth=16 --cpus_allowed=0 \
    --rw=randwrite --bs=4k --offset=0 --size=16m \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --randseed=7 \
    --name=hole-reader --filename=$DEV --ioengine=libaio --direct=1 \
    --iodepth=16 --cpus_allowed=0 --rw=randread --bs=4k --offset=64m --size=16m \
    --time_based=1 --runtime=20
