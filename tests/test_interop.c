/* test_interop.c - the mamba_ssm-shaped models (RMSNorm, untied head) and
   their files: gradients, streaming, checkpoints, AdamW.  Included by
   test.c after test_model.c (uses its tiny_config, perturb_params and the
   config-parameterised gradient and streaming checks). */
#include <dirent.h>

static mb_config interop_config(int norm, int untied) {
    mb_config c = tiny_config();
    c.norm = norm;
    c.untied_head = untied;
    return c;
}

/* mb__rmsnorm_forward against a float64 evaluation of x * rsqrt(mean(x^2) + eps) * w. */
static void test_rmsnorm_kernel(void) {
    enum { N = 5, C = 37 };
    float x[N * C], w[C], out[N * C], rstd[N];
    double worst = 0.0;
    mbt_rng r = {41};
    int n, c;
    for (n = 0; n < N * C; n++) x[n] = (float)(3.0 * mbt_normal(&r) + 0.7);
    for (c = 0; c < C; c++) w[c] = (float)(1.0 + 0.3 * mbt_normal(&r));
    mb__rmsnorm_forward(out, rstd, x, w, N, C);
    for (n = 0; n < N; n++) {
        double ms = 0.0, s;
        for (c = 0; c < C; c++) ms += (double)x[n * C + c] * x[n * C + c];
        s = 1.0 / sqrt(ms / C + 1e-5);
        for (c = 0; c < C; c++) {
            double want = x[n * C + c] * s * w[c], e = fabs(out[n * C + c] - want) / (fabs(want) + 1e-6);
            if (e > worst) worst = e;
        }
        if (fabs(rstd[n] - s) / s > worst) worst = fabs(rstd[n] - s) / s;
    }
    MBT_CHECK(worst < 1e-5, "rmsnorm forward vs float64: worst relative error %g", worst);
}

/* The layout follows the config: RMSNorm drops both biases, an untied head
   adds lm_head.weight (V, C, decayed) after norm_f; the tensors are
   contiguous and mb_tensor_index names each. */
static void test_interop_layout(void) {
    int norm, untied;
    for (norm = 0; norm <= 1; norm++)
        for (untied = 0; untied <= 1; untied++) {
            mb_config c = interop_config(norm, untied);
            mb_tensor_info t[64];
            int n = mb_config_tensors(&c, t), i, bad = 0, has_bias = 0, li = mb_tensor_index(&c, -1, MB_TENSOR_LM_HEAD);
            for (i = 0; i < n; i++) {
                bad += i > 0 && t[i].offset != t[i - 1].offset + t[i - 1].numel;
                has_bias += strstr(t[i].name, "norm.bias") != NULL || strstr(t[i].name, "norm_f.bias") != NULL;
            }
            MBT_CHECK(bad == 0 && has_bias == (norm ? 0 : 3) && n == 1 + 2 * (11 - norm) + 2 - norm + untied,
                      "layout norm=%d untied=%d: %d tensors, %d biases, %d gaps", norm, untied, n, has_bias, bad);
            MBT_CHECK(untied ? (li == n - 1 && strcmp(t[li].name, "lm_head.weight") == 0 && t[li].shape[0] == 256 &&
                                t[li].shape[1] == c.d_model && t[li].weight_decay == 1)
                             : li == -1,
                      "layout norm=%d untied=%d: lm_head index %d", norm, untied, li);
            MBT_CHECK((mb_tensor_index(&c, 1, MB_TENSOR_NORM_B) == -1) == (norm == 1) &&
                          (mb_tensor_index(&c, -1, MB_TENSOR_NORM_F_B) == -1) == (norm == 1) &&
                          strcmp(t[mb_tensor_index(&c, 1, MB_TENSOR_OUT_PROJ)].name, "layers.1.mixer.out_proj.weight") == 0 &&
                          strcmp(t[mb_tensor_index(&c, -1, MB_TENSOR_NORM_F_W)].name, "norm_f.weight") == 0,
                      "layout norm=%d untied=%d: indices of absent and present tensors", norm, untied);
        }
    {
        mb_config c = tiny_config();
        c.norm = 2;
        MBT_CHECK(mb_config_validate(&c) == MB_STATUS_INVALID_ARGUMENT && strstr(mb_last_error(), "norm kind"),
                  "norm kind 2 rejected: '%s'", mb_last_error());
        c.norm = 0;
        c.untied_head = -1;
        MBT_CHECK(mb_config_validate(&c) == MB_STATUS_INVALID_ARGUMENT && strstr(mb_last_error(), "untied_head"),
                  "untied_head -1 rejected: '%s'", mb_last_error());
    }
}

