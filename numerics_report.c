/* numerics_report.c - `mambabyte numerics [--json FILE] [--svg FILE]`.

   Seed 003's lab, as a command: the Block C battery of adversarial logit
   rows (plus three stress rows) through a naive float32 softmax
   (exp / sum / divide) and through the library's stable functions
   (mb_softmax, mb_cross_entropy_forward), side by side:

     * a table on stdout, one row per case;
     * --json FILE: the same rows as a JSON array of objects;
     * --svg FILE:  a self-contained picture of both outputs, naive breakage
                    (NaN / Inf) in red.

   main.c includes this file after the implementation of mambabyte.h and
   calls mb_cli_numerics(argc, argv) with argv[0] == "numerics".
   Exit status: 0 done; 1 an output file could not be written; 2 bad usage.

   JSON conventions (every value is legal JSON):
     * a non-finite number is written as a string: "NaN", "Infinity",
       "-Infinity" (the tokens Python's json module reads back);
     * null means "not applicable": the cross-entropy of a row whose target
       y = 1 is out of range (V = 1), max_rel_diff when no entry qualifies,
       the x / probability arrays of rows with V > 10 (too long to list),
       and predicted_naive_nan for the rows seed 003 does not list. */

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

int mb_cli_numerics(int argc, char **argv);

#define MBNR_MAX_V 600
#define MBNR_ARRAY_MAX_V 10 /* rows printed element by element (JSON, SVG) */
#define MBNR_TARGET 1       /* cross-entropy target: "present simple" in seed 003 */

typedef struct {
    const char *name;
    int64_t V;
    float x[MBNR_MAX_V];
    int predicted; /* seed 003's prediction of a naive NaN: 1, 0, or -1 (not in the seed) */
    /* measured */
    float naive[MBNR_MAX_V], stable[MBNR_MAX_V];
    int naive_nan, stable_nan;               /* any NaN in the output row */
    int naive_nonfinite, stable_nonfinite;   /* NaN or +-Inf entries */
    double naive_sum, stable_sum, naive_max, stable_max;
    int has_rel;                             /* max_rel is defined */
    double max_rel;
    int ce_ok;                               /* target in range: both CEs defined */
    float naive_ce, stable_ce;
} mbnr_case;

/* The naive float32 softmax that seed 003 asks us to break, and its
   cross-entropy -log(p[y]).  Used only by this report; the library never
   computes a softmax this way.  Returns 0 (CE untouched) when y is not in
   [0, V). */
static int mbnr_naive_softmax_ce_f32(float *p, float *ce, const float *x, int64_t V, int32_t y) {
    float s = 0.0f;
    int64_t i;
    for (i = 0; i < V; i++) s += expf(x[i]);
    for (i = 0; i < V; i++) p[i] = expf(x[i]) / s;
    if (y < 0 || (int64_t)y >= V) return 0;
    *ce = -logf(p[y]);
    return 1;
}

/* Seed 003 Block C, then the stress rows. */
static int mbnr_make_cases(mbnr_case *c) {
    static const struct { const char *name; int predicted; float x[5]; } five[] = {
        {"small magnitudes", 0, {0.1f, 0.2f, 0.3f, 0.4f, 0.5f}},
        {"mixed magnitudes", 0, {-3.0f, 0.0f, 1.0f, 2.0f, 5.0f}},
        {"large positive", 1, {1.0f, 92.0f, 3.0f, 0.0f, 2.0f}},
        {"large negative", 1, {-100.0f, -200.0f, -300.0f, -400.0f, -500.0f}},
        {"all identical", 0, {5.0f, 5.0f, 5.0f, 5.0f, 5.0f}},
        {"masked entry", 0, {1.0f, -INFINITY, 3.0f, 0.0f, 2.0f}},
    };
    int n = 0, k;
    int64_t i;
    memset(c, 0, 12 * sizeof *c);
    for (k = 0; k < 6; k++, n++) {
        c[n].name = five[k].name;
        c[n].predicted = five[k].predicted;
        c[n].V = 5;
        memcpy(c[n].x, five[k].x, sizeof five[k].x);
    }
    c[n].name = "single element"; c[n].predicted = 0; c[n].V = 1; c[n].x[0] = 42.0f; n++;
    c[n].name = "verb vocabulary"; c[n].predicted = 0; c[n].V = 600;
    for (i = 0; i < 600; i++) c[n].x[i] = 0.0f;
    n++;
    c[n].name = "[1000,1001,1002]"; c[n].predicted = -1; c[n].V = 3;
    c[n].x[0] = 1000.0f; c[n].x[1] = 1001.0f; c[n].x[2] = 1002.0f; n++;
    c[n].name = "[-1000,-999,-998]"; c[n].predicted = -1; c[n].V = 3;
    c[n].x[0] = -1000.0f; c[n].x[1] = -999.0f; c[n].x[2] = -998.0f; n++;
    c[n].name = "all -inf"; c[n].predicted = -1; c[n].V = 5;
    for (i = 0; i < 5; i++) c[n].x[i] = -INFINITY;
    n++;
    return n;
}

