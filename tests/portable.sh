#!/bin/sh
# Usage: tests/portable.sh NATIVE PORTABLE [V3]  (./mambabyte builds)
# The same short training run through the native build, the portable build
# (AVX-512 scan pieces picked at run time) and the portable build with them
# switched off (and the x86-64-v3 build, where the CPU has AVX2): every step's
# loss and grad norm agree to 1e-5 (relative).
# Not bit for bit: without FMA in the baseline ISA the portable build's
# multiply-adds round twice.
set -e
native=$1 portable=$2 v3=${3:-} dir=build/portable
run() { # NAME BINARY [ENV]
    env $3 "$2" train --data data/sample.txt --steps 12 --batch 2 --ctx 64 --d-model 32 --n-layer 2 --eval-chars 0 \
        --out "$dir/pt_$1.bin" --log "$dir/pt_$1.csv" --log-every 1 > "$dir/pt_$1.out" 2>&1
}
run native "$native"
run dispatch "$portable"
run baseline "$portable" MB_TEST_SCAN_AVX512=0
levels="dispatch baseline"
if [ -n "$v3" ] && grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
    run v3 "$v3"
    levels="$levels v3"
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