static void test_interop_gradcheck_stream(void) {
    static const char *const names[4] = {"LayerNorm tied", "LayerNorm untied", "RMSNorm tied", "RMSNorm untied"};
    int v;
    for (v = 1; v < 4; v++) { /* LayerNorm tied: test_model's */
        mb_config c = interop_config(v / 2, v % 2);
        char name[64];
        test_model_gradcheck_config(c, names[v]);
        c.d_conv = 4;
        snprintf(name, sizeof name, "%s stream", names[v]);
        test_stream_matches_forward_config(c, name);
        snprintf(name, sizeof name, "%s feed", names[v]);
        test_stream_feed_config(c, name);
    }
}

/* Same config and the same parameters bit for bit. */
static int interop_same_model(mb_model *a, mb_model *b) {
    return memcmp(mb_model_config(a), mb_model_config(b), sizeof(mb_config)) == 0 &&
           mb_model_num_params(a) == mb_model_num_params(b) &&
           memcmp(mb_model_params(a), mb_model_params(b), (size_t)mb_model_num_params(a) * 4) == 0;
}

/* Save -> load keeps the config and every parameter; the header says [9]
   norm kind and [10] tied; an untied model's head really is separate. */
static void test_interop_checkpoint(void) {
    const char *path = "build/test_interop_ckpt.bin";
    int v;
    for (v = 0; v < 4; v++) {
        mb_config c = interop_config(v / 2, v % 2);
        mb_model *m = NULL, *m2 = NULL;
        int32_t h[16];
        FILE *f;
        mb_model_create(&m, &c, 31 + (uint64_t)v);
        perturb_params(m, 32);
        MBT_CHECK(mb_model_save(m, path) == MB_STATUS_OK, "save v=%d: %s", v, mb_last_error());
        f = fopen(path, "rb");
        MBT_CHECK(f && fread(h, 4, 16, f) == 16, "read header v=%d", v);
        if (f) fclose(f);
        MBT_CHECK(h[9] == v / 2 && h[10] == !(v % 2), "header v=%d: [9] = %d, [10] = %d", v, h[9], h[10]);
        MBT_CHECK(mb_model_load(&m2, path) == MB_STATUS_OK, "load v=%d: %s", v, mb_last_error());
        if (m2) {
            MBT_CHECK(interop_same_model(m, m2), "checkpoint v=%d round trip bit-exact", v);
            mb_model_free(m2);
        }
        if (v % 2) { /* changing the head moves only the logits, not the embedding's use */
            uint8_t x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
            float before[256];
            mb_tensor_info t[64];
            int li = mb_tensor_index(&c, -1, MB_TENSOR_LM_HEAD);
            mb_config_tensors(&c, t);
            mb_model_forward(m, x, NULL, 1, 8, NULL);
            memcpy(before, mb_model_logits(m) + 7 * 256, sizeof before);
            mb_model_params(m)[t[li].offset + 65 * c.d_model] += 1.0f; /* row 'A' of lm_head */
            mb_model_forward(m, x, NULL, 1, 8, NULL);
            MBT_CHECK(mb_model_logits(m)[7 * 256 + 65] != before[65] && mb_model_logits(m)[7 * 256 + 66] == before[66],
                      "untied head: lm_head row 65 moves logit 65 only");
        }
        mb_model_free(m);
    }
    remove(path);
}

