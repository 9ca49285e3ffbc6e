#!/bin/sh
# Writes a checksummed pattern over the first 32 MiB and flushes it.
. /tests/lib.sh
run_fio write-pattern --rw=write --bs=64k --size=32m --verify=crc32c \
    --do_verify=0 --end_fsync=1
