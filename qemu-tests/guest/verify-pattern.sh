#!/bin/sh
# Verifies the pattern write-pattern.sh wrote.
. /tests/lib.sh
run_fio verify-pattern --rw=write --bs=64k --size=32m --verify=crc32c \
    --verify_only=1 --verify_fatal=1
