/* test_plot.c - `mambabyte plot`: plot.c's CSV reader, SVG writer and CLI,
   in process.  Writes its files under build/plot_test/ (run from the repo
   root), checks the SVG with xmllint when it is on PATH, and counts the
   points of the drawn series.  Included by test.c after tests/mbtest.h;
   every name here starts with plt_ (plot.c's own start with mbplot_). */

#include "../plot.c"

#include <dirent.h>
#include <sys/stat.h>

#define PLT_DIR "build/plot_test"

static int plt_xmllint_state = -1; /* -1 unknown, 0 absent, 1 present */

static void plt_write(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) { MBT_CHECK(0, "cannot create %s", path); return; }
    fputs(text, f);
    fclose(f);
}

static int plt_count(const char *s, const char *needle) {
    int n = 0;
    size_t len = strlen(needle);
    while (s && (s = strstr(s, needle)) != NULL) { n++; s += len; }
    return n;
}

/* The points of the first <polyline class="CLS" ...>: up to max pairs into
   xs / ys; returns how many pairs the attribute holds, -1 when absent. */
static int plt_points(const char *svg, const char *cls, double *xs, double *ys, int max) {
    char key[64];
    const char *p, *end;
    int n = 0;
    snprintf(key, sizeof key, "<polyline class=\"%s\"", cls);
    if (!svg || !(p = strstr(svg, key))) return -1;
    end = strstr(p, "/>");
    p = strstr(p, "points=\"");
    if (!p || !end || p > end) return -1;
    p += 8;
    while (*p && *p != '"') {
        char *e;
        double x = strtod(p, &e), y;
        if (e == p || *e != ',') return -2;
        p = e + 1;
        y = strtod(p, &e);
        if (e == p) return -2;
        p = e;
        if (n < max) { xs[n] = x; ys[n] = y; }
        n++;
        while (*p == ' ') p++;
    }
    return n;
}

/* 1 valid XML, 0 not, -1 skipped (no xmllint). */
static int plt_xml_ok(const char *path) {
    char cmd[512];
    int rc;
    if (plt_xmllint_state < 0) {
        fflush(stdout);
        plt_xmllint_state = system("command -v xmllint > /dev/null 2>&1") == 0;
        if (!plt_xmllint_state) MBT_SKIP("plot", "xmllint not found: SVGs are not checked as XML");
    }
    if (!plt_xmllint_state) return -1;
    snprintf(cmd, sizeof cmd, "xmllint --noout '%s'", path);
    fflush(stdout);
    fflush(stderr);
    rc = system(cmd);
    return rc == 0;
}

/* Names in PLT_DIR that look like a leftover temporary file. */
static int plt_temp_files(void) {
    DIR *d = opendir(PLT_DIR);
    struct dirent *e;
    int n = 0;
    if (!d) return -1;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

/* Removes temporary files a crashed earlier run may have left. */
static void plt_clean_temps(void) {
    DIR *d = opendir(PLT_DIR);
    struct dirent *e;
    char path[1024];
    if (!d) return;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp.") && snprintf(path, sizeof path, "%s/%s", PLT_DIR, e->d_name) < (int)sizeof path) remove(path);
    closedir(d);
}

/* Writes a log of n rows: loss = base + step * slope, accuracy every acc_every rows (0: no column). */
static void plt_log(const char *path, int first, int n, double base, double slope, int acc_every, const char *mode) {
    FILE *f = fopen(path, mode);
    int i;
    if (!f) { MBT_CHECK(0, "cannot create %s", path); return; }
    if (mode[0] == 'w') fputs(acc_every ? "step,loss,lr,grad_norm,seconds,val_char_accuracy\n" : "step,loss,lr,grad_norm,seconds\n", f);
    for (i = 0; i < n; i++) {
        int step = first + i;
        fprintf(f, "%d,%.6f,%.6e,%.6f,%.3f", step, base + slope * step, 1e-3, 0.5, 0.25 * step);
        if (acc_every) {
            if (step % acc_every == 0) fprintf(f, ",%.4f", 0.3 + 0.001 * step);
            else fputs(",", f);
        }
        fputc('\n', f);
    }
    fclose(f);
}

static int plt_cli(int argc, const char **argv) {
    int saved_out, saved_err, devnull, rc;
    fflush(stdout);
    fflush(stderr);
    saved_out = dup(1);
    saved_err = dup(2);
    devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) { dup2(devnull, 1); dup2(devnull, 2); close(devnull); }
    rc = mb_cli_plot(argc, (char **)argv);
    fflush(stdout);
    fflush(stderr);
    if (saved_out >= 0) { dup2(saved_out, 1); close(saved_out); }
    if (saved_err >= 0) { dup2(saved_err, 2); close(saved_err); }
    return rc;
}