/* AdamW decays lm_head (a >= 2-dim weight) and not the norm weights. */
static void test_interop_adamw(void) {
    mb_config c = interop_config(MB_NORM_RMSNORM, 1);
    mb_model *m = NULL;
    mb_tensor_info t[64];
    float *am, *av, head0, norm0;
    int64_t P, hoff, noff;
    mb_model_create(&m, &c, 3);
    mb_config_tensors(&c, t);
    P = mb_model_num_params(m);
    hoff = t[mb_tensor_index(&c, -1, MB_TENSOR_LM_HEAD)].offset + 5;
    noff = t[mb_tensor_index(&c, -1, MB_TENSOR_NORM_F_W)].offset + 5;
    am = (float *)calloc((size_t)P, 4);
    av = (float *)calloc((size_t)P, 4);
    mb_model_zero_grad(m); /* zero gradients: only the decay moves a parameter */
    head0 = mb_model_params(m)[hoff];
    norm0 = mb_model_params(m)[noff];
    mb_adamw_update(m, am, av, 1, 0.1, 0.9, 0.95, 1e-8, 0.5);
    MBT_CHECK(head0 != 0.0f && fabs(mb_model_params(m)[hoff] - head0 * 0.95) <= 1e-6 * fabs(head0),
              "lm_head decayed: %.9g -> %.9g", head0, mb_model_params(m)[hoff]);
    MBT_CHECK(mb_model_params(m)[noff] == norm0, "norm_f.weight not decayed");
    free(am);
    free(av);
    mb_model_free(m);
}

/* Model -> safetensors -> model is bit-identical for every variant, the
   file names mamba_ssm's tensors (lm_head.weight always), and a tied model
   comes back tied. */
static void test_safetensors_round_trip(void) {
    const char *path = "build/test_interop.safetensors";
    int v;
    for (v = 0; v < 4; v++) {
        mb_config c = interop_config(v / 2, v % 2);
        mb_model *m = NULL, *m2 = NULL;
        mb_mapped_file f;
        c.dt_rank = 3; /* not ceil(d_model / 16) */
        mb_model_create(&m, &c, 50 + (uint64_t)v);
        perturb_params(m, 51);
        MBT_CHECK(mb_model_save_safetensors(m, path) == MB_STATUS_OK, "save safetensors v=%d: %s", v, mb_last_error());
        if (mb_map_file(&f, path) == MB_STATUS_OK) {
            const char *h = (const char *)f.data + 8;
            MBT_CHECK(f.size > 8 && memchr(h, 0, 4) == NULL && strstr(h, "\"backbone.layers.1.mixer.A_log\"") &&
                          strstr(h, "\"lm_head.weight\"") && strstr(h, "\"backbone.norm_f.weight\"") &&
                          (strstr(h, "\"backbone.layers.0.norm.bias\"") != NULL) == (v / 2 == 0) &&
                          (f.data[0] | f.data[1] << 8) % 8 == 0,
                      "safetensors v=%d: mamba_ssm names, header padded to 8", v);
            mb_unmap_file(&f);
        }
        MBT_CHECK(mb_model_load(&m2, path) == MB_STATUS_OK, "load safetensors v=%d: %s", v, mb_last_error());
        if (m2) {
            MBT_CHECK(interop_same_model(m, m2), "safetensors v=%d: round trip bit-identical, same config (dt_rank %d)", v, mb_model_config(m2)->dt_rank);
            mb_model_free(m2);
        }
        mb_model_free(m);
    }
    remove(path);
}

/* The seed corpus of fuzz_safetensors (and any regression found since):
   the valid ones load, each broken one is refused with a message naming
   the problem; regressions must just not crash (ASan in make test-asan). */