/* Sum and max of a row the NumPy way: a NaN anywhere makes both NaN. */
static void mbnr_row_summary(const float *p, int64_t V, double *sum, double *mx, int *has_nan, int *nonfinite) {
    double s = 0.0, m = -INFINITY;
    int64_t i;
    *has_nan = 0;
    *nonfinite = 0;
    for (i = 0; i < V; i++) {
        s += (double)p[i];
        if (isnan(p[i])) *has_nan = 1;
        else if ((double)p[i] > m) m = (double)p[i];
        if (!isfinite(p[i])) (*nonfinite)++;
    }
    *sum = s;
    *mx = *has_nan ? NAN : m;
}

static void mbnr_run_case(mbnr_case *c) {
    int32_t y = MBNR_TARGET;
    float naive_ce = 0.0f, stable_ce = 0.0f;
    int naive_ok;
    mb_status st;
    int64_t i;
    naive_ok = mbnr_naive_softmax_ce_f32(c->naive, &naive_ce, c->x, c->V, y);
    mb_softmax(c->stable, c->x, 1, c->V);
    st = mb_cross_entropy_forward(&stable_ce, c->x, &y, 1, c->V, NULL);
    /* The library rejects an out-of-range target (MB_STATUS_INVALID_ARGUMENT);
       the naive CE is reported as n/a there too. */
    c->ce_ok = naive_ok && st == MB_STATUS_OK;
    c->naive_ce = c->ce_ok ? naive_ce : NAN;
    c->stable_ce = c->ce_ok ? stable_ce : NAN;
    mbnr_row_summary(c->naive, c->V, &c->naive_sum, &c->naive_max, &c->naive_nan, &c->naive_nonfinite);
    mbnr_row_summary(c->stable, c->V, &c->stable_sum, &c->stable_max, &c->stable_nan, &c->stable_nonfinite);
    c->has_rel = 0;
    c->max_rel = 0.0;
    for (i = 0; i < c->V; i++) {
        double a = c->naive[i], b = c->stable[i], r;
        if (!isfinite(a) || b == 0.0 || isnan(b)) continue;
        r = fabs(a - b) / fabs(b);
        if (!c->has_rel || r > c->max_rel) c->max_rel = r;
        c->has_rel = 1;
    }
}

/* Does the measurement differ from seed 003's prediction? */
static int mbnr_diverges(const mbnr_case *c) { return c->predicted >= 0 && c->predicted != c->naive_nan; }

/* ---------------------------------------------------------------- table */

/* A number in a table cell (width w), "nan"/"inf"/"-inf" when not finite. */
static void mbnr_cell(char *buf, size_t n, double v, int prec) {
    if (isnan(v)) snprintf(buf, n, "nan");
    else if (isinf(v)) snprintf(buf, n, v > 0 ? "inf" : "-inf");
    else snprintf(buf, n, "%.*g", prec, v);
}

