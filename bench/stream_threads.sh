#!/bin/sh
# Where splitting one stream's products over 2 threads starts to pay
# (MB__STREAM_OMP_MIN), one command, one table:   bench/stream_threads.sh [REPS]
# For random models between the default and the 972M shape: 1 thread as
# built (no product split below 2^20 weights) against 2 threads with every
# product split (-DMB__STREAM_OMP_MIN=0), alternating, medians of REPS (5).
# On a shared machine set OMP_WAIT_POLICY=passive (docs/BENCHMARKS.md: with
# the default spinning, a split product waits on a descheduled thread).
set -e
REPS=${1:-5}
mkdir -p build
cc -O3 -march=native -fopenmp bench/stream_speed.c -o build/stream_speed -lm
cc -O3 -march=native -fopenmp -DMB__STREAM_OMP_MIN=0 bench/stream_speed.c -o build/stream_speed_split -lm
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf "%-14s %12s %12s %10s %10s %8s\n" "d_model x L" "in_proj" "out_proj" "1 thread" "2 split" "ratio"
for shape in 192:4:400 256:8:200 384:8:100 512:8:60 640:8:40 768:8:30 1024:8:20 1280:8:12; do
    d=${shape%%:*} rest=${shape#*:}; l=${rest%%:*} n=${rest#*:}
    : > build/threads.1; : > build/threads.2
    r=0
    while [ $r -lt "$REPS" ]; do
        build/stream_speed "random:$d:$l" fp32 1 "$n" | sed 's/.*, \([0-9.]*\) bytes\/s.*/\1/' >> build/threads.1
        build/stream_speed_split "random:$d:$l" fp32 2 "$n" | sed 's/.*, \([0-9.]*\) bytes\/s.*/\1/' >> build/threads.2
        r=$((r + 1))
    done
    a=$(median < build/threads.1) b=$(median < build/threads.2)
    printf "%-14s %12d %12d %10.1f %10.1f %8.2f\n" "$d x $l" $((4 * d * d)) $((2 * d * d)) "$a" "$b" "$(echo "$b / $a" | bc -l)"
done
