/* test_numerics_report.c - `mambabyte numerics` end to end: runs the built
   binary (MBT_NUMERICS_BIN, default ./mambabyte, from the repo root), parses
   its --json output with a small strict JSON parser, checks its --svg output
   with a small XML well-formedness checker (and xmllint when on PATH), and
   checks the exit statuses of bad invocations.  Included by test.c after
   tests/mbtest.h; every name here starts with nrt_. */

#ifndef MBT_NUMERICS_BIN
#define MBT_NUMERICS_BIN "./mambabyte"
#endif

#include <ctype.h>
#if !defined(_WIN32)
#include <sys/wait.h>
#endif

/* Exit code of a command run by system(), -1 when it did not exit normally. */
static int nrt_exit_code(int status) {
    if (status == -1) return -1;
#if defined(WIFEXITED) && defined(WEXITSTATUS)
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
#else
    return status;
#endif
}

static int nrt_run(const char *cmd) {
    fflush(stdout);
    fflush(stderr);
    return nrt_exit_code(system(cmd));
}

/* ------------------------------------------------------------- tiny JSON */
/* Strict RFC 8259 grammar (no NaN/Infinity tokens, no trailing commas) into
   a node pool.  Strings are kept as raw slices (escapes validated, not
   decoded): every key and value compared here is plain ASCII. */
typedef enum { NRT_NULL, NRT_BOOL, NRT_NUM, NRT_STR, NRT_ARR, NRT_OBJ } nrt_kind;
typedef struct {
    nrt_kind kind;
    double num;
    int boolean;
    const char *str; /* NRT_STR: raw contents between the quotes */
    size_t len;
    const char *key; /* member name when the parent is an object */
    size_t key_len;
    int child, next; /* first child, next sibling; -1 for none */
} nrt_node;

#define NRT_POOL 8192
static nrt_node nrt_pool[NRT_POOL];
static int nrt_npool;

typedef struct { const char *p, *end; int depth; } nrt_in;

static void nrt_ws(nrt_in *in) {
    while (in->p < in->end && (*in->p == ' ' || *in->p == '\t' || *in->p == '\n' || *in->p == '\r')) in->p++;
}

static int nrt_new(nrt_kind k) {
    nrt_node *n;
    if (nrt_npool >= NRT_POOL) return -1;
    n = &nrt_pool[nrt_npool];
    memset(n, 0, sizeof *n);
    n->kind = k;
    n->child = n->next = -1;
    return nrt_npool++;
}

/* A string starting at the opening quote: its raw slice, or 0 on error. */
static int nrt_string(nrt_in *in, const char **s, size_t *len) {
    const char *p = in->p + 1;
    while (p < in->end && *p != '"') {
        if ((unsigned char)*p < 0x20) return 0;
        if (*p == '\\') {
            p++;
            if (p >= in->end) return 0;
            if (*p == 'u') {
                int i;
                for (i = 1; i <= 4; i++)
                    if (p + i >= in->end || !isxdigit((unsigned char)p[i])) return 0;
                p += 4;
            } else if (!strchr("\"\\/bfnrt", *p)) {
                return 0;
            }
        }
        p++;
    }
    if (p >= in->end) return 0;
    *s = in->p + 1;
    *len = (size_t)(p - (in->p + 1));
    in->p = p + 1;
    return 1;
}

static int nrt_value(nrt_in *in);

static int nrt_number(nrt_in *in) {
    const char *p = in->p, *start = in->p;
    char tmp[64];
    int id;
    if (p < in->end && *p == '-') p++;
    if (p < in->end && *p == '0') p++;
    else if (p < in->end && *p >= '1' && *p <= '9') while (p < in->end && isdigit((unsigned char)*p)) p++;
    else return -1;
    if (p < in->end && *p == '.') {
        p++;
        if (p >= in->end || !isdigit((unsigned char)*p)) return -1;
        while (p < in->end && isdigit((unsigned char)*p)) p++;
    }
    if (p < in->end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < in->end && (*p == '+' || *p == '-')) p++;
        if (p >= in->end || !isdigit((unsigned char)*p)) return -1;
        while (p < in->end && isdigit((unsigned char)*p)) p++;
    }
    if ((size_t)(p - start) >= sizeof tmp || (id = nrt_new(NRT_NUM)) < 0) return -1;
    memcpy(tmp, start, (size_t)(p - start));
    tmp[p - start] = '\0';
    nrt_pool[id].num = strtod(tmp, NULL);
    in->p = p;
    return id;
}

