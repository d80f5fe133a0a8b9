#!/bin/sh
# Usage: tests/portable.sh NATIVE BASE V3  (NATIVE: ./mambabyte; BASE, V3: the
# build/portable/LEVEL folders of the x86-64 and x86-64-v3 builds, each with
# test_mambabyte and mambabyte)
# Each level the CPU can run: the kernel suite, with the AVX-512 scan pieces
# picked at run time and switched off (as on an older CPU); then the same short
# training run through the native build and each level: every step's loss and
# grad norm agree to 1e-5 (relative).
# Not bit for bit: without FMA in the baseline ISA the portable build's
# multiply-adds round twice.
set -e
native=$1 base=$2 v3=$3 dir=build/portable
cpu_has() { for f in "$@"; do grep -qw "$f" /proc/cpuinfo || return 1; done; }
kernels() { # LEVEL_DIR
    "$1/test_mambabyte" kernels
    MB_TEST_SCAN_AVX512=0 "$1/test_mambabyte" kernels
}
run() { # NAME BINARY [ENV]
    env $3 "$2" train --data data/sample.txt --steps 12 --batch 2 --ctx 64 --d-model 32 --n-layer 2 --eval-chars 0 \
        --out "$dir/pt_$1.bin" --log "$dir/pt_$1.csv" --log-every 1 > "$dir/pt_$1.out" 2>&1
}
kernels "$base"
run native "$native"
run dispatch "$base/mambabyte"
run baseline "$base/mambabyte" MB_TEST_SCAN_AVX512=0
levels="dispatch baseline"
if cpu_has avx2 fma; then
    kernels "$v3"
    run v3 "$v3/mambabyte"
    levels="$levels v3"
else
    echo "portable (v3): skipped, this CPU has no AVX2 and FMA"
fi
for v in $levels; do
    paste -d, "$dir/pt_native.csv" "$dir/pt_$v.csv" | awk -F, -v v="$v" '
        function bad(a, b) { return (a - b) ^ 2 > 1e-10 * (a ^ 2 + 1e-30) }
        NR > 1 { n++; if (bad($2, $8) || bad($4, $10)) { print "portable (" v "): step " $1 " loss " $8 " grad norm " $10 \
                 ", native " $2 " " $4; failed = 1; exit 1 } }
        END { if (failed) exit 1
              if (n != 12) { print "portable (" v "): " n " steps logged, expected 12"; exit 1 }
              print "portable (" v "): 12 steps match the native build" }'
done
