/* mbtest.h - the tiny test harness shared by every tests/test_*.c file.
   Each MBT_CHECK is one assertion; a failure prints where and why.  The
   driver (test.c) prints "N passed, M failed, K skipped" last and exits
   non-zero on any failure.  MBT_SKIP counts a check that cannot run here. */
#ifndef MBTEST_H
#define MBTEST_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif
extern int mbt_passed, mbt_failed, mbt_skipped;
#ifdef __cplusplus
}
#endif

#define MBT_CHECK(cond, ...)                                              \
    do {                                                                  \
        if (cond) {                                                       \
            mbt_passed++;                                                 \
        } else {                                                          \
            mbt_failed++;                                                 \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);          \
            fprintf(stderr, __VA_ARGS__);                                 \
            fprintf(stderr, "\n");                                        \
        }                                                                 \
    } while (0)

/* A check that cannot run here (say why): counted and printed, never silent. */
#define MBT_SKIP(suite, ...)                                              \
    do {                                                                  \
        mbt_skipped++;                                                    \
        printf("%s: SKIP ", suite);                                       \
        printf(__VA_ARGS__);                                              \
        printf("\n");                                                     \
        fflush(stdout);                                                   \
    } while (0)

/* Relative L2 distance ||a-b|| / max(||b||, tiny), in double. */
static inline double mbt_rel_l2(const float *a, const float *b, int64_t n) {
    double num = 0.0, den = 0.0;
    int64_t i;
    for (i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
}

/* Elementwise: both NaN, equal infinities, or |a-b| <= rtol*|b| + atol. */
static inline int mbt_close(double a, double b, double rtol, double atol) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    if (isinf(a) || isinf(b)) return a == b;
    return fabs(a - b) <= rtol * fabs(b) + atol;
}

/* Index of the first element that is not mbt_close, or -1. */
static inline int64_t mbt_first_mismatch(const float *a, const float *b, int64_t n, double rtol, double atol) {
    int64_t i;
    for (i = 0; i < n; i++)
        if (!mbt_close(a[i], b[i], rtol, atol)) return i;
    return -1;
}

/* Deterministic test RNG (splitmix64) so every test draws the same inputs. */
typedef struct { uint64_t s; } mbt_rng;
static inline uint64_t mbt_next(mbt_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline double mbt_uniform(mbt_rng *r) { return (double)(mbt_next(r) >> 11) * (1.0 / 9007199254740992.0); }
static inline double mbt_normal(mbt_rng *r) {
    double u1 = mbt_uniform(r), u2 = mbt_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
#endif