static int nrt_literal(nrt_in *in, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(in->end - in->p) < n || memcmp(in->p, word, n) != 0) return 0;
    in->p += n;
    return 1;
}

/* Array or object body after the opening bracket. */
static int nrt_container(nrt_in *in, int obj) {
    int id = nrt_new(obj ? NRT_OBJ : NRT_ARR), last = -1;
    char close = obj ? '}' : ']';
    if (id < 0 || ++in->depth > 32) return -1;
    in->p++;
    nrt_ws(in);
    if (in->p < in->end && *in->p == close) { in->p++; in->depth--; return id; }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        int v;
        nrt_ws(in);
        if (obj) {
            if (in->p >= in->end || *in->p != '"' || !nrt_string(in, &key, &key_len)) return -1;
            nrt_ws(in);
            if (in->p >= in->end || *in->p != ':') return -1;
            in->p++;
        }
        v = nrt_value(in);
        if (v < 0) return -1;
        nrt_pool[v].key = key;
        nrt_pool[v].key_len = key_len;
        if (last < 0) nrt_pool[id].child = v;
        else nrt_pool[last].next = v;
        last = v;
        nrt_ws(in);
        if (in->p < in->end && *in->p == ',') { in->p++; continue; }
        if (in->p < in->end && *in->p == close) { in->p++; in->depth--; return id; }
        return -1;
    }
}

static int nrt_value(nrt_in *in) {
    int id;
    nrt_ws(in);
    if (in->p >= in->end) return -1;
    switch (*in->p) {
    case '{': return nrt_container(in, 1);
    case '[': return nrt_container(in, 0);
    case '"':
        if ((id = nrt_new(NRT_STR)) < 0) return -1;
        return nrt_string(in, &nrt_pool[id].str, &nrt_pool[id].len) ? id : -1;
    case 't': case 'f':
        if ((id = nrt_new(NRT_BOOL)) < 0) return -1;
        nrt_pool[id].boolean = *in->p == 't';
        return nrt_literal(in, nrt_pool[id].boolean ? "true" : "false") ? id : -1;
    case 'n':
        if ((id = nrt_new(NRT_NULL)) < 0) return -1;
        return nrt_literal(in, "null") ? id : -1;
    default: return nrt_number(in);
    }
}

/* Root node of a whole document, -1 on any syntax error. */
static int nrt_parse(const char *text, size_t len) {
    nrt_in in;
    int root;
    nrt_npool = 0;
    in.p = text;
    in.end = text + len;
    in.depth = 0;
    root = nrt_value(&in);
    nrt_ws(&in);
    return root >= 0 && in.p == in.end ? root : -1;
}

static int nrt_parse_str(const char *text) { return nrt_parse(text, strlen(text)); }

static int nrt_str_is(int id, const char *s) {
    return id >= 0 && nrt_pool[id].kind == NRT_STR && nrt_pool[id].len == strlen(s) &&
           memcmp(nrt_pool[id].str, s, nrt_pool[id].len) == 0;
}

static int nrt_get(int obj, const char *key) {
    int c;
    size_t n = strlen(key);
    if (obj < 0 || nrt_pool[obj].kind != NRT_OBJ) return -1;
    for (c = nrt_pool[obj].child; c >= 0; c = nrt_pool[c].next)
        if (nrt_pool[c].key_len == n && memcmp(nrt_pool[c].key, key, n) == 0) return c;
    return -1;
}

/* The report's number convention: a JSON number, or "NaN" / "Infinity" /
   "-Infinity".  Returns 0 when the node is neither. */
