/* plot.c - `mambabyte plot LOG.csv -o FILE.svg`: a picture of training.

   Reads the CSV log that `mambabyte train --log` writes and draws the
   training loss against the step as a self-contained SVG (800x450 viewBox,
   no external fonts, scripts or images), with the held-out character
   accuracy on a second axis when the log has any.

   main.c includes this file after the implementation of mambabyte.h and
   calls mb_cli_plot(argc, argv) with argv[0] == "plot".  Entry points:

     static int mb_plot_write_svg(const char *csv_path, const char *svg_path,
                                  char *err, size_t errn);
         0 on success; otherwise non-zero with a one-line reason in err.
     static int mb_cli_plot(int argc, char **argv);
         0 done (also --help); 1 the log could not be read or the picture
         not written ("mambabyte plot: <reason>" on stderr); 2 bad usage.

   The CSV (the header names the columns; they are found by name, so their
   order and any extra columns do not matter):
     step,loss,lr,grad_norm,seconds                     (the trainer today)
     step,loss,lr,grad_norm,seconds,val_char_accuracy   (with evaluation)
   Only step and loss are required.  val_char_accuracy is empty on rows
   where it was not measured; a row may also carry only an evaluation (an
   empty loss).  A file without a header is read with the column order
   above.  A UTF-8 byte order mark and CRLF line ends are accepted.

   Choices:
     * Missing or unreadable file: an error.  An empty file, a header with no
       rows, or rows that are all unusable: an empty chart with a note
       ("no data rows yet"), exit 0, so a plot taken while a run is starting
       still works.  A non-empty file with neither a header nor one usable
       row is an error ("not a training log").
     * Unusable lines (garbage, a step that is not a finite number, lines
       over 4 KiB) are skipped and counted; a NaN / inf / out-of-range
       value only drops that point (the row's step still counts).  Counts
       of skipped lines and dropped points appear in the subtitle.
     * Resume: the trainer appends to the log after a resume, and a resume
       from an earlier checkpoint repeats steps.  A row whose step is below
       the previous row's step starts a new run segment: every point already
       read at that step or later (loss and accuracy) is dropped, since the
       later run replaced it.  A point at the same step as the last point of
       its series replaces that point.  So each series is strictly
       increasing in step, and the picture is the history of the run the
       checkpoint now holds.
     * Long logs: each series is drawn with at most MBPLOT_MAX_POINTS points:
       the first and last point and, in equal buckets of the rows between,
       the minimum and the maximum of each bucket (in step order), so a spike
       in a 10^6-row log is still drawn at its full height.
     * Axes: x = step (from a round number to the last step; k / M tick
       labels on long runs), left y = training loss (linear, nice 1-2-5
       ticks around the data range, not forced to 0), right y = accuracy
       0..1, drawn only when the log has at least one accuracy value.
       The last loss value is annotated; the subtitle gives the last step
       and the elapsed seconds of the last row that has them.
     * Writing is atomic: SVG.tmp.<pid>, fflush, fsync, rename (then a best
       effort fsync of the folder).  On any failure the temporary file is
       removed and a previous SVG at that path is left as it was. */

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MBPLOT_W 800
#define MBPLOT_H 450
#define MBPLOT_MAX_POINTS 2000 /* per series, in the SVG */
#define MBPLOT_LINE_MAX 4096   /* longer lines are skipped */
#define MBPLOT_MAX_FIELDS 64
#define MBPLOT_BIG 1e300       /* larger magnitudes count as non-finite */
#define MBPLOT_LOSS_COLOR "#1f5fbf"
#define MBPLOT_ACC_COLOR "#d9541e"

typedef struct { double x, y; } mbplot_pt;
typedef struct { mbplot_pt *p; size_t n, cap; } mbplot_series;

typedef struct {
    mbplot_series loss, acc;
    double last_step, last_seconds;
    int have_step, have_seconds, header_seen;
    long rows, skipped_lines, dropped_points, resumes;
    long nonempty_lines;
} mbplot_log;

typedef struct { double lo, hi, step; } mbplot_axis;

typedef struct {
    double left, right, top, bottom;
    mbplot_axis x, y, acc;
    int has_acc;
} mbplot_layout;

