/* cli.h - what the mambabyte commands share: one flag parser (a table per
   command; values parsed and range checked here, so every command rejects
   bad input the same way, exit 2) with the flags of the library's training
   options, threads, file tests, a JSON writer, and the NVML energy reader.  The clock is
   the library's mb_clock_seconds.  Included by main.c, bench.c and
   numerics_report.c (static functions, one copy per program). */
#ifndef MB_CLI_H
#define MB_CLI_H

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The program's name under mpirun, for the messages that tell how to resume. */
#ifdef MB_WITH_CUDA
#define MPI_BINARY "mambabyte_cuda_mpi"
#else
#define MPI_BINARY "mambabyte_mpi"
#endif

typedef enum { F_INT, F_NUM, F_STR, F_BOOL } flag_kind;
typedef struct {
    const char *name;   /* without the leading "--" */
    flag_kind kind;
    double lo, hi;      /* range for F_INT / F_NUM */
    const char *help;
    int given;
    double num;
    const char *str;
} flag;
#define FLAG_END {0, F_INT, 0, 0, 0, 0, 0, 0}

static flag *find_flag(flag *f, const char *name) {
    for (; f->name; f++)
        if (!strcmp(f->name, name)) return f;
    return NULL;
}

static void print_flags(FILE *out, const flag *f) {
    for (; f->name; f++) fprintf(out, "  --%-14s %s\n", f->name, f->help);
}

/* Edit distance (insertions, deletions, substitutions and swaps of two
   neighbours) between a and b, capped at 64 characters each. */
static int edit_distance(const char *a, const char *b) {
    int d[65][65], i, j, n = (int)strlen(a), m = (int)strlen(b);
    if (n > 64 || m > 64) return 64;
    for (i = 0; i <= n; i++) d[i][0] = i;
    for (j = 0; j <= m; j++) d[0][j] = j;
    for (i = 1; i <= n; i++)
        for (j = 1; j <= m; j++) {
            int best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best) best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[n][m];
}

/* The flag closest to a mistyped one (dashes stripped), or NULL when none is close. */
static const char *closest_flag(const flag *f, const char *typed) {
    const char *best = NULL;
    int best_d = 1 << 30;
    while (*typed == '-') typed++;
    for (; f->name; f++) {
        int d = edit_distance(typed, f->name);
        if (d <= 1 + (int)strlen(f->name) / 4 && d < best_d) best = f->name, best_d = d;
    }
    return best;
}

/* Returns 0 on success, 2 on a bad flag (after printing why and the usage).
   --help / -h print the usage and the flags and exit 0.  argv holds only the
   flags (no command name). */
static int parse_flags(const char *cmd, flag *flags, int argc, char **argv, const char *usage_line) {
    int i;
    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        flag *f;
        char *end;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: %s\n", usage_line);
            print_flags(stdout, flags);
            exit(0);
        }
        if (strncmp(a, "--", 2) != 0 || !(f = find_flag(flags, a + 2))) {
            const char *near = closest_flag(flags, a);
            fprintf(stderr, "mambabyte %s: unknown flag '%s'%s%s%s\nusage: %s\n", cmd, a, near ? "; did you mean --" : "",
                    near ? near : "", near ? "?" : "", usage_line);
            return 2;
        }
        f->given = 1;
        if (f->kind == F_BOOL) { f->num = 1; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "mambabyte %s: flag '%s' needs a value\nusage: %s\n", cmd, a, usage_line);
            return 2;
        }
        a = argv[++i];
        if (f->kind == F_STR) { f->str = a; continue; }
        errno = 0;
        f->num = strtod(a, &end);
        if (errno || end == a || *end || !isfinite(f->num) || f->num < f->lo || f->num > f->hi ||
            (f->kind == F_INT && f->num != floor(f->num))) {
            char range[96]; /* an integer range in full (up to 2^53), not as 1.04858e+06 */
            snprintf(range, sizeof range, f->kind == F_INT ? "an integer in [%.0f, %.0f]" : "a number in [%g, %g]", f->lo, f->hi);
            fprintf(stderr, "mambabyte %s: bad value '%s' for --%s (%s)\nusage: %s\n", cmd, a, f->name, range, usage_line);
            return 2;
        }
    }
    return 0;
}

static double flag_num(flag *flags, const char *name, double dflt) {
    flag *f = find_flag(flags, name);
    return f && f->given ? f->num : dflt;
}
static const char *flag_str(flag *flags, const char *name, const char *dflt) {
    flag *f = find_flag(flags, name);
    return f && f->given ? f->str : dflt;
}
static int flag_given(flag *flags, const char *name) {
    flag *f = find_flag(flags, name);
    return f && f->given;
}
/* 1 when the flag was given and its value is one of the NULL-terminated
   choices or it was not given; otherwise prints why and returns 0. */
