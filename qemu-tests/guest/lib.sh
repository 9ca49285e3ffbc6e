# Helpers for the guest test scripts (sourced).
DEV=/dev/vda

# run_fio NAME FIO-ARGS...: runs one fio job on $DEV, prints its JSON result
# between markers and "@@FIO NAME rc=N" (non-zero on any I/O or verify error).
run_fio() {
    name=$1
    shift
    echo "@@FIO-BEGIN $name"
    fio --name="$name" --filename=$DEV --ioengine=psync --direct=1 \
        --output-format=json "$@" > /tmp/fio.json 2> /tmp/fio.err
    rc=$?
    cat /tmp/fio.json
    echo "@@FIO-END $name"
    if [ -s /tmp/fio.err ]; then
        sed 's/^/@@FIO-STDERR /' /tmp/fio.err
    fi
    echo "@@FIO $name rc=$rc"
    return $rc
}

# check NAME CONDITION-RC: records a pass/fail line for a non-fio check.
check() {
    if [ "$2" -eq 0 ]; then echo "@@CHECK $1 ok"; else echo "@@CHECK $1 FAILED"; fi
}