static void mbplot_err(char *err, size_t errn, const char *fmt, ...) {
    va_list ap;
    if (!err || errn == 0) return;
    va_start(ap, fmt);
    vsnprintf(err, errn, fmt, ap);
    va_end(ap);
}

static int mbplot_finite(double v) { return isfinite(v) && fabs(v) < MBPLOT_BIG; }

static void mbplot_log_free(mbplot_log *L) {
    free(L->loss.p);
    free(L->acc.p);
    memset(L, 0, sizeof *L);
}

/* Drops every point at step >= x. */
static void mbplot_truncate(mbplot_series *s, double x) {
    while (s->n > 0 && s->p[s->n - 1].x >= x) s->n--;
}

/* Appends (x, y), replacing points at step >= x.  0, or -1 out of memory. */
static int mbplot_push(mbplot_series *s, double x, double y) {
    mbplot_truncate(s, x);
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        mbplot_pt *p;
        if (cap < s->cap || cap > SIZE_MAX / sizeof *p) return -1;
        p = (mbplot_pt *)realloc(s->p, cap * sizeof *p);
        if (!p) return -1;
        s->p = p;
        s->cap = cap;
    }
    s->p[s->n].x = x;
    s->p[s->n].y = y;
    s->n++;
    return 0;
}

/* Trims blanks in place. */
static char *mbplot_trim(char *s) {
    char *e;
    while (*s == ' ' || *s == '\t') s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n')) *--e = '\0';
    return s;
}

/* 1 a number (maybe NaN / inf), 0 an empty field, -1 not a number. */
static int mbplot_number(const char *s, double *v) {
    char *end;
    if (*s == '\0') return 0;
    errno = 0;
    *v = strtod(s, &end);
    if (end == s || *end != '\0') return -1;
    return 1;
}

/* Splits a line at commas in place; returns the number of fields. */
static int mbplot_split(char *line, char **fields) {
    int n = 0;
    char *p = line;
    for (;;) {
        char *c = strchr(p, ',');
        if (c) *c = '\0';
        if (n < MBPLOT_MAX_FIELDS) fields[n++] = mbplot_trim(p);
        if (!c) break;
        p = c + 1;
    }
    return n;
}

typedef struct { int step, loss, seconds, acc; } mbplot_cols;

/* A header line names step and loss; maps the columns by name. */
static int mbplot_header(char **fields, int nf, mbplot_cols *c) {
    mbplot_cols h = {-1, -1, -1, -1};
    int i;
    for (i = 0; i < nf; i++) {
        if (!strcmp(fields[i], "step") && h.step < 0) h.step = i;
        else if (!strcmp(fields[i], "loss") && h.loss < 0) h.loss = i;
        else if (!strcmp(fields[i], "seconds") && h.seconds < 0) h.seconds = i;
        else if (!strcmp(fields[i], "val_char_accuracy") && h.acc < 0) h.acc = i;
    }
    if (h.step < 0 || h.loss < 0) return 0;
    *c = h;
    return 1;
}

/* Field k of a row: 1 number, 0 empty or absent, -1 garbage. */
static int mbplot_field(char **fields, int nf, int k, double *v) {
    if (k < 0 || k >= nf) return 0;
    return mbplot_number(fields[k], v);
}

/* One line of the log.  0, or -1 out of memory. */
static int mbplot_line(mbplot_log *L, char *line, mbplot_cols *cols) {
    char *fields[MBPLOT_MAX_FIELDS];
    double step = 0, loss = 0, acc = 0, secs = 0;
    int nf, hs, hl, ha, hsec;
    line = mbplot_trim(line);
    if (*line == '\0') return 0;
    L->nonempty_lines++;
    nf = mbplot_split(line, fields);
    hs = mbplot_field(fields, nf, cols->step, &step);
    if (hs != 1) {
        mbplot_cols h;
        if (hs == -1 && mbplot_header(fields, nf, &h)) { /* a (repeated) header */
            *cols = h;
            L->header_seen = 1;
        } else {
            L->skipped_lines++;
        }
        return 0;
    }
    hl = mbplot_field(fields, nf, cols->loss, &loss);
    ha = mbplot_field(fields, nf, cols->acc, &acc);
    hsec = mbplot_field(fields, nf, cols->seconds, &secs);
    if (!mbplot_finite(step) || hl < 0 || ha < 0 || hsec < 0) { L->skipped_lines++; return 0; }
    L->rows++;
    if (L->have_step && step < L->last_step) { /* a resume from an earlier checkpoint */
        mbplot_truncate(&L->loss, step);
        mbplot_truncate(&L->acc, step);
        L->resumes++;
    }
    L->last_step = step;
    L->have_step = 1;
    if (hl == 1) {
        if (mbplot_finite(loss)) {
            if (mbplot_push(&L->loss, step, loss)) return -1;
        } else {
            L->dropped_points++;
        }
    }
    if (ha == 1) {
        if (mbplot_finite(acc) && acc >= 0.0 && acc <= 1.0) {
            if (mbplot_push(&L->acc, step, acc)) return -1;
        } else {
            L->dropped_points++;
        }
    }
    if (hsec == 1 && mbplot_finite(secs)) {
        L->last_seconds = secs;
        L->have_seconds = 1;
    }
    return 0;
}

