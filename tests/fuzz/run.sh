#!/bin/sh
# tests/fuzz/run.sh - build the libFuzzer harnesses and fuzz each one.
#
#   sh tests/fuzz/run.sh [SECONDS]     (default 60 per harness; `make fuzz`)
#
# For each harness (checkpoint, utf8_eval, cli_args, safetensors):
#   1. build build/fuzz/fuzz_<name> with clang -fsanitize=fuzzer,address,undefined
#   2. replay tests/fuzz/regressions/<name>/* (every crash found so far) and
#      the seed corpus tests/fuzz/corpus/<name>/: any failure fails the run
#   3. fuzz for SECONDS (-max_total_time), starting from the seed corpus plus
#      the working corpus build/fuzz/corpus/<name>/ (kept between runs, not
#      in the repository)
# A crash, leak, timeout or out-of-memory input is copied into
# tests/fuzz/regressions/<name>/ and printed; the script then exits 1.
# Environment: FUZZ_CC (default clang), FUZZ_HARNESSES (default all four).
set -u
cd "$(dirname "$0")/../.." || exit 2

SECONDS_EACH=${1:-${FUZZ_SECONDS:-60}}
CC=${FUZZ_CC:-clang}
HARNESSES=${FUZZ_HARNESSES:-"checkpoint utf8_eval cli_args safetensors"}
CFLAGS="-std=c99 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
# ASan/UBSan/LSan findings are failures; one input may take at most 10 s.
COMMON="-timeout=10 -rss_limit_mb=2048 -print_final_stats=1"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

case $SECONDS_EACH in
    ''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
if ! command -v "$CC" >/dev/null 2>&1; then
    echo "fuzz: $CC not found (install clang and libclang-rt-14-dev, or set FUZZ_CC)" >&2
    exit 2
fi

mkdir -p build/fuzz
failed=0
summary=""

show_input() { # file: print it as hex and as text
    echo "---- $1 ($(wc -c < "$1") bytes)"
    od -A d -t x1z "$1" | head -16
}

for h in $HARNESSES; do
    bin=build/fuzz/fuzz_$h
    log=build/fuzz/$h.log
    art=build/fuzz/artifacts/$h/
    extra=""
    [ "$h" = cli_args ] && extra="-close_fd_mask=3" # the CLI's own output
    echo "== fuzz_$h: build"
    if ! $CC $CFLAGS -I. "tests/fuzz/fuzz_$h.c" -o "$bin" -lm -ldl; then
        echo "fuzz: building fuzz_$h failed (is libclang-rt-14-dev installed?)" >&2
        exit 2
    fi
    rm -rf "$art"
    mkdir -p "$art" "build/fuzz/corpus/$h" "tests/fuzz/regressions/$h"

    # regressions and seeds: every file once
    inputs=$(find "tests/fuzz/regressions/$h" "tests/fuzz/corpus/$h" -type f ! -name '.*' | sort)
    if [ -n "$inputs" ]; then
        echo "== fuzz_$h: replay $(echo "$inputs" | wc -l) regression and seed inputs"
        # shellcheck disable=SC2086
        if ! "$bin" $extra -runs=1 $inputs > "$log.replay" 2>&1; then
            echo "fuzz_$h: a regression or seed input FAILS:" >&2
            grep -E "Running: |ERROR|runtime error|SUMMARY" "$log.replay" | tail -8 >&2
            failed=1
            summary="$summary
  $h: replay of tests/fuzz/regressions/$h or tests/fuzz/corpus/$h failed (see $log.replay)"
            continue
        fi
    fi

    echo "== fuzz_$h: ${SECONDS_EACH} s"
    # shellcheck disable=SC2086
    "$bin" $extra $COMMON -max_total_time="$SECONDS_EACH" -artifact_prefix="$art" \
        "build/fuzz/corpus/$h" "tests/fuzz/corpus/$h" > "$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
    found=$(find "$art" -type f | sort)
    if [ $rc -ne 0 ] || [ -n "$found" ]; then
        failed=1
        echo "fuzz_$h: FAILED (exit $rc) after ${runs:-?} executions" >&2
        grep -E "ERROR|runtime error|SUMMARY|==[0-9]+==" "$log" | head -12 >&2
        for f in $found; do
            dest="tests/fuzz/regressions/$h/$(basename "$f")"
            cp "$f" "$dest"
            echo "fuzz_$h: crash input saved as $dest" >&2
            show_input "$dest" >&2
        done
        summary="$summary
  $h: FAILED after ${runs:-?} executions; inputs in tests/fuzz/regressions/$h/, log $log"
    else
        summary="$summary
  $h: ok, ${runs:-?} executions in ${SECONDS_EACH} s, ${cov:-cov: ?}, corpus $(find "build/fuzz/corpus/$h" -type f | wc -l) files"
    fi
done

echo "== fuzz summary:$summary"
exit $failed
