#!/bin/sh
# Boot probe: reaching this point means the accelerator can boot the kernel.
echo "@@PROBE ok"