static void mbnr_print_table(FILE *f, const mbnr_case *c, int n) {
    int k;
    fprintf(f, "naive float32 softmax (exp / sum / divide) vs stable mb_softmax; cross-entropy with y = %d\n\n", MBNR_TARGET);
    fprintf(f, "%-18s %4s  %-10s %-5s %-6s %11s %11s %11s %11s %12s %10s %10s\n", "case", "V", "predicted", "naive", "stable",
            "naive", "stable", "naive", "stable", "max rel", "naive", "stable");
    fprintf(f, "%-18s %4s  %-10s %-5s %-6s %11s %11s %11s %11s %12s %10s %10s\n", "", "", "(seed 003)", "NaN?", "NaN?",
            "sum", "sum", "max", "max", "diff", "CE", "CE");
    for (k = 0; k < n; k++) {
        char ns[32], ss[32], nm[32], sm[32], rd[32], nc[32], sc[32];
        const char *pred = c[k].predicted < 0 ? "-" : c[k].predicted ? "NaN" : "no";
        mbnr_cell(ns, sizeof ns, c[k].naive_sum, 8);
        mbnr_cell(ss, sizeof ss, c[k].stable_sum, 8);
        mbnr_cell(nm, sizeof nm, c[k].naive_max, 7);
        mbnr_cell(sm, sizeof sm, c[k].stable_max, 7);
        if (c[k].has_rel) mbnr_cell(rd, sizeof rd, c[k].max_rel, 3);
        else snprintf(rd, sizeof rd, "-");
        if (c[k].ce_ok) {
            mbnr_cell(nc, sizeof nc, c[k].naive_ce, 7);
            mbnr_cell(sc, sizeof sc, c[k].stable_ce, 7);
        } else {
            snprintf(nc, sizeof nc, "n/a");
            snprintf(sc, sizeof sc, "n/a");
        }
        fprintf(f, "%-18s %4lld  %-10s %-5s %-6s %11s %11s %11s %11s %12s %10s %10s\n", c[k].name, (long long)c[k].V, pred,
                c[k].naive_nan ? "NaN" : "no", c[k].stable_nan ? "NaN" : "no", ns, ss, nm, sm, rd, nc, sc);
    }
    fprintf(f, "\n");
    for (k = 0; k < n; k++) {
        if (!mbnr_diverges(&c[k])) continue;
        if (!strcmp(c[k].name, "large negative"))
            fprintf(f, "note: seed 003 predicted NaN (0/0) for 'large negative', but in float32 expf(-100) = %.2g is "
                       "subnormal, not 0, so the naive row is [1,0,0,0,0]; 0/0 needs every x below about %.2f "
                       "(ln 2^-150), as in [-1000,-999,-998].\n",
                    (double)expf(-100.0f), -150.0 * log(2.0));
        else
            fprintf(f, "note: seed 003 predicted %s for '%s'; measured %s.\n", c[k].predicted ? "NaN" : "no NaN",
                    c[k].name, c[k].naive_nan ? "NaN" : "no NaN");
    }
    for (k = 0; k < n; k++)
        if (!c[k].ce_ok)
            fprintf(f, "n/a (target out of range): y = %d on '%s' (V = %lld); mb_cross_entropy_forward returns %s.\n",
                    MBNR_TARGET, c[k].name, (long long)c[k].V, mb_status_string(MB_STATUS_INVALID_ARGUMENT));
    fprintf(f, "predicted (seed 003): '-' = a row seed 003 does not list.  max rel diff = max |naive-stable|/|stable| "
               "over entries where naive is finite and stable is nonzero ('-' = none);\n"
               "1 there means naive rounded to 0 an entry that stable keeps as a subnormal (e.g. e^-91 = 3e-40).\n");
}

/* ----------------------------------------------------------------- json */

/* A JSON number; non-finite values as the strings "NaN" / "Infinity" /
   "-Infinity" (see the conventions at the top of this file). */
static void mbnr_json_num(FILE *f, double v, int prec) {
    if (isnan(v)) fputs("\"NaN\"", f);
    else if (isinf(v)) fputs(v > 0 ? "\"Infinity\"" : "\"-Infinity\"", f);
    else fprintf(f, "%.*g", prec, v);
}

static void mbnr_json_floats(FILE *f, const float *p, int64_t V) {
    int64_t i;
    if (V > MBNR_ARRAY_MAX_V) { fputs("null", f); return; }
    fputc('[', f);
    for (i = 0; i < V; i++) {
        if (i) fputs(", ", f);
        mbnr_json_num(f, p[i], 9);
    }
    fputc(']', f);
}