static int mbplot_read(const char *path, mbplot_log *L, char *err, size_t errn) {
    char buf[MBPLOT_LINE_MAX];
    mbplot_cols cols = {0, 1, 4, 5}; /* the trainer's order, for a log without a header */
    FILE *f;
    int first = 1, bad_read;
    memset(L, 0, sizeof *L);
    f = fopen(path, "rb");
    if (!f) {
        mbplot_err(err, errn, "cannot read %s: %s", path, strerror(errno));
        return 1;
    }
    for (;;) {
        size_t len;
        char *line = buf;
        errno = 0;
        if (!fgets(buf, sizeof buf, f)) break;
        len = strlen(buf);
        if (len == sizeof buf - 1 && buf[len - 1] != '\n') { /* too long: skip the rest */
            int ch;
            while ((ch = getc(f)) != EOF && ch != '\n') {}
            L->nonempty_lines++;
            L->skipped_lines++;
            first = 0;
            continue;
        }
        if (first && (unsigned char)buf[0] == 0xEF && (unsigned char)buf[1] == 0xBB && (unsigned char)buf[2] == 0xBF) line += 3;
        first = 0;
        if (mbplot_line(L, line, &cols)) {
            fclose(f);
            mbplot_log_free(L);
            mbplot_err(err, errn, "%s: out of memory", path);
            return 1;
        }
    }
    bad_read = ferror(f);
    if (bad_read) {
        int e = errno;
        fclose(f);
        mbplot_log_free(L);
        mbplot_err(err, errn, "cannot read %s: %s", path, e ? strerror(e) : "read error");
        return 1;
    }
    fclose(f);
    if (!L->header_seen && L->rows == 0 && L->nonempty_lines > 0) {
        mbplot_log_free(L);
        mbplot_err(err, errn, "%s is not a training log (no step,loss header and no data rows)", path);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------- layout */
static double mbplot_nice_step(double range, int target) {
    double raw = range / target, mag, f;
    if (!(raw > 0) || !isfinite(raw)) return 1.0;
    mag = pow(10.0, floor(log10(raw)));
    f = raw / mag;
    return (f <= 1.0 ? 1.0 : f <= 2.0 ? 2.0 : f <= 5.0 ? 5.0 : 10.0) * mag;
}

/* Nice round limits and tick step around [mn, mx]; tight: the axis ends at
   mx itself (the step axis: no empty space after the last step). */
static void mbplot_axis_fit(mbplot_axis *a, double mn, double mx, int target, double min_step, int tight) {
    double step;
    if (!(mn <= mx) || !mbplot_finite(mn) || !mbplot_finite(mx)) { mn = 0.0; mx = 1.0; }
    if (!(mx - mn > 1e-9 * (fabs(mn) + fabs(mx))) || !mbplot_finite(mx - mn)) {
        double pad = fabs(mn) > 0 ? fabs(mn) * 0.05 : 0.5;
        if (!mbplot_finite(mx - mn)) { mn /= 2; mx /= 2; } /* keep the range finite */
        mn -= pad;
        mx += pad;
    }
    step = mbplot_nice_step(mx - mn, target);
    if (step < min_step) step = min_step;
    a->lo = floor(mn / step) * step;
    a->hi = tight ? mx : ceil(mx / step) * step;
    if (!(a->hi > a->lo)) a->hi = a->lo + step;
    a->step = step;
}

static void mbplot_series_range(const mbplot_series *s, int use_x, double *mn, double *mx) {
    size_t i;
    for (i = 0; i < s->n; i++) {
        double v = use_x ? s->p[i].x : s->p[i].y;
        if (v < *mn) *mn = v;
        if (v > *mx) *mx = v;
    }
}

static void mbplot_layout_fit(mbplot_layout *g, const mbplot_log *L) {
    double xmn = HUGE_VAL, xmx = -HUGE_VAL, ymn = HUGE_VAL, ymx = -HUGE_VAL;
    g->has_acc = L->acc.n > 0;
    g->left = 78;
    g->right = g->has_acc ? MBPLOT_W - 66 : MBPLOT_W - 30;
    g->top = 70;
    g->bottom = MBPLOT_H - 52;
    mbplot_series_range(&L->loss, 1, &xmn, &xmx);
    mbplot_series_range(&L->acc, 1, &xmn, &xmx);
    mbplot_series_range(&L->loss, 0, &ymn, &ymx);
    if (xmn > xmx) { xmn = 0; xmx = 1; }
    if (ymn > ymx) { ymn = 0; ymx = 1; }
    mbplot_axis_fit(&g->x, xmn, xmx, 6, 1.0, 1);
    mbplot_axis_fit(&g->y, ymn, ymx, 5, 0.0, 0);
    g->acc.lo = 0.0;
    g->acc.hi = 1.0;
    g->acc.step = 0.2;
}

static double mbplot_map(const mbplot_axis *a, double v, double p0, double p1) {
    return p0 + (v - a->lo) / (a->hi - a->lo) * (p1 - p0);
}
static double mbplot_px(const mbplot_layout *g, double x) { return mbplot_map(&g->x, x, g->left, g->right); }
static double mbplot_py(const mbplot_layout *g, double y) { return mbplot_map(&g->y, y, g->bottom, g->top); }
static double mbplot_pyacc(const mbplot_layout *g, double y) { return mbplot_map(&g->acc, y, g->bottom, g->top); }

/* Indices of the points to draw, increasing: all of them when there are at
   most maxpts; else the first, the last and the min and max of each of
   (maxpts - 2) / 2 equal buckets of the points between.  Returns the count;
   idx must hold maxpts entries. */
static size_t mbplot_downsample(const mbplot_series *s, size_t maxpts, size_t *idx) {
    size_t n = s->n, k = 0, b, nb;
    if (n <= maxpts) {
        for (k = 0; k < n; k++) idx[k] = k;
        return n;
    }
    nb = (maxpts - 2) / 2;
    idx[k++] = 0;
    for (b = 0; b < nb; b++) {
        size_t lo = 1 + (size_t)((uint64_t)b * (uint64_t)(n - 2) / nb);
        size_t hi = 1 + (size_t)((uint64_t)(b + 1) * (uint64_t)(n - 2) / nb);
        size_t i, imin = lo, imax = lo;
        if (hi <= lo) continue;
        for (i = lo + 1; i < hi; i++) {
            if (s->p[i].y < s->p[imin].y) imin = i;
            if (s->p[i].y > s->p[imax].y) imax = i;
        }
        idx[k++] = imin < imax ? imin : imax;
        if (imin != imax) idx[k++] = imin < imax ? imax : imin;
    }
    idx[k++] = n - 1;
    return k;
}

/* ------------------------------------------------------------- text */
/* Writes s as XML character data: escapes markup characters, replaces
   control characters and invalid UTF-8 by '?', and stops after max bytes
   (on a character boundary) with "...". */
static void mbplot_xml_text(FILE *f, const char *s, size_t max) {
    const unsigned char *p = (const unsigned char *)s;
    size_t used = 0;
    while (*p) {
        size_t len = 1, i;
        unsigned char c = *p;
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) len = 3;
        else if (c >= 0xF0 && c <= 0xF4) len = 4;
        else if (c >= 0x80) len = 0; /* stray continuation or invalid lead byte */
        for (i = 1; i < len; i++)
            if ((p[i] & 0xC0) != 0x80) { len = 0; break; }
        if (len == 3 && ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))) len = 0; /* overlong, surrogate */
        if (len == 4 && ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))) len = 0;
        if (used + (len ? len : 1) > max) { fputs("...", f); return; }
        if (len == 0) { fputc('?', f); p++; used++; continue; }
        if (len > 1) { fwrite(p, 1, len, f); p += len; used += len; continue; }
        switch (c) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default: fputc(c < 0x20 || c == 0x7F ? '?' : (int)c, f); break;
        }
        p++;
        used++;
    }
}