static void test_safetensors_corpus(void) {
    static const struct { const char *file; mb_status want; const char *msg; } seeds[] = {
        {"layernorm_tied.safetensors", MB_STATUS_OK, ""},
        {"rmsnorm_untied.safetensors", MB_STATUS_OK, ""},
        {"nested_metadata", MB_STATUS_OK, ""},
        {"empty", MB_STATUS_BAD_FORMAT, "truncated"},
        {"header_only", MB_STATUS_BAD_FORMAT, "data_offsets"},
        {"truncated", MB_STATUS_BAD_FORMAT, "data_offsets"},
        {"dtype_f64", MB_STATUS_UNSUPPORTED, "dtype F64"},
        {"dtype_i32", MB_STATUS_UNSUPPORTED, "dtype I32"},
        {"bad_shape", MB_STATUS_BAD_FORMAT, "lm_head.weight has shape (128, 8), the config needs (256, 4)"},
        {"renamed", MB_STATUS_BAD_FORMAT, "missing tensor layers.0.mixer.A_log"},
        {"bad_offsets", MB_STATUS_BAD_FORMAT, "data_offsets [0, 9999]"},
    };
    size_t i;
    char path[512];
    DIR *d;
    struct dirent *e;
    for (i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        mb_model *m = NULL;
        mb_status s;
        snprintf(path, sizeof path, "tests/fuzz/corpus/safetensors/%s", seeds[i].file);
        s = mb_model_load_safetensors(&m, path);
        MBT_CHECK(s == seeds[i].want && (s == MB_STATUS_OK) == (m != NULL) && (s == MB_STATUS_OK || strstr(mb_last_error(), seeds[i].msg)),
                  "safetensors seed %s: status %d (want %d), '%s'", seeds[i].file, s, seeds[i].want, s ? mb_last_error() : "");
        mb_model_free(m);
    }
    d = opendir("tests/fuzz/regressions/safetensors");
    if (d) {
        int n = 0;
        while ((e = readdir(d)) != NULL) {
            mb_mapped_file f;
            mb_model *m = NULL;
            if (e->d_name[0] == '.') continue;
            snprintf(path, sizeof path, "tests/fuzz/regressions/safetensors/%s", e->d_name);
            if (mb_map_file(&f, path) != MB_STATUS_OK) continue;
            if (mb_model_from_safetensors(&m, f.data, f.size, NULL, 0, path) == MB_STATUS_OK) mb_model_free(m);
            mb_unmap_file(&f);
            n++;
        }
        closedir(d);
        printf("interop: %d safetensors fuzz regressions replayed without a crash\n", n); /* a crash fails the suite */
    }
}

/* config.json beside the file: agreeing fields load, a disagreeing one is
   refused naming it, a malformed one is refused. */
