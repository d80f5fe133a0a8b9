#!/bin/sh
# The 972M shape (d_model 1792, 48 layers, RMSNorm, tied head, random
# weights): load + pack time, bytes/s and memory per precision and thread
# count, REPS rounds (default 3) alternating; one line per run (bench/stream_speed.c).
#   bench/m972.sh [REPS] [BYTES]     (writes build/m972.bin, 3.9 GB, once)
set -e
REPS=${1:-3} BYTES=${2:-40}
mkdir -p build
[ -f build/random_model ] || cc -O2 -march=native -fopenmp tools/random_model.c -o build/random_model -lm
[ -f build/m972.bin ] || build/random_model build/m972.bin 1792 48 rmsnorm
cc -O3 -march=native -fopenmp bench/stream_speed.c -o build/stream_speed -lm
r=0
while [ $r -lt "$REPS" ]; do
    for p in fp32 bf16 int8; do
        for t in 1 2; do build/stream_speed build/m972.bin $p $t "$BYTES"; done
    done
    r=$((r + 1))
done