/* An integer count with thousands separators (12,345). */
static void mbplot_fmt_count(char *buf, size_t n, double v) {
    char raw[64];
    size_t len, i, o = 0, lead;
    int neg = v < 0;
    if (!mbplot_finite(v) || fabs(v) >= 1e18) { snprintf(buf, n, "%g", v); return; }
    snprintf(raw, sizeof raw, "%.0f", fabs(v));
    len = strlen(raw);
    if (neg && o + 1 < n) buf[o++] = '-';
    lead = len % 3 ? len % 3 : 3;
    for (i = 0; i < len && o + 2 < n; i++) {
        if (i >= lead && (i - lead) % 3 == 0) buf[o++] = ',';
        buf[o++] = raw[i];
    }
    buf[o] = '\0';
}

/* Decimals needed to print multiples of step exactly. */
static int mbplot_decimals(double step) {
    int d = (int)-floor(log10(step) + 1e-9);
    return d < 0 ? 0 : d > 12 ? 12 : d;
}

/* A tick label: v is a multiple of step.  si: k / M suffixes (steps). */
static void mbplot_fmt_tick(char *buf, size_t n, double v, double step, double amax, int si) {
    if (fabs(v) < step * 1e-6) { snprintf(buf, n, "0"); return; } /* no "-0", no "0k" */
    if (amax >= 1e9 || step < 1e-4) { /* enough significant digits to tell ticks apart */
        double d = amax > step ? ceil(log10(amax / step)) + 1 : 3;
        snprintf(buf, n, "%.*g", d < 3 ? 3 : d > 15 ? 15 : (int)d, v);
    }
    else if (si && amax >= 1e6) snprintf(buf, n, "%.*fM", mbplot_decimals(step / 1e6), v / 1e6);
    else if (si && amax >= 1e4) snprintf(buf, n, "%.*fk", mbplot_decimals(step / 1e3), v / 1e3);
    else if (amax >= 1e6) snprintf(buf, n, "%.4g", v);
    else snprintf(buf, n, "%.*f", mbplot_decimals(step), v);
}