/* Case names are plain ASCII without quotes or backslashes; escape anyway. */
static void mbnr_json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void mbnr_write_json(FILE *f, const mbnr_case *c, int n) {
    int k;
    fputs("[\n", f);
    for (k = 0; k < n; k++) {
        fputs("  {\"case\": ", f);
        mbnr_json_str(f, c[k].name);
        fprintf(f, ", \"V\": %lld, \"predicted_naive_nan\": %s", (long long)c[k].V,
                c[k].predicted < 0 ? "null" : c[k].predicted ? "true" : "false");
        fprintf(f, ", \"naive_nan\": %s, \"stable_nan\": %s", c[k].naive_nan ? "true" : "false",
                c[k].stable_nan ? "true" : "false");
        fprintf(f, ",\n   \"naive_nonfinite_count\": %d, \"stable_nonfinite_count\": %d", c[k].naive_nonfinite,
                c[k].stable_nonfinite);
        fputs(",\n   \"naive_sum\": ", f); mbnr_json_num(f, c[k].naive_sum, 17);
        fputs(", \"stable_sum\": ", f); mbnr_json_num(f, c[k].stable_sum, 17);
        fputs(", \"naive_max\": ", f); mbnr_json_num(f, c[k].naive_max, 9);
        fputs(", \"stable_max\": ", f); mbnr_json_num(f, c[k].stable_max, 9);
        fputs(",\n   \"max_rel_diff\": ", f);
        if (c[k].has_rel) mbnr_json_num(f, c[k].max_rel, 9);
        else fputs("null", f);
        fprintf(f, ", \"ce_target\": %d, \"naive_ce\": ", MBNR_TARGET);
        if (c[k].ce_ok) mbnr_json_num(f, c[k].naive_ce, 9);
        else fputs("null", f);
        fputs(", \"stable_ce\": ", f);
        if (c[k].ce_ok) mbnr_json_num(f, c[k].stable_ce, 9);
        else fputs("null", f);
        fputs(", \"ce_note\": ", f);
        if (c[k].ce_ok) fputs("null", f);
        else mbnr_json_str(f, "n/a (target out of range)");
        fputs(",\n   \"x\": ", f); mbnr_json_floats(f, c[k].x, c[k].V);
        fputs(",\n   \"naive_probs\": ", f); mbnr_json_floats(f, c[k].naive, c[k].V);
        fputs(",\n   \"stable_probs\": ", f); mbnr_json_floats(f, c[k].stable, c[k].V);
        fputs(k + 1 < n ? "},\n" : "}\n", f);
    }
    fputs("]\n", f);
}

/* ------------------------------------------------------------------ svg */