static void test_plot(void) {
    const char *csv = PLT_DIR "/log.csv", *svg = PLT_DIR "/log.svg";
    char err[512], *s;
    double xs[4096], ys[4096];
    int n, i, ok;
    mkdir("build", 0755);
    mkdir(PLT_DIR, 0755);
    plt_clean_temps();
    remove(svg);

    /* a small log, the trainer's 5-column header */
    plt_log(csv, 1, 10, 3.0, -0.1, 0, "w");
    MBT_CHECK(mb_plot_write_svg(csv, svg, err, sizeof err) == 0, "small log: %s", err);
    s = mbt_slurp(svg, NULL);
    MBT_CHECK(s != NULL, "small log: no SVG written");
    MBT_CHECK(plt_xml_ok(svg) != 0, "small log: the SVG is not well-formed XML");
    n = plt_points(s, "loss", xs, ys, 4096);
    MBT_CHECK(n == 10, "small log: %d polyline points, expected 10", n);
    for (ok = 1, i = 1; i < n && i < 4096; i++) ok &= xs[i] > xs[i - 1] && ys[i] > ys[i - 1]; /* falling loss: y grows */
    MBT_CHECK(ok, "small log: points not in step order or not falling");
    MBT_CHECK(s && strstr(s, "viewBox=\"0 0 800 450\""), "small log: no 800x450 viewBox");
    MBT_CHECK(s && strstr(s, "loss 2 at step 10"), "small log: last loss not annotated");
    MBT_CHECK(s && strstr(s, "elapsed 2.5 s"), "small log: elapsed seconds of the last row not in the subtitle");
    MBT_CHECK(s && !strstr(s, "class=\"acc"), "small log: an accuracy series without accuracy");
    MBT_CHECK(plt_count(s, "http://") == 1, "small log: only the SVG namespace may be a URL");
    MBT_CHECK(s && !strstr(s, "<script") && !strstr(s, "<image") && !strstr(s, "@import"), "small log: not self-contained");
    free(s);

    /* the 6-column header: accuracy measured on 3 of 10 rows */
    plt_log(csv, 1, 10, 3.0, -0.1, 4, "w"); /* steps 4 and 8 */
    {
        FILE *f = fopen(csv, "ab");
        if (f) { fputs("10,,,,,0.5\n", f); fclose(f); } /* an evaluation-only row at the last step */
    }
    MBT_CHECK(mb_plot_write_svg(csv, svg, err, sizeof err) == 0, "accuracy log: %s", err);
    s = mbt_slurp(svg, NULL);
    MBT_CHECK(plt_xml_ok(svg) != 0, "accuracy log: not well-formed XML");
    MBT_CHECK(plt_count(s, "class=\"acc-pt\"") == 3, "accuracy log: %d accuracy markers, expected 3", plt_count(s, "class=\"acc-pt\""));
    MBT_CHECK(plt_points(s, "loss", xs, ys, 4096) == 10, "accuracy log: the evaluation-only row must not drop the loss at its step");
    MBT_CHECK(s && strstr(s, "held-out char accuracy"), "accuracy log: no legend / axis for the accuracy");
    free(s);

    /* the 6-column header with no accuracy measured: no accuracy series */
    plt_log(csv, 1, 10, 3.0, -0.1, 1000, "w");
    MBT_CHECK(mb_plot_write_svg(csv, svg, err, sizeof err) == 0, "empty accuracy column: %s", err);
    s = mbt_slurp(svg, NULL);
    MBT_CHECK(s && !strstr(s, "class=\"acc") && !strstr(s, "held-out"), "empty accuracy column: an accuracy series was drawn");
    free(s);

    /* NaN / inf / garbage rows are skipped, never drawn */
    plt_write(csv,
              "\xEF\xBB\xBFstep,loss,lr,grad_norm,seconds\r\n"
              "1,3.0,1e-3,0.5,1.0\r\n"
              "2,nan,1e-3,nan,2.0\n"
              "3,-nan,1e-3,0.5,3.0\n"
              "4,inf,1e-3,0.5,4.0\n"
              "hello,world\n"
              "5,2.5x,1e-3,0.5,5.0\n"
              ",2.5,1e-3,0.5,5.0\n"
              "\n"
              "6,2.4,1e-3,0.5,6.0\n"
              "7,1e999,1e-3,0.5,7.0\n"
              "8,2.2,1e-3,0.5,8.0\n"
              "9,2.1,1e-3,0.5,9.0");
    MBT_CHECK(mb_plot_write_svg(csv, svg, err, sizeof err) == 0, "NaN log: %s", err);
    s = mbt_slurp(svg, NULL);
    MBT_CHECK(plt_xml_ok(svg) != 0, "NaN log: not well-formed XML");
    n = plt_points(s, "loss", xs, ys, 4096);
    MBT_CHECK(n == 4, "NaN log: %d points, expected 4 (steps 1, 6, 8, 9)", n);
    MBT_CHECK(s && !strstr(s, "nan") && !strstr(s, "inf,") && !strstr(s, "NaN"), "NaN log: a non-finite number reached the SVG");
    MBT_CHECK(s && strstr(s, "3 lines skipped") && strstr(s, "4 non-finite values dropped"), "NaN log: skips not reported in the subtitle");
    MBT_CHECK(s && strstr(s, "loss 2.1 at step 9"), "NaN log: a last line without a newline must count");
    free(s);

    /* a resume from an earlier checkpoint: the later rows replace the earlier ones */
    plt_log(csv, 1, 10, 3.0, 0.0, 4, "w");  /* steps 1..10 at 3.0, accuracy at 4, 8 */
    plt_log(csv, 6, 7, 2.0, 0.0, 0, "a");   /* resumed at step 6: steps 6..12 at 2.0 */
    {
        FILE *f = fopen(csv, "ab");
        if (f) { fputs("12,1.5,1e-3,0.5,99.0,\n", f); fclose(f); } /* the same step again */
    }
    MBT_CHECK(mb_plot_write_svg(csv, svg, err, sizeof err) == 0, "resume log: %s", err);
    s = mbt_slurp(svg, NULL);
    {
        mbplot_log L;
        mbplot_layout g;
        int at3 = 0, at2 = 0;
        double y3, y2;
        MBT_CHECK(mbplot_read(csv, &L, err, sizeof err) == 0, "resume log: %s", err);
        mbplot_layout_fit(&g, &L);
        y3 = mbplot_py(&g, 3.0);
        y2 = mbplot_py(&g, 2.0);
        n = plt_points(s, "loss", xs, ys, 4096);
        MBT_CHECK(n == 12, "resume log: %d points, expected 12 (one per step 1..12)", n);
        for (ok = 1, i = 0; i < n && i < 4096; i++) {
            if (i) ok &= xs[i] > xs[i - 1];
            at3 += fabs(ys[i] - y3) < 0.01;
            at2 += fabs(ys[i] - y2) < 0.01;
        }
        MBT_CHECK(ok, "resume log: steps drawn out of order");
        MBT_CHECK(at3 == 5 && at2 == 6, "resume log: %d points of the first run (expected 5), %d of the second (expected 6)", at3, at2);
        MBT_CHECK(L.acc.n == 1 && L.acc.p[0].x == 4.0, "resume log: the accuracy at step 8 of the replaced run must go (%d left)", (int)L.acc.n);
        MBT_CHECK(L.resumes == 1, "resume log: %ld resumes, expected 1", L.resumes);
        mbplot_log_free(&L);
    }
    MBT_CHECK(s && strstr(s, "loss 1.5 at step 12") && strstr(s, "(99 s)") && strstr(s, "1 resume"), "resume log: the last row must win");
    free(s);

    /* a long log: at most MBPLOT_MAX_POINTS points, the spike and the dip kept */
    {
        FILE *f = fopen(csv, "wb");
        const int rows = 200000, spike = 123457, dip = 54321;
        mbplot_log L;
        mbplot_layout g;
        double yspike, xspike, ydip;
        int found_spike = 0, found_dip = 0;
        if (f) {
            fputs("step,loss,lr,grad_norm,seconds,val_char_accuracy\n", f);
            for (i = 1; i <= rows; i++) {
                double loss = i == spike ? 9.0 : i == dip ? 0.25 : 2.0 + 0.5 * sin(i * 0.001) + 0.01 * (i % 7);
                fprintf(f, "%d,%.6f,1e-3,0.5,%.3f,", i, loss, i * 0.01);
                if (i % 50 == 0) fprintf(f, "%.4f", 0.5 + 0.4 * i / rows);
                fputc('\n', f);
            }
            fclose(f);
        }
        MBT_CHECK(mb_plot_write_svg(csv, svg, err, sizeof err) == 0, "long log: %s", err);
        s = mbt_slurp(svg, NULL);
        MBT_CHECK(plt_xml_ok(svg) != 0, "long log: not well-formed XML");
        MBT_CHECK(mbplot_read(csv, &L, err, sizeof err) == 0 && L.loss.n == (size_t)rows, "long log: read %d rows", (int)L.loss.n);
        mbplot_layout_fit(&g, &L);
        yspike = mbplot_py(&g, 9.0);
        xspike = mbplot_px(&g, (double)spike);
        ydip = mbplot_py(&g, 0.25);
        n = plt_points(s, "loss", xs, ys, 4096);
        MBT_CHECK(n > 1000 && n <= MBPLOT_MAX_POINTS, "long log: %d points, expected (1000, %d]", n, MBPLOT_MAX_POINTS);
        for (i = 0; i < n && i < 4096; i++) {
            found_spike |= fabs(ys[i] - yspike) < 0.006 && fabs(xs[i] - xspike) < 0.006;
            found_dip |= fabs(ys[i] - ydip) < 0.006;
        }
        MBT_CHECK(found_spike, "long log: the global max loss (y %.2f at x %.2f) was downsampled away", yspike, xspike);
        MBT_CHECK(found_dip, "long log: the global min loss (y %.2f) was downsampled away", ydip);
        n = plt_points(s, "acc-line", xs, ys, 4096);
        MBT_CHECK(n > 1000 && n <= MBPLOT_MAX_POINTS && plt_count(s, "class=\"acc-pt\"") == n,
                  "long log: %d accuracy points (%d markers), expected (1000, %d]", n, plt_count(s, "class=\"acc-pt\""), MBPLOT_MAX_POINTS);
        MBT_CHECK(s && strstr(s, "last step 200,000") && strstr(s, "33m 20s"), "long log: subtitle");
        mbplot_log_free(&L);
        free(s);
    }

    /* empty file, header only: an empty chart with a note */
    plt_write(csv, "");
    MBT_CHECK(mb_plot_write_svg(csv, svg, err, sizeof err) == 0, "empty log: %s", err);
    s = mbt_slurp(svg, NULL);
    MBT_CHECK(plt_xml_ok(svg) != 0, "empty log: not well-formed XML");
    MBT_CHECK(s && strstr(s, "no data rows yet") && !strstr(s, "<polyline"), "empty log: no note, or a series drawn");
    free(s);
    plt_write(csv, "step,loss,lr,grad_norm,seconds,val_char_accuracy\n");
    MBT_CHECK(mb_plot_write_svg(csv, svg, err, sizeof err) == 0, "header-only log: %s", err);
    s = mbt_slurp(svg, NULL);
    MBT_CHECK(plt_xml_ok(svg) != 0, "header-only log: not well-formed XML");
    MBT_CHECK(s && strstr(s, "no data rows yet"), "header-only log: no note");
    free(s);
    plt_write(csv, "<html>\nthis is not a log\n");
    MBT_CHECK(mb_plot_write_svg(csv, svg, err, sizeof err) != 0 && strstr(err, "not a training log"), "not a log: accepted (%s)", err);

    /* text is escaped: a log whose name has markup characters */
    plt_log(PLT_DIR "/a&b<c>'\".csv", 1, 3, 3.0, -0.1, 0, "w");
    MBT_CHECK(mb_plot_write_svg(PLT_DIR "/a&b<c>'\".csv", svg, err, sizeof err) == 0, "odd name: %s", err);
    s = mbt_slurp(svg, NULL);
    MBT_CHECK(plt_xml_ok(svg) != 0, "odd name: the title is not escaped");
    MBT_CHECK(s && strstr(s, "a&amp;b&lt;c&gt;&apos;&quot;.csv"), "odd name: the title is not escaped");
    free(s);
    remove(PLT_DIR "/a&b<c>'\".csv");

    /* missing log: a clear error; the previous SVG stays; no temporary file */
    plt_write(svg, "OLD");
    err[0] = '\0';
    MBT_CHECK(mb_plot_write_svg(PLT_DIR "/no_such.csv", svg, err, sizeof err) != 0, "missing log: accepted");
    MBT_CHECK(strstr(err, "cannot read") && strstr(err, "no_such.csv") && strstr(err, strerror(ENOENT)), "missing log: unclear error '%s'", err);
    s = mbt_slurp(svg, NULL);
    MBT_CHECK(s && !strcmp(s, "OLD"), "missing log: the previous SVG was touched");
    free(s);
    MBT_CHECK(plt_temp_files() == 0, "a temporary file was left behind");

    /* failures to write: a missing folder; a folder in the way of the rename */
    plt_log(csv, 1, 5, 3.0, -0.1, 0, "w");
    err[0] = '\0';
    MBT_CHECK(mb_plot_write_svg(csv, PLT_DIR "/no_such_dir/x.svg", err, sizeof err) != 0 && strstr(err, "cannot write"),
              "missing folder: '%s'", err);
    mkdir(PLT_DIR "/in_the_way.svg", 0755);
    err[0] = '\0';
    MBT_CHECK(mb_plot_write_svg(csv, PLT_DIR "/in_the_way.svg", err, sizeof err) != 0 && strstr(err, "cannot write"),
              "rename onto a folder: '%s'", err);
    rmdir(PLT_DIR "/in_the_way.svg");
    MBT_CHECK(plt_temp_files() == 0, "a failed write left its temporary file");
    MBT_CHECK(mb_plot_write_svg(csv, csv, err, sizeof err) != 0, "writing over the log itself was accepted");

    /* the command */
    {
        const char *a_none[] = {"plot"};
        const char *a_noout[] = {"plot", csv};
        const char *a_dangling[] = {"plot", csv, "-o"};
        const char *a_unknown[] = {"plot", csv, "-o", svg, "--bogus"};
        const char *a_twologs[] = {"plot", csv, csv, "-o", svg};
        const char *a_twoouts[] = {"plot", csv, "-o", svg, "--out", svg};
        const char *a_help[] = {"plot", "--help"};
        const char *a_h[] = {"plot", "-h"};
        const char *a_missing[] = {"plot", PLT_DIR "/no_such.csv", "-o", svg};
        const char *a_ok[] = {"plot", csv, "--out", PLT_DIR "/cli.svg"};
        const char *a_ok2[] = {"plot", "-o", PLT_DIR "/cli2.svg", csv};
        MBT_CHECK(plt_cli(1, a_none) == 2, "plot: no arguments must be usage (2)");
        MBT_CHECK(plt_cli(2, a_noout) == 2, "plot LOG: no output must be usage (2)");
        MBT_CHECK(plt_cli(3, a_dangling) == 2, "plot LOG -o: dangling -o must be usage (2)");
        MBT_CHECK(plt_cli(5, a_unknown) == 2, "plot --bogus must be usage (2)");
        MBT_CHECK(plt_cli(5, a_twologs) == 2, "plot with two logs must be usage (2)");
        MBT_CHECK(plt_cli(6, a_twoouts) == 2, "plot with two outputs must be usage (2)");
        MBT_CHECK(plt_cli(2, a_help) == 0 && plt_cli(2, a_h) == 0, "plot --help / -h must exit 0");
        MBT_CHECK(plt_cli(4, a_missing) == 1, "plot on a missing log must exit 1");
        MBT_CHECK(plt_cli(4, a_ok) == 0, "plot LOG --out FILE must exit 0");
        MBT_CHECK(plt_cli(4, a_ok2) == 0, "plot -o FILE LOG must exit 0");
        s = mbt_slurp(PLT_DIR "/cli.svg", NULL);
        MBT_CHECK(s && plt_points(s, "loss", xs, ys, 4096) == 5, "plot --out: wrong picture");
        free(s);
        s = mbt_slurp(PLT_DIR "/cli2.svg", NULL);
        MBT_CHECK(s != NULL, "plot -o: nothing written");
        free(s);
    }
    MBT_CHECK(plt_temp_files() == 0, "a temporary file was left behind");
}