static void mbplot_fmt_elapsed(char *buf, size_t n, double s) {
    if (s < 0 || s >= 1e9) snprintf(buf, n, "%.0f s", s);
    else if (s >= 3600) snprintf(buf, n, "%dh %02dm %02ds", (int)(s / 3600), (int)fmod(s / 60, 60), (int)fmod(s, 60));
    else if (s >= 60) snprintf(buf, n, "%dm %02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, n, "%.1f s", s);
}

static const char *mbplot_basename(const char *path) {
    const char *b = strrchr(path, '/');
    return b && b[1] ? b + 1 : path;
}

/* ------------------------------------------------------------- svg */
static int mbplot_ticks(const mbplot_axis *a) {
    double n = floor((a->hi - a->lo) / a->step * (1.0 + 1e-9));
    return n < 0 ? 0 : n > 40 ? 40 : (int)n;
}

static void mbplot_emit(FILE *f, const mbplot_log *L, const mbplot_layout *g, const char *csv_path, size_t *idx) {
    char buf[128], buf2[128];
    int i, nt;
    size_t k, np;
    double amax;

    fputs("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n", f);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n",
            MBPLOT_W, MBPLOT_H, MBPLOT_W, MBPLOT_H);
    fputs("<title>Training loss: ", f);
    mbplot_xml_text(f, mbplot_basename(csv_path), 200);
    fputs("</title>\n", f);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", MBPLOT_W, MBPLOT_H);

    /* title, subtitle */
    fprintf(f, "<text x=\"%.0f\" y=\"28\" font-size=\"18\" font-weight=\"bold\" fill=\"#222\">Training loss: ", g->left);
    mbplot_xml_text(f, mbplot_basename(csv_path), 34);
    fputs("</text>\n", f);
    fprintf(f, "<text class=\"subtitle\" x=\"%.0f\" y=\"49\" fill=\"#555\">", g->left);
    if (L->have_step) {
        mbplot_fmt_count(buf, sizeof buf, L->last_step);
        fprintf(f, "last step %s", buf);
    } else {
        fputs("no steps yet", f);
    }
    if (L->have_seconds) {
        mbplot_fmt_elapsed(buf, sizeof buf, L->last_seconds);
        fprintf(f, " \xC2\xB7 elapsed %s", buf);
        if (L->last_seconds >= 60) fprintf(f, " (%.0f s)", L->last_seconds);
    }
    if (L->resumes) fprintf(f, " \xC2\xB7 %ld resume%s", L->resumes, L->resumes == 1 ? "" : "s");
    if (L->skipped_lines) fprintf(f, " \xC2\xB7 %ld line%s skipped", L->skipped_lines, L->skipped_lines == 1 ? "" : "s");
    if (L->dropped_points) fprintf(f, " \xC2\xB7 %ld non-finite value%s dropped", L->dropped_points, L->dropped_points == 1 ? "" : "s");
    fputs("</text>\n", f);

    /* legend: top right, outside the plot area */
    fprintf(f, "<g class=\"legend\" font-size=\"12\" fill=\"#222\">\n");
    fprintf(f, "<line x1=\"%d\" y1=\"20\" x2=\"%d\" y2=\"20\" stroke=\"%s\" stroke-width=\"2\"/>"
               "<text x=\"%d\" y=\"24\">training loss</text>\n",
            MBPLOT_W - 200, MBPLOT_W - 176, MBPLOT_LOSS_COLOR, MBPLOT_W - 170);
    if (g->has_acc)
        fprintf(f, "<circle cx=\"%d\" cy=\"41\" r=\"3.5\" fill=\"%s\"/>"
                   "<text x=\"%d\" y=\"45\">held-out char accuracy</text>\n",
                MBPLOT_W - 188, MBPLOT_ACC_COLOR, MBPLOT_W - 170);
    fputs("</g>\n", f);

    /* grid and ticks */
    fputs("<g class=\"axes\" font-size=\"11\" fill=\"#444\">\n", f);
    nt = mbplot_ticks(&g->y);
    amax = fmax(fabs(g->y.lo), fabs(g->y.hi));
    for (i = 0; i <= nt; i++) {
        double v = g->y.lo + i * g->y.step, py = mbplot_py(g, v);
        mbplot_fmt_tick(buf, sizeof buf, v, g->y.step, amax, 0);
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#e4e4e4\"/>", g->left, py, g->right, py);
        fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"end\">%s</text>\n", g->left - 6, py + 4, buf);
    }
    nt = mbplot_ticks(&g->x);
    amax = fmax(fabs(g->x.lo), fabs(g->x.hi));
    for (i = 0; i <= nt; i++) {
        double v = g->x.lo + i * g->x.step, px = mbplot_px(g, v);
        mbplot_fmt_tick(buf, sizeof buf, v, g->x.step, amax, 1);
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#f0f0f0\"/>", px, g->top, px, g->bottom);
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#444\"/>", px, g->bottom, px, g->bottom + 5);
        fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">%s</text>\n", px, g->bottom + 18, buf);
    }
    if (g->has_acc) {
        nt = mbplot_ticks(&g->acc);
        for (i = 0; i <= nt; i++) {
            double v = g->acc.lo + i * g->acc.step, py = mbplot_pyacc(g, v);
            mbplot_fmt_tick(buf, sizeof buf, v, g->acc.step, 1.0, 0);
            fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\"/>", g->right, py, g->right + 5, py, MBPLOT_ACC_COLOR);
            fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" fill=\"%s\">%s</text>\n", g->right + 8, py + 4, MBPLOT_ACC_COLOR, buf);
        }
    }
    fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"none\" stroke=\"#444\"/>\n",
            g->left, g->top, g->right - g->left, g->bottom - g->top);
    fprintf(f, "<text x=\"%.2f\" y=\"%d\" text-anchor=\"middle\" font-size=\"12\" fill=\"#222\">step</text>\n",
            (g->left + g->right) / 2, MBPLOT_H - 12);
    fprintf(f, "<text transform=\"translate(20 %.2f) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\" fill=\"%s\">training loss</text>\n",
            (g->top + g->bottom) / 2, MBPLOT_LOSS_COLOR);
    if (g->has_acc)
        fprintf(f, "<text transform=\"translate(%d %.2f) rotate(90)\" text-anchor=\"middle\" font-size=\"12\" fill=\"%s\">held-out char accuracy</text>\n",
                MBPLOT_W - 18, (g->top + g->bottom) / 2, MBPLOT_ACC_COLOR);
    fputs("</g>\n", f);

    /* the series */
    if (L->loss.n > 0) {
        np = mbplot_downsample(&L->loss, MBPLOT_MAX_POINTS, idx);
        fprintf(f, "<polyline class=\"loss\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" stroke-linejoin=\"round\" points=\"", MBPLOT_LOSS_COLOR);
        for (k = 0; k < np; k++) {
            const mbplot_pt *p = &L->loss.p[idx[k]];
            fprintf(f, "%s%.2f,%.2f", k ? " " : "", mbplot_px(g, p->x), mbplot_py(g, p->y));
        }
        fputs("\"/>\n", f);
    }
    if (g->has_acc) {
        double r = L->acc.n > 200 ? 2.0 : 3.5;
        np = mbplot_downsample(&L->acc, MBPLOT_MAX_POINTS, idx);
        fprintf(f, "<g class=\"acc\" fill=\"%s\">\n", MBPLOT_ACC_COLOR);
        if (np > 1) {
            fprintf(f, "<polyline class=\"acc-line\" fill=\"none\" stroke=\"%s\" stroke-width=\"1\" stroke-opacity=\"0.5\" points=\"", MBPLOT_ACC_COLOR);
            for (k = 0; k < np; k++) {
                const mbplot_pt *p = &L->acc.p[idx[k]];
                fprintf(f, "%s%.2f,%.2f", k ? " " : "", mbplot_px(g, p->x), mbplot_pyacc(g, p->y));
            }
            fputs("\"/>\n", f);
        }
        for (k = 0; k < np; k++) {
            const mbplot_pt *p = &L->acc.p[idx[k]];
            fprintf(f, "<circle class=\"acc-pt\" cx=\"%.2f\" cy=\"%.2f\" r=\"%.1f\"/>\n", mbplot_px(g, p->x), mbplot_pyacc(g, p->y), r);
        }
        fputs("</g>\n", f);
    }

    /* the last loss value, or a note on an empty chart */
    if (L->loss.n > 0) {
        const mbplot_pt *p = &L->loss.p[L->loss.n - 1];
        double px = mbplot_px(g, p->x), py = mbplot_py(g, p->y);
        double ty = py - 9 < g->top + 14 ? py + 18 : py - 9;
        int fit_left;
        mbplot_fmt_count(buf2, sizeof buf2, p->x);
        snprintf(buf, sizeof buf, "%.4g", p->y);
        fprintf(f, "<circle class=\"last\" cx=\"%.2f\" cy=\"%.2f\" r=\"3.5\" fill=\"%s\" stroke=\"#fff\" stroke-width=\"1\"/>\n", px, py, MBPLOT_LOSS_COLOR);
        /* left of the point, unless that runs past the left axis (about 7 px a character) */
        fit_left = px - 6 - 7.0 * (double)(strlen(buf) + strlen(buf2) + 14) >= g->left;
        fprintf(f, "<text class=\"last\" x=\"%.2f\" y=\"%.2f\" text-anchor=\"%s\" font-size=\"12\" font-weight=\"bold\" fill=\"%s\" "
                   "stroke=\"#ffffff\" stroke-width=\"3\" paint-order=\"stroke\">loss %s at step %s</text>\n",
                fit_left ? px - 6 : px + 6, ty, fit_left ? "end" : "start", MBPLOT_LOSS_COLOR, buf, buf2);
    } else {
        fprintf(f, "<text class=\"note\" x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\" font-size=\"14\" fill=\"#888\">%s</text>\n",
                (g->left + g->right) / 2, (g->top + g->bottom) / 2,
                g->has_acc ? "no training loss rows yet" : "no data rows yet");
    }
    fputs("</svg>\n", f);
}