static int nrt_num(int id, double *v) {
    if (id < 0) return 0;
    if (nrt_pool[id].kind == NRT_NUM) { *v = nrt_pool[id].num; return 1; }
    if (nrt_str_is(id, "NaN")) { *v = NAN; return 1; }
    if (nrt_str_is(id, "Infinity")) { *v = INFINITY; return 1; }
    if (nrt_str_is(id, "-Infinity")) { *v = -INFINITY; return 1; }
    return 0;
}

/* true -> 1, false -> 0, anything else -> -1. */
static int nrt_bool(int id) { return id >= 0 && nrt_pool[id].kind == NRT_BOOL ? nrt_pool[id].boolean : -1; }

/* ------------------------------------------------------------- tiny XML */
/* Well-formedness as far as this SVG needs it: an optional declaration,
   comments, one root element, every start tag closed in order, attributes
   name="value" or name='value' without '<', and '&' only as an entity
   (&amp; &lt; &gt; &quot; &apos; &#N; &#xH;).  NULL when fine, else why. */
static int nrt_entity(const char *p) {
    static const char *names[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};
    size_t i;
    for (i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strncmp(p, names[i], strlen(names[i]))) return (int)strlen(names[i]);
    if (p[1] == '#') {
        const char *q = p + 2;
        int hex = *q == 'x';
        if (hex) q++;
        if (!(hex ? isxdigit((unsigned char)*q) : isdigit((unsigned char)*q))) return 0;
        while (hex ? isxdigit((unsigned char)*q) : isdigit((unsigned char)*q)) q++;
        return *q == ';' ? (int)(q - p + 1) : 0;
    }
    return 0;
}

static int nrt_name_start(char ch) { return isalpha((unsigned char)ch) || ch == '_' || ch == ':'; }
static int nrt_name_char(char ch) { return nrt_name_start(ch) || isdigit((unsigned char)ch) || ch == '-' || ch == '.'; }

static const char *nrt_xml_check(const char *s) {
    static char why[200];
    const char *open[64];
    size_t open_len[64];
    int depth = 0, roots = 0;
    const char *p = s;
    while (*p) {
        if (*p == '<') {
            const char *name;
            size_t n;
            long at = (long)(p - s);
            if (!strncmp(p, "<?", 2)) {
                const char *e = strstr(p, "?>");
                if (!e || depth > 0 || roots > 0) { snprintf(why, sizeof why, "bad processing instruction at %ld", at); return why; }
                p = e + 2;
                continue;
            }
            if (!strncmp(p, "<!--", 4)) {
                const char *e = strstr(p + 4, "-->");
                if (!e) { snprintf(why, sizeof why, "unterminated comment at %ld", at); return why; }
                p = e + 3;
                continue;
            }
            if (p[1] == '/') {
                p += 2;
                name = p;
                while (nrt_name_char(*p)) p++;
                n = (size_t)(p - name);
                while (isspace((unsigned char)*p)) p++;
                if (*p != '>') { snprintf(why, sizeof why, "malformed end tag at %ld", at); return why; }
                if (depth == 0 || open_len[depth - 1] != n || strncmp(open[depth - 1], name, n) != 0) {
                    snprintf(why, sizeof why, "end tag </%.*s> at %ld does not close the open element", (int)n, name, at);
                    return why;
                }
                depth--;
                p++;
                continue;
            }
            p++;
            if (!nrt_name_start(*p)) { snprintf(why, sizeof why, "stray '<' at %ld", at); return why; }
            name = p;
            while (nrt_name_char(*p)) p++;
            n = (size_t)(p - name);
            if (depth == 0 && ++roots > 1) { snprintf(why, sizeof why, "second root element at %ld", at); return why; }
            for (;;) {
                int had_space = 0;
                while (isspace((unsigned char)*p)) { p++; had_space = 1; }
                if (*p == '>') {
                    if (depth >= 64) { snprintf(why, sizeof why, "nesting too deep at %ld", at); return why; }
                    open[depth] = name;
                    open_len[depth++] = n;
                    p++;
                    break;
                }
                if (p[0] == '/' && p[1] == '>') { p += 2; break; }
                if (!had_space || !nrt_name_start(*p)) { snprintf(why, sizeof why, "malformed tag <%.*s> at %ld", (int)n, name, at); return why; }
                while (nrt_name_char(*p)) p++;
                while (isspace((unsigned char)*p)) p++;
                if (*p != '=') { snprintf(why, sizeof why, "attribute without '=' in <%.*s> at %ld", (int)n, name, at); return why; }
                p++;
                while (isspace((unsigned char)*p)) p++;
                if (*p != '"' && *p != '\'') { snprintf(why, sizeof why, "unquoted attribute in <%.*s> at %ld", (int)n, name, at); return why; }
                {
                    char q = *p++;
                    while (*p && *p != q) {
                        if (*p == '<') { snprintf(why, sizeof why, "'<' inside an attribute at %ld", (long)(p - s)); return why; }
                        if (*p == '&') {
                            int e = nrt_entity(p);
                            if (!e) { snprintf(why, sizeof why, "bad '&' inside an attribute at %ld", (long)(p - s)); return why; }
                            p += e;
                            continue;
                        }
                        p++;
                    }
                    if (!*p) { snprintf(why, sizeof why, "unterminated attribute at %ld", at); return why; }
                    p++;
                }
            }
            continue;
        }
        if (*p == '&') {
            int e = nrt_entity(p);
            if (!e) { snprintf(why, sizeof why, "stray '&' in text at %ld", (long)(p - s)); return why; }
            p += e;
            continue;
        }
        if (depth == 0 && !isspace((unsigned char)*p)) { snprintf(why, sizeof why, "text outside the root at %ld", (long)(p - s)); return why; }
        p++;
    }
    if (depth != 0) { snprintf(why, sizeof why, "%d element(s) left open, innermost <%.*s>", depth, (int)open_len[depth - 1], open[depth - 1]); return why; }
    if (roots != 1) { snprintf(why, sizeof why, "no root element"); return why; }
    return NULL;
}

