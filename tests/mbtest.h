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
/* The whole file, NUL-terminated (free it); *len its size when len is not
   NULL; NULL when it cannot be read. */
static inline char *mbt_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) { fclose(f); return NULL; }
    buf = (char *)malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    if (buf) buf[n] = '\0';
    if (buf && len) *len = (size_t)n;
    fclose(f);
    return buf;
}
#ifndef __cplusplus
/* ------------------------------------------------ processes and files
   (C only: the CLI tests in test.c; POSIX, after mambabyte.h set it up) */
#include <errno.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* system(cmd): the exit status, or 128 + the signal, or -1. */
static inline int mbt_run(const char *cmd) {
    int rc = system(cmd);
    return rc == -1 ? -1 : (WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc));
}

/* Starts `sh -c "exec CMD"` in the background: the pid is CMD's own. */
static inline pid_t mbt_spawn(const char *cmd) {
    char full[4096];
    pid_t pid;
    snprintf(full, sizeof full, "exec %s", cmd);
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", full, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Waits for pid; the exit status, or 128 + the signal. */
static inline int mbt_wait(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* 1 and the status in *rc when pid has ended, 0 while it runs. */
static inline int mbt_poll(pid_t pid, int *rc) {
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r != pid) return 0;
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return 1;
}

static inline void mbt_sleep_ms(double ms) {
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000.0);
    ts.tv_nsec = (long)((ms - 1000.0 * (double)ts.tv_sec) * 1e6);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* The file (up to its first NUL byte) contains needle. */
static inline int mbt_file_contains(const char *path, const char *needle) {
    char *buf = mbt_slurp(path, NULL);
    int found;
    if (!buf) return 0;
    found = strstr(buf, needle) != NULL;
    free(buf);
    return found;
}

static inline int mbt_files_equal(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = mbt_slurp(a, &na), *y = mbt_slurp(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}
#endif
#endif