/* Best effort: makes a rename durable. */
static void mbplot_fsync_dir(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    int fd;
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) < sizeof dir) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else return;
    fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

static int mb_plot_write_svg(const char *csv_path, const char *svg_path, char *err, size_t errn) {
    mbplot_log L;
    mbplot_layout g;
    size_t *idx = NULL;
    char *tmp = NULL;
    FILE *f = NULL;
    size_t tn;
    int ok;
    if (err && errn) err[0] = '\0';
    if (!csv_path || !svg_path || !*csv_path || !*svg_path) {
        mbplot_err(err, errn, "no log or no output path given");
        return 1;
    }
    if (!strcmp(csv_path, svg_path)) {
        mbplot_err(err, errn, "the output %s is the log itself", svg_path);
        return 1;
    }
    if (mbplot_read(csv_path, &L, err, errn)) return 1;
    mbplot_layout_fit(&g, &L);
    tn = strlen(svg_path) + 32;
    idx = (size_t *)malloc(MBPLOT_MAX_POINTS * sizeof *idx);
    tmp = (char *)malloc(tn);
    if (!idx || !tmp) {
        mbplot_err(err, errn, "out of memory");
        goto fail;
    }
    snprintf(tmp, tn, "%s.tmp.%ld", svg_path, (long)getpid());
    f = fopen(tmp, "wb");
    if (!f) {
        mbplot_err(err, errn, "cannot write %s: %s", svg_path, strerror(errno));
        goto fail;
    }
    mbplot_emit(f, &L, &g, csv_path, idx);
    errno = 0;
    ok = !ferror(f) && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (!ok) {
        mbplot_err(err, errn, "cannot write %s: %s", svg_path, errno ? strerror(errno) : "write error");
        fclose(f);
        f = NULL;
        remove(tmp);
        goto fail;
    }
    ok = fclose(f) == 0;
    f = NULL;
    if (!ok) {
        mbplot_err(err, errn, "cannot write %s: %s", svg_path, strerror(errno));
        remove(tmp);
        goto fail;
    }
    if (rename(tmp, svg_path) != 0) {
        mbplot_err(err, errn, "cannot write %s: %s", svg_path, strerror(errno));
        remove(tmp);
        goto fail;
    }
    mbplot_fsync_dir(svg_path);
    free(tmp);
    free(idx);
    mbplot_log_free(&L);
    return 0;
fail:
    free(tmp);
    free(idx);
    mbplot_log_free(&L);
    return 1;
}

