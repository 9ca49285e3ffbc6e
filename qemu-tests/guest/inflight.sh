#!/bin/sh
# Requests completed out of order while tierblk is killed: one fio process on
# one vCPU (so one virtqueue) runs a verifying random writer (writes take 20 ms,
# emulated) beside a reader of never-written blocks (served at once), libaio
# with 16 requests in flight each. The host kills tierblk (SIGKILL) several
# times meanwhile; every write must complete exactly once (fio verifies every
# block at the end) and no request may hang.
echo "@@PHASE1-DONE"
echo "@@FIO-BEGIN inflight-out-of-order"
fio --output-format=json --ioengine=libaio --direct=1 --filename=/dev/vda \
    --iodepth=16 --cpus_allowed=0 --time_based=1 --runtime=40 \
    --name=writer --rw=randwrite --bs=4k --offset=0 --size=8m \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --randseed=7 \
    --name=hole-reader --rw=randread --bs=4k --offset=64m --size=16m \
    > /tmp/fio.json 2> /tmp/fio.err
rc=$?
cat /tmp/fio.json
echo "@@FIO-END inflight-out-of-order"
if [ -s /tmp/fio.err ]; then
    sed 's/^/@@FIO-STDERR /' /tmp/fio.err
fi
echo "@@FIO inflight-out-of-order rc=$rc"