/* Text content or attribute value, XML-escaped. */
static void mbnr_xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* Shade for probability p: white at 0 to the ramp's end colour at 1. */
static void mbnr_shade(char *buf, size_t n, double p, int blue) {
    static const int grey[3] = {64, 64, 64}, bl[3] = {31, 119, 180};
    const int *end = blue ? bl : grey;
    double t = !(p > 0) ? 0 : p > 1 ? 1 : p; /* NaN -> 0: its cell is drawn red anyway */
    int rgb[3], j;
    for (j = 0; j < 3; j++) rgb[j] = (int)floor(255.0 + (end[j] - 255.0) * t + 0.5);
    snprintf(buf, n, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

/* Short label for a cell: "0.636", "4e-44", "0", "NaN", "inf". */
static void mbnr_short(char *buf, size_t n, double p) {
    if (isnan(p)) snprintf(buf, n, "NaN");
    else if (isinf(p)) snprintf(buf, n, p > 0 ? "inf" : "-inf");
    else if (p == 0.0) snprintf(buf, n, "0");
    else if (fabs(p) >= 0.01) snprintf(buf, n, "%.3f", p);
    else snprintf(buf, n, "%.0e", p);
}

#define MBNR_SVG_BAD "#d62728"
#define MBNR_CELL_W 40
#define MBNR_CELL_H 26

/* One panel (naive or stable) of one row at (x0, y0).  Non-finite cells are
   red and are the only elements carrying class="bad". */
static void mbnr_svg_panel(FILE *f, const float *p, int64_t V, double x0, double y0, double panel_w, int blue) {
    char fill[16], label[32];
    int64_t i;
    if (V <= MBNR_ARRAY_MAX_V) {
        for (i = 0; i < V; i++) {
            double x = x0 + (double)i * (MBNR_CELL_W + 2), v = p[i];
            int bad = !isfinite(v);
            mbnr_shade(fill, sizeof fill, v, blue);
            mbnr_short(label, sizeof label, v);
            if (bad)
                fprintf(f, "<rect class=\"bad\" x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" fill=\"" MBNR_SVG_BAD "\"/>\n",
                        x, y0, MBNR_CELL_W, MBNR_CELL_H);
            else
                fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"#bbbbbb\" stroke-width=\"0.5\"/>\n",
                        x, y0, MBNR_CELL_W, MBNR_CELL_H, fill);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"monospace\" font-size=\"10\" text-anchor=\"middle\" fill=\"%s\">",
                    x + MBNR_CELL_W / 2.0, y0 + MBNR_CELL_H / 2.0 + 3.5, bad || v > 0.55 ? "#ffffff" : "#000000");
            mbnr_xml_text(f, label);
            fputs("</text>\n", f);
        }
    } else {
        /* A thin strip over the panel width: runs of equal shade merged into
           one rect; every non-finite entry is its own red rect. */
        double w = (panel_w - 2.0) / (double)V, lo = INFINITY, hi = -INFINITY;
        int64_t start = 0;
        char fill_i[16];
        for (i = 0; i < V; i++) {
            if (isfinite(p[i])) {
                if (p[i] < lo) lo = p[i];
                if (p[i] > hi) hi = p[i];
            }
        }
        while (start < V) {
            int64_t end = start + 1;
            if (!isfinite(p[start])) {
                fprintf(f, "<rect class=\"bad\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%d\" fill=\"" MBNR_SVG_BAD "\"/>\n",
                        x0 + (double)start * w, y0, w, MBNR_CELL_H);
                start = end;
                continue;
            }
            mbnr_shade(fill, sizeof fill, p[start], blue);
            while (end < V && isfinite(p[end])) {
                mbnr_shade(fill_i, sizeof fill_i, p[end], blue);
                if (strcmp(fill_i, fill) != 0) break;
                end++;
            }
            fprintf(f, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%d\" fill=\"%s\"/>\n", x0 + (double)start * w, y0,
                    (double)(end - start) * w, MBNR_CELL_H, fill);
            start = end;
        }
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%d\" fill=\"none\" stroke=\"#bbbbbb\" stroke-width=\"0.5\"/>\n",
                x0, y0, panel_w - 2.0, MBNR_CELL_H);
        if (lo <= hi) {
            char a[32], b[32], text[128];
            mbnr_short(a, sizeof a, lo);
            mbnr_short(b, sizeof b, hi);
            if (lo == hi) snprintf(text, sizeof text, "%lld cells, each %.3g", (long long)V, lo);
            else snprintf(text, sizeof text, "%lld cells, %s .. %s", (long long)V, a, b);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" text-anchor=\"middle\" fill=\"#000000\">",
                    x0 + panel_w / 2.0, y0 + MBNR_CELL_H / 2.0 + 4);
            mbnr_xml_text(f, text);
            fputs("</text>\n", f);
        }
    }
}

/* "x = [1, -inf, 3, 0, 2]" or "x = zeros(600)" / "x: 600 values". */
static void mbnr_describe_x(char *buf, size_t n, const mbnr_case *c) {
    int64_t i;
    size_t len;
    int all_zero = 1;
    for (i = 0; i < c->V; i++) all_zero &= c->x[i] == 0.0f;
    if (c->V > MBNR_ARRAY_MAX_V) {
        if (all_zero) snprintf(buf, n, "x = zeros(%lld)", (long long)c->V);
        else snprintf(buf, n, "x: %lld values", (long long)c->V);
        return;
    }
    snprintf(buf, n, "x = [");
    for (i = 0; i < c->V; i++) {
        char v[32];
        mbnr_cell(v, sizeof v, c->x[i], 6);
        len = strlen(buf);
        snprintf(buf + len, n - len, "%s%s", i ? ", " : "", v);
    }
    len = strlen(buf);
    snprintf(buf + len, n - len, "]");
}

