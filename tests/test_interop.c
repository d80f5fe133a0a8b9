/* test_interop.c - the mamba_ssm-shaped models (RMSNorm, untied head) and
   their files: gradients, streaming, checkpoints, AdamW.  Included by
   test.c after test_model.c (uses its tiny_config, perturb_params and the
   config-parameterised gradient and streaming checks). */

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
            MBT_CHECK(memcmp(mb_model_config(m), mb_model_config(m2), sizeof(mb_config)) == 0 &&
                          mb_model_num_params(m) == mb_model_num_params(m2) &&
                          memcmp(mb_model_params(m), mb_model_params(m2), (size_t)mb_model_num_params(m) * 4) == 0,
                      "checkpoint v=%d round trip bit-exact", v);
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

static void test_interop(void) {
    test_rmsnorm_kernel();
    test_interop_layout();
    test_interop_gradcheck_stream();
    test_interop_checkpoint();
    test_interop_adamw();
}