static int flag_choice(const char *cmd, flag *flags, const char *name, const char *const *choices, const char *usage_line) {
    const char *v = flag_str(flags, name, NULL);
    int i;
    if (!v) return 1;
    for (i = 0; choices[i]; i++)
        if (!strcmp(v, choices[i])) return 1;
    fprintf(stderr, "mambabyte %s: --%s must be one of:", cmd, name);
    for (i = 0; choices[i]; i++) fprintf(stderr, " %s", choices[i]);
    fprintf(stderr, " (not '%s')\nusage: %s\n", v, usage_line);
    return 0;
}

/* OpenMP threads (1 without OpenMP), and --threads N. */
static int cli_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
static void cli_set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* The flags of the library's table of training options (mb_train_field_desc:
   names, ranges, help and defaults written once there) in out[0..MB_FIELD_COUNT). */
static void cli_train_field_flags(flag *out) {
    static const flag_kind kinds[] = {F_INT, F_NUM, F_BOOL, F_STR};
    static char help[MB_FIELD_COUNT][224];
    mb_train_settings s = mb_train_settings_default();
    mb_config c = mb_config_default();
    int f;
    for (f = 0; f < MB_FIELD_COUNT; f++) {
        const mb_train_field_info *i = mb_train_field_desc(f);
        double v = mb_train_field_get(&s, &c, f);
        if (i->kind == MB_KIND_SCHEDULE) snprintf(help[f], sizeof help[f], "%s (default %s)", i->help, v ? "time" : "step");
        else if (i->kind == MB_KIND_SWITCH || v < 0) snprintf(help[f], sizeof help[f], "%s", i->help);
        else snprintf(help[f], sizeof help[f], "%s (default %g)", i->help, v);
        out[f].name = i->flag + 2;
        out[f].kind = kinds[i->kind];
        out[f].lo = i->lo;
        out[f].hi = i->hi;
        out[f].help = help[f];
        out[f].given = 0;
    }
}

/* The given ones of those flags (flags[0..MB_FIELD_COUNT)) into s and c;
   returns their MB_GIVEN bits. */
static uint32_t cli_train_fields_apply(const flag *flags, mb_train_settings *s, mb_config *c) {
    uint32_t given = 0;
    int f;
    for (f = 0; f < MB_FIELD_COUNT; f++) {
        if (!flags[f].given) continue;
        given |= MB_GIVEN(f);
        mb_train_field_set(s, c, f, f == MB_FIELD_SCHEDULE ? !strcmp(flags[f].str, "time") : flags[f].num);
    }
    return given;
}

/* --threads N, where a command has it and it was given. */
static void cli_threads_flag(flag *flags) {
    if (flag_given(flags, "threads")) cli_set_threads((int)flag_num(flags, "threads", 1));
}
static int cli_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A flat JSON object of numbers, written to path: a non-finite value is
   null.  Integers print without a fraction.  Returns 0, or 1 after saying
   why on stderr. */
typedef struct { const char *key; double value; int decimals; } json_field;
static int cli_write_json(const char *cmd, const char *path, const json_field *f, int n) {
    FILE *out = fopen(path, "w");
    int i;
    if (!out) { fprintf(stderr, "mambabyte %s: cannot write %s: %s\n", cmd, path, strerror(errno)); return 1; }
    fprintf(out, "{\n");
    for (i = 0; i < n; i++) {
        fprintf(out, "  \"%s\": ", f[i].key);
        if (isfinite(f[i].value)) fprintf(out, "%.*f", f[i].decimals, f[i].value);
        else fprintf(out, "null");
        fprintf(out, "%s\n", i + 1 < n ? "," : "");
    }
    fprintf(out, "}\n");
    if (fclose(out) != 0) { fprintf(stderr, "mambabyte %s: cannot write %s\n", cmd, path); return 1; }
    return 0;
}

/* GPU energy from NVML, loaded at run time so no build depends on it. */
typedef struct {
    void *lib, *dev;
    int (*energy)(void *dev, unsigned long long *mj);
} nvml_energy;
static int nvml_open(nvml_energy *e) {
    int (*init)(void), (*handle)(unsigned int, void **);
    memset(e, 0, sizeof *e);
    if (!(e->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW))) return 0;
    *(void **)&init = dlsym(e->lib, "nvmlInit_v2");
    *(void **)&handle = dlsym(e->lib, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&e->energy = dlsym(e->lib, "nvmlDeviceGetTotalEnergyConsumption");
    if (!init || !handle || !e->energy || init() != 0 || handle(0, &e->dev) != 0) {
        dlclose(e->lib);
        memset(e, 0, sizeof *e);
        return 0;
    }
    return 1;
}
/* Millijoules since the driver loaded; 0 when not available. */
static int nvml_read_mj(nvml_energy *e, unsigned long long *mj) { return e->lib && e->energy(e->dev, mj) == 0; }

#endif /* MB_CLI_H */