static void mbnr_write_svg(FILE *f, const mbnr_case *c, int n) {
    /* panels as wide as the widest row drawn cell by cell (at least 5 cells) */
    int64_t cells = 5;
    double label_x = 20, naive_x = 255, panel_w, stable_x, ce_x, top = 104, row_h = 46, width, legend_y, height;
    char buf[256], a[32], b[32];
    int k, j;
    for (k = 0; k < n; k++)
        if (c[k].V <= MBNR_ARRAY_MAX_V && c[k].V > cells) cells = c[k].V;
    panel_w = (double)cells * (MBNR_CELL_W + 2);
    stable_x = naive_x + panel_w + 40;
    ce_x = stable_x + panel_w + 40;
    width = ce_x + 230;
    legend_y = top + row_h * n + 14;
    height = legend_y + 112;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\">\n",
            width, height, width, height);
    fputs("<title>mambabyte numerics: naive vs stable float32 softmax</title>\n", f);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"#ffffff\"/>\n", width, height);
    fputs("<text x=\"20\" y=\"30\" font-family=\"sans-serif\" font-size=\"18\" font-weight=\"bold\" fill=\"#000000\">"
          "Naive vs stable softmax in float32 (seed 003 Block C + stress rows)</text>\n", f);
    fprintf(f, "<text x=\"20\" y=\"50\" font-family=\"sans-serif\" font-size=\"12\" fill=\"#444444\">"
               "naive: exp(x) / sum(exp(x)); stable: mb_softmax (max-shift, log-sum-exp); cross-entropy with y = %d. "
               "Red: NaN or Inf.</text>\n", MBNR_TARGET);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"13\" font-weight=\"bold\" fill=\"#000000\">case</text>\n",
            label_x, top - 14);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"13\" font-weight=\"bold\" fill=\"#000000\">"
               "naive float32</text>\n", naive_x, top - 14);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"13\" font-weight=\"bold\" fill=\"#1f77b4\">"
               "stable (mb_softmax)</text>\n", stable_x, top - 14);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"13\" font-weight=\"bold\" fill=\"#000000\">"
               "CE naive / stable</text>\n", ce_x, top - 14);
    for (k = 0; k < n; k++) {
        double y0 = top + row_h * k;
        if (k % 2 == 1)
            fprintf(f, "<rect x=\"10\" y=\"%.1f\" width=\"%.0f\" height=\"%.0f\" fill=\"#f4f4f4\"/>\n", y0 - 8, width - 20, row_h);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"13\" fill=\"#000000\">", label_x, y0 + 10);
        mbnr_xml_text(f, c[k].name);
        fputs("</text>\n", f);
        mbnr_describe_x(buf, sizeof buf, &c[k]);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"monospace\" font-size=\"10\" fill=\"#555555\">", label_x, y0 + 25);
        mbnr_xml_text(f, buf);
        fputs("</text>\n", f);
        mbnr_svg_panel(f, c[k].naive, c[k].V, naive_x, y0, panel_w, 0);
        mbnr_svg_panel(f, c[k].stable, c[k].V, stable_x, y0, panel_w, 1);
        if (c[k].ce_ok) {
            mbnr_cell(a, sizeof a, c[k].naive_ce, 5);
            mbnr_cell(b, sizeof b, c[k].stable_ce, 5);
            snprintf(buf, sizeof buf, "%s / %s", a, b);
        } else {
            snprintf(buf, sizeof buf, "n/a (target out of range)");
        }
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"monospace\" font-size=\"11\" fill=\"%s\">", ce_x,
                y0 + MBNR_CELL_H / 2.0 + 4, c[k].ce_ok && isnan(c[k].naive_ce) ? MBNR_SVG_BAD : "#000000");
        mbnr_xml_text(f, buf);
        fputs("</text>\n", f);
    }
    /* legend: two ramps and the red swatch (the swatch is not a cell: no class) */
    fprintf(f, "<text x=\"20\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"13\" font-weight=\"bold\" fill=\"#000000\">legend</text>\n",
            legend_y + 4);
    for (j = 0; j < 2; j++) {
        double ly = legend_y + 16 + 26 * j;
        fprintf(f, "<text x=\"20\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" fill=\"#000000\">%s</text>\n", ly + 13,
                j ? "stable probability" : "naive probability");
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" text-anchor=\"end\" fill=\"#000000\">0</text>\n",
                naive_x - 6, ly + 13);
        for (k = 0; k <= 10; k++) {
            mbnr_shade(a, sizeof a, k / 10.0, j);
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"16\" height=\"18\" fill=\"%s\" stroke=\"#bbbbbb\" stroke-width=\"0.5\"/>\n",
                    naive_x + 16 * k, ly, a);
        }
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" fill=\"#000000\">1</text>\n",
                naive_x + 16 * 11 + 6, ly + 13);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"24\" height=\"18\" fill=\"" MBNR_SVG_BAD "\"/>\n", stable_x, legend_y + 16);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" fill=\"#000000\">"
               "NaN or Inf (naive softmax broke)</text>\n", stable_x + 32, legend_y + 29);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" fill=\"#000000\">"
               "shade is linear in p; cell text is the value</text>\n", stable_x, legend_y + 55);
    for (k = 0; k < n; k++) {
        if (!mbnr_diverges(&c[k]) || strcmp(c[k].name, "large negative") != 0) continue;
        snprintf(buf, sizeof buf,
                 "Seed 003 predicted NaN (0/0) for 'large negative', but in float32 expf(-100) = %.2g is subnormal, not 0,",
                 (double)expf(-100.0f));
        fprintf(f, "<text x=\"20\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" fill=\"#444444\">", legend_y + 82);
        mbnr_xml_text(f, buf);
        fputs("</text>\n", f);
        snprintf(buf, sizeof buf, "so the naive row is [1,0,0,0,0]; 0/0 needs every x below about %.2f, as in [-1000,-999,-998].",
                 -150.0 * log(2.0));
        fprintf(f, "<text x=\"20\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" fill=\"#444444\">", legend_y + 97);
        mbnr_xml_text(f, buf);
        fputs("</text>\n", f);
    }
    fputs("</svg>\n", f);
}