static size_t nrt_count(const char *hay, const char *needle) {
    size_t n = 0, len = strlen(needle);
    const char *p = hay;
    while ((p = strstr(p, needle)) != NULL) { n++; p += len; }
    return n;
}

/* ------------------------------------------------------------------ test */
static void test_numerics_report(void) {
    static const char *const keys[] = {"case", "V", "predicted_naive_nan", "naive_nan", "stable_nan", "naive_sum",
                                       "stable_sum", "naive_max", "stable_max", "max_rel_diff", "naive_ce",
                                       "stable_ce", "naive_probs", "stable_probs", "naive_nonfinite_count",
                                       "stable_nonfinite_count"};
    static const char *const expect_nan[] = {"large positive", "[1000,1001,1002]", "[-1000,-999,-998]"};
    static const char *const expect_finite[] = {"large negative", "small magnitudes", "mixed magnitudes",
                                                "all identical", "masked entry", "single element",
                                                "verb vocabulary"};
    const char *json_path = "build/numerics.json", *svg_path = "build/numerics.svg";
    char *json, *svg, *table;
    size_t json_len = 0;
    int rc, root, row, rows = 0, k;
    long bad_expected = 0;

    /* the checker itself */
    MBT_CHECK(nrt_xml_check("<?xml version=\"1.0\"?>\n<svg a=\"1\"><g b='x &amp; y'/>t &lt; 1 &#65;</svg>\n") == NULL,
              "xml checker rejects a well-formed document");
    MBT_CHECK(nrt_xml_check("<svg><g></svg></g>") != NULL, "xml checker accepts crossed tags");
    MBT_CHECK(nrt_xml_check("<svg><g></g>") != NULL, "xml checker accepts an unclosed tag");
    MBT_CHECK(nrt_xml_check("<svg a=1/>") != NULL, "xml checker accepts an unquoted attribute");
    MBT_CHECK(nrt_xml_check("<svg>a & b</svg>") != NULL, "xml checker accepts a bare '&'");
    MBT_CHECK(nrt_xml_check("<svg>1 < 2</svg>") != NULL, "xml checker accepts a stray '<'");
    MBT_CHECK(nrt_parse_str("[1, \"NaN\", null, true, {\"a\": -2.5e-3, \"b\": []}]") >= 0, "json parser rejects valid JSON");
    MBT_CHECK(nrt_parse_str("[1, NaN]") < 0 && nrt_parse_str("[1,]") < 0 && nrt_parse_str("[01]") < 0 &&
                  nrt_parse_str("{\"a\" 1}") < 0 && nrt_parse_str("[1] x") < 0,
              "json parser accepts invalid JSON");

    /* bad invocations */
    rc = nrt_run(MBT_NUMERICS_BIN " numerics --bogus >/dev/null 2>&1");
    MBT_CHECK(rc == 2, "'numerics --bogus' exited %d, expected 2", rc);
    rc = nrt_run(MBT_NUMERICS_BIN " numerics --json >/dev/null 2>&1");
    MBT_CHECK(rc == 2, "'numerics --json' (no FILE) exited %d, expected 2", rc);
    rc = nrt_run(MBT_NUMERICS_BIN " numerics --json build/numerics_no_such_dir/x.json >/dev/null 2>&1");
    MBT_CHECK(rc == 1, "an unwritable --json path exited %d, expected 1", rc);

    /* the report */
    if (nrt_run("mkdir -p build") != 0) MBT_CHECK(0, "cannot create build/");
    remove(json_path);
    remove(svg_path);
    rc = nrt_run(MBT_NUMERICS_BIN " numerics --json build/numerics.json --svg build/numerics.svg >build/numerics.txt");
    MBT_CHECK(rc == 0, "'%s numerics --json --svg' exited %d", MBT_NUMERICS_BIN, rc);
    if (rc != 0) return;

    table = mbt_slurp("build/numerics.txt", NULL);
    MBT_CHECK(table && strstr(table, "large negative") && strstr(table, "subnormal") && strstr(table, "n/a"),
              "table on stdout lacks the rows or the divergence note");
    free(table);

    json = mbt_slurp(json_path, &json_len);
    MBT_CHECK(json != NULL, "cannot read %s", json_path);
    if (!json) return;
    root = nrt_parse(json, json_len);
    MBT_CHECK(root >= 0 && nrt_pool[root].kind == NRT_ARR, "%s is not a JSON array (strict JSON)", json_path);
    if (root < 0 || nrt_pool[root].kind != NRT_ARR) { free(json); return; }

    for (row = nrt_pool[root].child; row >= 0; row = nrt_pool[row].next) {
        int ok_keys = 1, i, naive_nan, stable_nan, probs;
        double ssum = NAN, cnt_naive = -1, cnt_stable = -1;
        const nrt_node *name;
        rows++;
        for (i = 0; i < (int)(sizeof keys / sizeof keys[0]); i++) ok_keys &= nrt_get(row, keys[i]) >= 0;
        MBT_CHECK(ok_keys, "row %d lacks a required key", rows);
        if (!ok_keys) continue;
        name = &nrt_pool[nrt_get(row, "case")];
        naive_nan = nrt_bool(nrt_get(row, "naive_nan"));
        stable_nan = nrt_bool(nrt_get(row, "stable_nan"));
        MBT_CHECK(naive_nan >= 0 && stable_nan >= 0, "'%.*s': naive_nan/stable_nan not booleans", (int)name->len, name->str);
        MBT_CHECK(stable_nan == 0, "stable softmax NaN on '%.*s'", (int)name->len, name->str);
        MBT_CHECK(nrt_num(nrt_get(row, "stable_sum"), &ssum) && fabs(ssum - 1.0) <= 1e-6,
                  "stable sum %.9g on '%.*s'", ssum, (int)name->len, name->str);
        MBT_CHECK(nrt_num(nrt_get(row, "naive_nonfinite_count"), &cnt_naive) && cnt_naive >= 0 &&
                      nrt_num(nrt_get(row, "stable_nonfinite_count"), &cnt_stable) && cnt_stable == 0,
                  "non-finite counts on '%.*s'", (int)name->len, name->str);
        MBT_CHECK(naive_nan == (cnt_naive > 0), "'%.*s': naive_nan disagrees with naive_nonfinite_count", (int)name->len, name->str);
        bad_expected += (long)cnt_naive + (long)cnt_stable;
        /* where the probabilities are listed, they agree with the count */
        probs = nrt_get(row, "naive_probs");
        if (nrt_pool[probs].kind == NRT_ARR) {
            int c, n_bad = 0, all_num = 1;
            double v;
            for (c = nrt_pool[probs].child; c >= 0; c = nrt_pool[c].next) {
                all_num &= nrt_num(c, &v);
                n_bad += all_num && !isfinite(v);
            }
            MBT_CHECK(all_num && n_bad == (int)cnt_naive, "'%.*s': naive_probs has %d non-finite, count says %g",
                      (int)name->len, name->str, n_bad, cnt_naive);
        } else {
            MBT_CHECK(nrt_pool[probs].kind == NRT_NULL, "'%.*s': naive_probs neither array nor null", (int)name->len, name->str);
        }
    }
    MBT_CHECK(rows >= 11, "%d rows in %s, expected at least 11", rows, json_path);

    /* the specific cases */
    for (k = 0; k < (int)(sizeof expect_nan / sizeof expect_nan[0]) + (int)(sizeof expect_finite / sizeof expect_finite[0]); k++) {
        int nan_expected = k < (int)(sizeof expect_nan / sizeof expect_nan[0]);
        const char *want = nan_expected ? expect_nan[k] : expect_finite[k - (int)(sizeof expect_nan / sizeof expect_nan[0])];
        int found = -1;
        for (row = nrt_pool[root].child; row >= 0; row = nrt_pool[row].next)
            if (nrt_str_is(nrt_get(row, "case"), want)) found = row;
        MBT_CHECK(found >= 0, "no row '%s' in %s", want, json_path);
        if (found < 0) continue;
        MBT_CHECK(nrt_bool(nrt_get(found, "naive_nan")) == nan_expected, "naive NaN on '%s' should be %d", want, nan_expected);
        if (!strcmp(want, "large negative"))
            MBT_CHECK(nrt_bool(nrt_get(found, "predicted_naive_nan")) == 1,
                      "'large negative' should record seed 003's (wrong) NaN prediction");
        if (!strcmp(want, "single element"))
            MBT_CHECK(nrt_pool[nrt_get(found, "naive_ce")].kind == NRT_NULL && nrt_pool[nrt_get(found, "stable_ce")].kind == NRT_NULL,
                      "single element: CE with y = 1 should be null (target out of range)");
    }
    free(json);

    /* the picture */
    svg = mbt_slurp(svg_path, NULL);
    MBT_CHECK(svg != NULL, "cannot read %s", svg_path);
    if (!svg) return;
    {
        const char *why = nrt_xml_check(svg);
        long bad_cells = (long)nrt_count(svg, "class=\"bad\"");
        MBT_CHECK(why == NULL, "%s is not well-formed: %s", svg_path, why ? why : "");
        MBT_CHECK(strstr(svg, "<svg") && strstr(svg, "xmlns=\"http://www.w3.org/2000/svg\""), "%s: no svg root", svg_path);
        MBT_CHECK(!strstr(svg, "href") && !strstr(svg, "url(") && !strstr(svg, "@import"),
                  "%s refers to something outside itself", svg_path);
        MBT_CHECK(bad_cells == bad_expected && bad_expected > 0, "%ld class=\"bad\" cells in %s, JSON counts %ld non-finite values",
                  bad_cells, svg_path, bad_expected);
    }
    free(svg);
    if (nrt_run("command -v xmllint >/dev/null 2>&1") == 0) {
        rc = nrt_run("xmllint --noout build/numerics.svg");
        MBT_CHECK(rc == 0, "xmllint --noout %s exited %d", svg_path, rc);
    }
}