static void test_safetensors_config_json(void) {
    static const struct { const char *json; int ok; const char *msg; } cases[] = {
        {"{\"d_model\": 16, \"n_layer\": 2, \"vocab_size\": 256, \"ssm_cfg\": {\"d_state\": 4, \"d_conv\": 3, \"expand\": 2}, "
         "\"rms_norm\": true, \"residual_in_fp32\": true, \"fused_add_norm\": true, \"pad_vocab_size_multiple\": 8, \"tie_embeddings\": false}", 1, ""},
        {"{\"d_model\": 1792}", 0, "d_model = 1792 but the tensors give 16"},
        {"{\"rms_norm\": false}", 0, "rms_norm"},
        {"{\"ssm_cfg\": {\"d_state\": 16}}", 0, "ssm_cfg.d_state"},
        {"{\"tie_embeddings\": true}", 0, "tie_embeddings"},
        {"{\"d_model\": 16", 0, "config.json is not a JSON object"},
        {"[1, 2]", 0, "config.json"},
    };
    mb_config c = interop_config(MB_NORM_RMSNORM, 1);
    mb_model *m = NULL;
    size_t i;
    mkdir("build/interop_cfg", 0755);
    mb_model_create(&m, &c, 7);
    MBT_CHECK(mb_model_save_safetensors(m, "build/interop_cfg/model.safetensors") == MB_STATUS_OK, "save for config.json test");
    mb_model_free(m);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen("build/interop_cfg/config.json", "wb");
        mb_status s;
        if (f) { fputs(cases[i].json, f); fclose(f); }
        m = NULL;
        s = mb_model_load(&m, "build/interop_cfg/model.safetensors");
        MBT_CHECK(cases[i].ok ? s == MB_STATUS_OK : (s == MB_STATUS_BAD_FORMAT && strstr(mb_last_error(), cases[i].msg) != NULL),
                  "config.json case %d: status %d, '%s'", (int)i, s, s ? mb_last_error() : "");
        mb_model_free(m);
    }
    /* the one mb_model_save_config_json writes is accepted, and names dt_rank (here 2, not d_model/16) */
    m = NULL;
    mb_model_create(&m, &c, 7);
    MBT_CHECK(mb_model_save_config_json(m, "build/interop_cfg/config.json") == MB_STATUS_OK, "write config.json: %s", mb_last_error());
    mb_model_free(m);
    {
        char text[600] = "", want[32];
        FILE *f = fopen("build/interop_cfg/config.json", "rb");
        size_t got = f ? fread(text, 1, sizeof text - 1, f) : 0;
        if (f) fclose(f);
        text[got] = 0;
        snprintf(want, sizeof want, "\"dt_rank\": %d}", c.dt_rank);
        MBT_CHECK(got > 0 && got < 512 && c.dt_rank == 2 && strstr(text, want) && strstr(text, "\"tie_embeddings\": false") && strstr(text, "\"rms_norm\": true"),
                  "config.json names dt_rank 2 (not ceil(16/16)), RMSNorm and an untied head: %s", text);
    }
    m = NULL;
    MBT_CHECK(mb_model_load(&m, "build/interop_cfg/model.safetensors") == MB_STATUS_OK, "load with the written config.json: %s", mb_last_error());
    mb_model_free(m);
    {
        FILE *f = fopen("build/interop_cfg/config.json", "wb");
        if (f) { fputs("{\"ssm_cfg\": {\"dt_rank\": 1}}", f); fclose(f); }
        m = NULL;
        MBT_CHECK(mb_model_load(&m, "build/interop_cfg/model.safetensors") == MB_STATUS_BAD_FORMAT && strstr(mb_last_error(), "ssm_cfg.dt_rank = 1"),
                  "a wrong dt_rank in config.json is refused: '%s'", mb_last_error());
        mb_model_free(m);
    }
    remove("build/interop_cfg/config.json");
    remove("build/interop_cfg/model.safetensors");
    rmdir("build/interop_cfg");
}

/* The CLI: export to safetensors and back is bit-identical to the original
   checkpoint; bad arguments fail cleanly. */
static void test_export_cli(void) {
    int rc = system("mkdir -p build/interop_cli && "
                    "./mambabyte export --model tests/fixtures/model_tiny.bin --format safetensors --out build/interop_cli/m.safetensors >/dev/null && "
                    "grep -q '\"tie_embeddings\": true' build/interop_cli/config.json && "
                    "./mambabyte export --model build/interop_cli/m.safetensors --format mambabyte --out build/interop_cli.bin >/dev/null && "
                    "cmp -s build/interop_cli.bin tests/fixtures/model_tiny.bin");
    MBT_CHECK(rc == 0, "export -> safetensors (+ config.json, read back) -> export -> checkpoint is the fixture byte for byte (rc %d)", rc);
    rc = system("./mambabyte export --model build/interop_cli/m.safetensors --format onnx --out x 2>/dev/null");
    MBT_CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "export --format onnx: usage error (rc %d)", rc);
    rc = system("./mambabyte export --model tests/fuzz/corpus/safetensors/dtype_f64 --format mambabyte --out build/x.bin 2>build/interop_err.txt");
    {
        FILE *f = fopen("build/interop_err.txt", "r");
        char line[512] = "";
        if (f) { if (!fgets(line, sizeof line, f)) line[0] = 0; fclose(f); }
        MBT_CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 1 && strstr(line, "dtype F64"), "export of an F64 file: exit 1, '%s'", line);
    }
    remove("build/interop_cli/m.safetensors");
    remove("build/interop_cli/config.json");
    rmdir("build/interop_cli");
    remove("build/interop_cli.bin");
    remove("build/interop_err.txt");
}

static void test_interop(void) {
    test_rmsnorm_kernel();
    test_interop_layout();
    test_interop_gradcheck_stream();
    test_interop_checkpoint();
    test_interop_adamw();
    test_safetensors_round_trip();
    test_safetensors_corpus();
    test_safetensors_config_json();
    test_export_cli();
}