/* ------------------------------------------------------------- files, cli */

/* Writes FILE through FILE.tmp and a rename, so a reader never sees half a
   file.  Prints a message naming the path and returns 0 on failure. */
static int mbnr_write_file(const char *path, void (*emit)(FILE *, const mbnr_case *, int), const mbnr_case *c, int n) {
    char tmp[4096];
    FILE *f;
    int ok;
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        fprintf(stderr, "mambabyte numerics: path too long: %s\n", path);
        return 0;
    }
    f = fopen(tmp, "wb");
    if (!f) {
        fprintf(stderr, "mambabyte numerics: cannot write %s (cannot create %s)\n", path, tmp);
        return 0;
    }
    emit(f, c, n);
    ok = !ferror(f);
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        remove(tmp);
        fprintf(stderr, "mambabyte numerics: error while writing %s\n", path);
        return 0;
    }
    if (rename(tmp, path) != 0) {
        remove(tmp);
        fprintf(stderr, "mambabyte numerics: cannot write %s (rename from %s failed)\n", path, tmp);
        return 0;
    }
    return 1;
}

static const char *MBNR_USAGE = "mambabyte numerics [--json FILE] [--svg FILE]";

int mb_cli_numerics(int argc, char **argv) {
    static mbnr_case cases[12];
    flag flags[] = {
        {"json", F_STR, 0, 0, "also write the rows as JSON", 0, 0, 0},
        {"svg", F_STR, 0, 0, "also draw both outputs as SVG", 0, 0, 0},
        FLAG_END};
    const char *json_path, *svg_path;
    int i, n, rc = 0;
    if (parse_flags("numerics", flags, argc - 1, argv + 1, MBNR_USAGE)) return 2;
    json_path = flag_str(flags, "json", NULL);
    svg_path = flag_str(flags, "svg", NULL);
    n = mbnr_make_cases(cases);
    for (i = 0; i < n; i++) mbnr_run_case(&cases[i]);
    mbnr_print_table(stdout, cases, n);
    fflush(stdout);
    if (json_path) {
        if (mbnr_write_file(json_path, mbnr_write_json, cases, n)) printf("wrote %s\n", json_path);
        else rc = 1;
    }
    if (svg_path) {
        if (mbnr_write_file(svg_path, mbnr_write_svg, cases, n)) printf("wrote %s\n", svg_path);
        else rc = 1;
    }
    return rc;
}