/* ------------------------------------------------------------- cli */
static void mbplot_usage(FILE *f) {
    fputs("usage: mambabyte plot LOG.csv -o FILE.svg\n"
          "  Draws the training loss in LOG.csv (from `mambabyte train --log`) against the\n"
          "  step, with the held-out char accuracy when the log has a val_char_accuracy\n"
          "  column, as a self-contained SVG.  The file is replaced atomically.\n"
          "  -o, --out FILE   the SVG to write (required)\n"
          "  -h, --help       this text\n", f);
}

static int mb_cli_plot(int argc, char **argv) {
    const char *log = NULL, *out = NULL;
    char err[1024];
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            mbplot_usage(stdout);
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out") || !strncmp(a, "--out=", 6)) {
            const char *v = a[1] == '-' && a[5] == '=' ? a + 6 : NULL;
            if (!v) {
                if (i + 1 >= argc) { fprintf(stderr, "mambabyte plot: %s needs a file\n", a); mbplot_usage(stderr); return 2; }
                v = argv[++i];
            }
            if (out) { fprintf(stderr, "mambabyte plot: the output is given twice\n"); mbplot_usage(stderr); return 2; }
            if (!*v) { fprintf(stderr, "mambabyte plot: empty output path\n"); mbplot_usage(stderr); return 2; }
            out = v;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "mambabyte plot: unknown option %s\n", a);
            mbplot_usage(stderr);
            return 2;
        } else {
            if (log) { fprintf(stderr, "mambabyte plot: one log only (got %s and %s)\n", log, a); mbplot_usage(stderr); return 2; }
            log = a;
        }
    }
    if (!log || !out) {
        fprintf(stderr, "mambabyte plot: %s\n", !log ? "no log given" : "no output given (-o FILE.svg)");
        mbplot_usage(stderr);
        return 2;
    }
    if (mb_plot_write_svg(log, out, err, sizeof err)) {
        fprintf(stderr, "mambabyte plot: %s\n", err);
        return 1;
    }
    printf("wrote %s\n", out);
    return 0;
}
