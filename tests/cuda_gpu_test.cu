/* cuda_gpu_test.cu - `make test-cuda`: every CUDA kernel of mambabyte_cuda.cuh
   against the CPU specification in mambabyte.h on a real GPU, at several
   sizes (the seed's shapes included), then full-model parity of
   mb_cuda_trainer / mb_cuda_stream with mb_model / mb_stream, determinism
   (two identical steps give bitwise-equal results) and bf16 sanity.
   Prints "N passed, M failed" last; exits 0 only when all passed, 77
   (skipped) when there is no GPU.

   Build: nvcc -O2 $(CUDA_ARCH) -Xcompiler -fopenmp tests/cuda_gpu_test.cu -o build/cuda_gpu_test -lcublas */
#define MAMBABYTE_IMPLEMENTATION
#include "../mambabyte.h"
#define MAMBABYTE_CUDA_IMPLEMENTATION
#include "../mambabyte_cuda.cuh"
#include "mbtest.h"

#include <vector>

int mbt_passed = 0, mbt_failed = 0, mbt_skipped = 0;

namespace {

typedef std::vector<float> fvec;

fvec randn(mbt_rng *r, size_t n, double scale = 1.0, double shift = 0.0) {
    fvec v(n);
    for (size_t i = 0; i < n; i++) v[i] = (float)(shift + scale * mbt_normal(r));
    return v;
}

/* A device copy of a host vector, freed at scope exit. */
template <class T> struct dbuf {
    T *p = nullptr;
    size_t n = 0;
    explicit dbuf(size_t count) : n(count) {
        if (cudaMalloc((void **)&p, (count ? count : 1) * sizeof(T)) != cudaSuccess) {
            fprintf(stderr, "cudaMalloc of %zu bytes failed\n", count * sizeof(T));
            exit(1);
        }
        cudaMemset(p, 0xFF, (count ? count : 1) * sizeof(T)); /* NaN: unwritten output shows */
    }
    explicit dbuf(const std::vector<T> &h) : dbuf(h.size()) { cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice); }
    ~dbuf() { cudaFree(p); }
    std::vector<T> get() const {
        std::vector<T> h(n);
        cudaDeviceSynchronize();
        cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
        return h;
    }
    dbuf(const dbuf &) = delete;
    dbuf &operator=(const dbuf &) = delete;
};

double max_rel(const float *a, const float *b, size_t n) {
    double m = 0.0, e = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= e)) e = d;
        if (fabs((double)b[i]) > m) m = fabs((double)b[i]);
    }
    return e / (m > 1e-30 ? m : 1e-30);
}

#define CHECK_CLOSE(name, got, ref, n, tol)                                                                  \
    do {                                                                                                     \
        double l2_ = mbt_rel_l2((got), (ref), (int64_t)(n)), mx_ = max_rel((got), (ref), (size_t)(n));       \
        MBT_CHECK(l2_ <= (tol) && mx_ <= 10 * (tol), "%s: rel L2 %.3g, max rel %.3g (tol %.1g)", name, l2_, mx_, \
                  (double)(tol));                                                                            \
    } while (0)

#define OK(call) MBT_CHECK((call) == MB_STATUS_OK, "%s: %s", #call, mb_cuda_last_error())

void test_cross_entropy(int64_t rows, float eps) {
    mbt_rng r = {1};
    const int V = 256;
    fvec x = randn(&r, (size_t)rows * V, 3.0);
    std::vector<int32_t> y((size_t)rows);
    int64_t nv = 0;
    for (int64_t i = 0; i < rows; i++) {
        y[i] = i % 13 == 5 ? -100 : (int32_t)(mbt_next(&r) % V);
        nv += y[i] != -100;
    }
    for (int i = 0; i < V; i++) x[i] = -INFINITY;
    x[V + 7] = INFINITY;
    x[2 * V + 1] = NAN;
    mb_ce_options o = mb_ce_options_default();
    o.label_smoothing = eps;
    o.reduction = MB_REDUCTION_NONE;
    fvec rl((size_t)rows), rdx(x.size());
    mb_cross_entropy_forward(rl.data(), x.data(), y.data(), rows, V, &o);
    o.reduction = MB_REDUCTION_MEAN;
    float one = 1.0f;
    mb_cross_entropy_backward(rdx.data(), &one, x.data(), y.data(), rows, V, &o);
    dbuf<float> dx(x), dl((size_t)rows);
    dbuf<int32_t> dy(y);
    OK(mbc::cross_entropy(dl.p, dx.p, dx.p, dy.p, rows, V, -100, eps, nullptr, (float)(1.0 / nv)));
    fvec l = dl.get(), g = dx.get();
    int bad = 0;
    for (int64_t i = 0; i < rows; i++) bad += !mbt_close(l[i], rl[i], 1e-5, 1e-6);
    MBT_CHECK(bad == 0, "gpu ce loss rows=%lld eps=%g: %d differ", (long long)rows, eps, bad);
    int64_t mm = mbt_first_mismatch(g.data(), rdx.data(), (int64_t)g.size(), 1e-4, 1e-9);
    MBT_CHECK(mm < 0, "gpu ce dlogits rows=%lld eps=%g: first mismatch %lld", (long long)rows, eps, (long long)mm);
}

void test_layernorm(int64_t N, int C) {
    mbt_rng r = {2};
    fvec x = randn(&r, (size_t)(N * C), 2.0, 0.5), w = randn(&r, C, 0.5, 1.0), b = randn(&r, C, 0.3);
    fvec ro(x.size()), rm((size_t)N), rs((size_t)N);
    mb__layernorm_forward(ro.data(), rm.data(), rs.data(), x.data(), w.data(), b.data(), N, C);
    dbuf<float> dx(x), dw(w), db(b), dout(x.size()), dm((size_t)N), dr((size_t)N);
    OK(mbc::layernorm_forward(dout.p, dm.p, dr.p, dx.p, dw.p, db.p, N, C));
    fvec o = dout.get();
    CHECK_CLOSE("gpu layernorm forward", o.data(), ro.data(), o.size(), 1e-6);
    fvec g = randn(&r, x.size()), di = randn(&r, x.size()), gw = randn(&r, C), gb = randn(&r, C);
    fvec rdi = di, rgw = gw, rgb = gb;
    mb__layernorm_backward(rdi.data(), rgw.data(), rgb.data(), g.data(), x.data(), w.data(), rm.data(), rs.data(), N, C);
    dbuf<float> dg(g), ddi(di), dgw(gw), dgb(gb), dscr((size_t)(mbc::ln_backward_parts(N) * 2 * C));
    OK(mbc::layernorm_backward(ddi.p, dgw.p, dgb.p, dscr.p, dg.p, dx.p, dw.p, dm.p, dr.p, N, C));
    fvec a = ddi.get(), bw = dgw.get(), bb = dgb.get();
    CHECK_CLOSE("gpu layernorm dinp", a.data(), rdi.data(), a.size(), 1e-6);
    CHECK_CLOSE("gpu layernorm dw", bw.data(), rgw.data(), bw.size(), 1e-5);
    CHECK_CLOSE("gpu layernorm db", bb.data(), rgb.data(), bb.size(), 1e-5);
}

void test_embedding(int64_t N, int C) {
    mbt_rng r = {3};
    std::vector<uint8_t> tok((size_t)N);
    /* as text: 15 % spaces, so that byte is cut into many pieces */
    for (auto &t : tok) t = mbt_next(&r) % 100 < 15 ? (uint8_t)' ' : (uint8_t)(mbt_next(&r) % 97);
    fvec wte = randn(&r, (size_t)256 * C), ro((size_t)(N * C));
    mb__embedding_forward(ro.data(), tok.data(), wte.data(), N, C);
    dbuf<uint8_t> dt(tok);
    dbuf<float> dw(wte), dout((size_t)(N * C));
    OK(mbc::embedding_forward(dout.p, dt.p, dw.p, N, C));
    MBT_CHECK(dout.get() == ro, "gpu embedding forward (bitwise)");
    fvec g = randn(&r, ro.size()), gw = randn(&r, wte.size()), rgw = gw;
    mb__embedding_backward(rgw.data(), g.data(), tok.data(), N, C);
    std::vector<int64_t> bk((size_t)(MBC_BUCKET_TABLE + N));
    mbc::token_buckets(bk.data(), bk.data() + MBC_BUCKET_TABLE, tok.data(), N);
    dbuf<int64_t> dbk(bk);
    dbuf<float> dg(g), dgw(gw), dgw2(gw), dscr((size_t)(mbc::embedding_pieces_max(N) * C));
    OK(mbc::embedding_backward(dgw.p, dscr.p, dg.p, dbk.p, dbk.p + MBC_BUCKET_TABLE, N, C));
    OK(mbc::embedding_backward(dgw2.p, dscr.p, dg.p, dbk.p, dbk.p + MBC_BUCKET_TABLE, N, C));
    fvec a = dgw.get();
    /* bytes of several pieces are summed in another order than the CPU's */
    CHECK_CLOSE("gpu embedding backward", a.data(), rgw.data(), a.size(), 1e-6);
    MBT_CHECK(dgw2.get() == a, "gpu embedding backward: a second run gives the same bits");
}

void test_matmul(int64_t N, int IC, int OC, int64_t ldi) {
    mbt_rng r = {4};
    fvec x = randn(&r, (size_t)(N * ldi)), w = randn(&r, (size_t)OC * IC), ro((size_t)(N * OC));
    mb__matmul_forward(ro.data(), x.data(), ldi, w.data(), N, IC, OC);
    mbc::blas_t h;
    OK(mbc::blas_create(&h));
    dbuf<float> dx(x), dw(w), dout((size_t)(N * OC));
    OK(mbc::matmul_forward(h, dout.p, dx.p, ldi, dw.p, N, IC, OC));
    fvec o = dout.get();
    CHECK_CLOSE("gpu matmul forward", o.data(), ro.data(), o.size(), 1e-5);
    fvec g = randn(&r, o.size()), gx = randn(&r, x.size()), gw = randn(&r, w.size()), rgx = gx, rgw = gw;
    mb__matmul_backward(rgx.data(), rgw.data(), g.data(), x.data(), ldi, w.data(), N, IC, OC);
    dbuf<float> dg(g), dgx(gx), dgw(gw);
    OK(mbc::matmul_backward(h, dgx.p, 1.0f, dgw.p, dg.p, dx.p, ldi, dw.p, N, IC, OC));
    fvec a = dgx.get(), b = dgw.get();
    CHECK_CLOSE("gpu matmul dinp", a.data(), rgx.data(), a.size(), 1e-5);
    CHECK_CLOSE("gpu matmul dw", b.data(), rgw.data(), b.size(), 1e-5);
    mbc::blas_destroy(h);
}

void test_conv(int B, int T, int Di, int K) {
    mbt_rng r = {5};
    const int64_t N = (int64_t)B * T;
    fvec xz = randn(&r, (size_t)(N * 2 * Di)), w = randn(&r, (size_t)Di * K, 0.5), bias = randn(&r, Di, 0.2);
    fvec ro((size_t)(N * Di));
    mb__conv1d_forward(ro.data(), xz.data(), w.data(), bias.data(), B, T, Di, K);
    dbuf<float> dxz(xz), dw(w), db(bias), dout(ro.size());
    OK(mbc::conv1d_forward(dout.p, dxz.p, dw.p, db.p, B, T, Di, K));
    fvec o = dout.get();
    CHECK_CLOSE("gpu conv1d forward", o.data(), ro.data(), o.size(), 1e-6);
    fvec g = randn(&r, o.size()), gx = randn(&r, xz.size()), gw = randn(&r, w.size()), gb = randn(&r, Di);
    fvec rgx = gx, rgw = gw, rgb = gb;
    mb__conv1d_backward(rgx.data(), rgw.data(), rgb.data(), g.data(), xz.data(), w.data(), bias.data(), B, T, Di, K);
    dbuf<float> dg(g), dgx(gx), dgw(gw), dgb(gb), dscr((size_t)(mbc::conv_backward_parts(B, T) * Di * (K + 1)));
    OK(mbc::conv1d_backward(dgx.p, dgw.p, dgb.p, dscr.p, dg.p, dxz.p, dw.p, db.p, B, T, Di, K));
    fvec a = dgx.get(), bw = dgw.get(), bb = dgb.get();
    CHECK_CLOSE("gpu conv1d dxz", a.data(), rgx.data(), a.size(), 1e-6);
    CHECK_CLOSE("gpu conv1d dw", bw.data(), rgw.data(), bw.size(), 1e-5);
    CHECK_CLOSE("gpu conv1d dbias", bb.data(), rgb.data(), bb.size(), 1e-5);
}

void test_scan(int B, int T, int Di, int S, int R, int chunk, double dt_shift) {
    mbt_rng r = {6};
    const int X = R + 2 * S;
    const int64_t N = (int64_t)B * T, nch = (T + chunk - 1) / chunk;
    fvec u = randn(&r, (size_t)(N * Di)), delta = randn(&r, (size_t)(N * Di), 0.5), dtb = randn(&r, Di, 0.5, -2.0 + dt_shift);
    fvec Alog((size_t)Di * S), xdbl = randn(&r, (size_t)(N * X)), Dp = randn(&r, Di), xz = randn(&r, (size_t)(N * 2 * Di));
    for (size_t i = 0; i < Alog.size(); i++) Alog[i] = dt_shift > 0 ? 0.0f : (float)log(i % S + 1.0);
    fvec ro((size_t)(N * Di)), rst((size_t)(B * nch * Di * S));
    mb__scan_forward(ro.data(), rst.data(), u.data(), delta.data(), dtb.data(), Alog.data(), xdbl.data(), Dp.data(),
                     xz.data(), B, T, Di, S, R, chunk);
    dbuf<float> du_(u), dd(delta), ddtb(dtb), dA(Alog), dx(xdbl), dD(Dp), dxz(xz), dout(ro.size()), dst(rst.size());
    dbuf<float> scr((size_t)mbc::scan_scratch_floats(B, T, Di, S, chunk));
    OK(mbc::scan_forward(dout.p, dst.p, scr.p, du_.p, dd.p, ddtb.p, dA.p, dx.p, dD.p, dxz.p, B, T, Di, S, R, chunk));
    char name[128];
    fvec o = dout.get(), st = dst.get();
    snprintf(name, sizeof name, "gpu scan forward B%d T%d Di%d S%d chunk%d dt+%g", B, T, Di, S, chunk, dt_shift);
    CHECK_CLOSE(name, o.data(), ro.data(), o.size(), 1e-5);
    CHECK_CLOSE("gpu scan states", st.data(), rst.data(), st.size(), 1e-5);
    fvec g = randn(&r, o.size()), gu = randn(&r, u.size()), gbias = randn(&r, Di), gA = randn(&r, Alog.size());
    fvec gx = randn(&r, xdbl.size()), gD = randn(&r, Di), gz = randn(&r, xz.size());
    fvec rgu = gu, rdelta(u.size()), rgbias = gbias, rgA = gA, rgx = gx, rgD = gD, rgz = gz;
    fvec cscr((size_t)(B * ((int64_t)Di * S + 2 * Di)));
    mb__scan_backward(rgu.data(), rdelta.data(), rgbias.data(), rgA.data(), rgx.data(), rgD.data(), rgz.data(),
                      cscr.data(), g.data(), rst.data(), u.data(), delta.data(), dtb.data(), Alog.data(), xdbl.data(),
                      Dp.data(), xz.data(), B, T, Di, S, R, chunk);
    dbuf<float> dg(g), dgu(gu), dgdelta(u.size()), dgbias(gbias), dgA(gA), dgx(gx), dgD(gD), dgz(gz);
    for (int rep = 0; rep < 2; rep++) { /* twice from the same inputs: bitwise equal */
        std::vector<fvec> got;
        cudaMemcpy(dgu.p, gu.data(), gu.size() * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(dgbias.p, gbias.data(), gbias.size() * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(dgA.p, gA.data(), gA.size() * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(dgx.p, gx.data(), gx.size() * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(dgD.p, gD.data(), gD.size() * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(dgz.p, gz.data(), gz.size() * 4, cudaMemcpyHostToDevice);
        OK(mbc::scan_backward(dgu.p, dgdelta.p, dgbias.p, dgA.p, dgx.p, dgD.p, dgz.p, scr.p, dg.p, dst.p, du_.p, dd.p,
                              ddtb.p, dA.p, dx.p, dD.p, dxz.p, B, T, Di, S, R, chunk));
        static std::vector<fvec> first;
        got = {dgu.get(), dgdelta.get(), dgbias.get(), dgA.get(), dgx.get(), dgD.get(), dgz.get()};
        if (rep == 0) {
            const fvec *ref[] = {&rgu, &rdelta, &rgbias, &rgA, &rgx, &rgD, &rgz};
            const char *nm[] = {"du", "ddelta", "ddt_bias", "dA_log", "dxdbl", "dD", "dxz"};
            for (int i = 0; i < 7; i++) {
                snprintf(name, sizeof name, "gpu scan %s (T%d chunk%d dt+%g)", nm[i], T, chunk, dt_shift);
                CHECK_CLOSE(name, got[i].data(), ref[i]->data(), got[i].size(), 1e-4);
            }
            first = got;
        } else {
            MBT_CHECK(got == first, "gpu scan backward deterministic (T%d chunk%d)", T, chunk);
        }
    }
}

void test_model(int B, int T, int precision) {
    mbt_rng r = {7};
    mb_config cfg = mb_config_default();
    mb_model *m = nullptr;
    mb_cuda_trainer *t = nullptr;
    OK(mb_model_create(&m, &cfg, 1));
    OK(mb_cuda_trainer_create(&t, &cfg, B, T, precision));
    if (!m || !t) { mb_model_free(m); mb_cuda_trainer_free(t); return; }
    const int64_t P = mb_model_num_params(m), N = (int64_t)B * T;
    float *pp = mb_model_params(m);
    for (int64_t i = 0; i < P; i++) pp[i] += (float)(0.01 * mbt_normal(&r));
    std::vector<uint8_t> in((size_t)N);
    std::vector<int32_t> tg((size_t)N);
    for (int64_t i = 0; i < N; i++) { in[i] = (uint8_t)(32 + mbt_next(&r) % 90); tg[i] = (int32_t)(32 + mbt_next(&r) % 90); }
    OK(mb_cuda_trainer_upload(t, pp, nullptr, nullptr));
    float rl = 0, gl = 0;
    mb_model_zero_grad(m);
    OK(mb_model_forward(m, in.data(), tg.data(), B, T, &rl));
    OK(mb_model_backward(m));
    OK(mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &gl));
    const char *pr = precision == 1 ? "bf16" : precision == 2 ? "tf32" : "fp32";
    MBT_CHECK(fabs(gl - rl) <= (precision == 1 ? 1e-2 : precision == 2 ? 3e-3 : 1e-5) * fabs(rl), "gpu model loss %s B%d T%d: %.7g vs CPU %.7g", pr, B,
              T, gl, rl);
    fvec g((size_t)P);
    OK(mb_cuda_trainer_grads(t, g.data()));
    const int nt = mb_config_tensors(&cfg, nullptr);
    std::vector<mb_tensor_info> ti((size_t)nt);
    mb_config_tensors(&cfg, ti.data());
    double worst = 0;
    const char *wn = "";
    for (auto &x : ti) {
        double e = mbt_rel_l2(g.data() + x.offset, mb_model_grads(m) + x.offset, x.numel);
        if (!(e <= worst)) { worst = e; wn = x.name; }
    }
    MBT_CHECK(worst <= (precision == 1 ? 5e-2 : precision == 2 ? 3e-2 : 1e-4), "gpu model grads %s B%d T%d: worst rel L2 %.3g (%s)", pr, B, T, worst, wn);
    /* determinism: the same step again gives bitwise the same gradients */
    OK(mb_cuda_trainer_zero_grad(t));
    OK(mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &gl));
    fvec g2((size_t)P);
    OK(mb_cuda_trainer_grads(t, g2.data()));
    MBT_CHECK(g2 == g, "gpu model %s: a repeated step is bitwise identical", pr);
    if (!precision) { /* one optimizer step vs the CPU */
        fvec am((size_t)P, 0.0f), av((size_t)P, 0.0f);
        const double rn = mb_grad_norm(mb_model_grads(m), P);
        const float coef = mb_clip_coef(rn, 1.0);
        if (coef < 1.0f) for (int64_t i = 0; i < P; i++) mb_model_grads(m)[i] *= coef;
        mb_adamw_update(m, am.data(), av.data(), 1, 1e-3, 0.9, 0.95, 1e-8, 0.1);
        double norm = 0;
        int applied = 0;
        OK(mb_cuda_trainer_update(t, 1.0f, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1.0, 1, &norm, &applied));
        MBT_CHECK(applied && fabs(norm - rn) <= 1e-4 * rn, "gpu update norm %.7g vs %.7g", norm, rn);
        fvec p2((size_t)P);
        OK(mb_cuda_trainer_download(t, p2.data(), nullptr, nullptr));
        CHECK_CLOSE("gpu params after one AdamW step", p2.data(), mb_model_params(m), (size_t)P, 1e-5);
        /* streaming parity */
        mb_stream *cs = nullptr;
        mb_cuda_stream *gs = nullptr;
        OK(mb_stream_create(&cs, m));
        OK(mb_cuda_stream_create(&gs, &cfg, mb_model_params(m)));
        if (cs && gs) {
            fvec lg(256);
            double we = 0;
            for (int i = 0; i < 64; i++) {
                const float *ref = mb_stream_step(cs, in[(size_t)i]);
                OK(mb_cuda_stream_step(gs, in[(size_t)i], lg.data()));
                double e = mbt_rel_l2(lg.data(), ref, 256);
                if (!(e <= we)) we = e;
            }
            MBT_CHECK(we < 1e-4, "gpu stream vs mb_stream_step: worst rel L2 %.3g", we);
        }
        mb_stream_free(cs);
        mb_cuda_stream_free(gs);
    }
    mb_cuda_trainer_free(t);
    mb_model_free(m);
}

/* CUDA graphs on the device: the captured steps end bit for bit where the
   launched ones do, and the capture was not refused (graphs still on). */
void test_graphs(int B, int T) {
    mb_config cfg = mb_config_default();
    mb_model *m = nullptr;
    mb_cuda_trainer *t[2] = {nullptr, nullptr};
    OK(mb_model_create(&m, &cfg, 9));
    for (int g = 0; g < 2; g++) {
        OK(mb_cuda_trainer_create(&t[g], &cfg, B, T, 0));
        if (!m || !t[g]) { mb_cuda_trainer_free(t[0]); mb_model_free(m); return; }
        OK(mb_cuda_trainer_set_graphs(t[g], g));
        OK(mb_cuda_trainer_upload(t[g], mb_model_params(m), nullptr, nullptr));
    }
    const int64_t N = (int64_t)B * T, P = mb_model_num_params(m);
    std::vector<uint8_t> in((size_t)N);
    std::vector<int32_t> tg((size_t)N);
    fvec loss[2];
    for (int step = 0; step < 5; step++) {
        for (int64_t i = 0; i < N; i++) { in[(size_t)i] = (uint8_t)(i * 7 + step); tg[(size_t)i] = (i + step) % 3 ? (int32_t)(i * 13 % 256) : -100; }
        for (int g = 0; g < 2; g++) {
            float l = 0;
            double norm = 0;
            int applied = 0;
            OK(mb_cuda_trainer_forward_backward(t[g], in.data(), tg.data(), &l));
            OK(mb_cuda_trainer_update(t[g], 1.0f, 1e-3 * (step + 1), 0.9, 0.95, 1e-8, 0.1, 1.0, step + 1, &norm, &applied));
            loss[g].push_back(l);
        }
    }
    fvec p0((size_t)P), p1((size_t)P);
    OK(mb_cuda_trainer_download(t[0], p0.data(), nullptr, nullptr));
    OK(mb_cuda_trainer_download(t[1], p1.data(), nullptr, nullptr));
    MBT_CHECK(mb_cuda_trainer_graphs(t[1]) == 1, "gpu graphs: the capture was refused (%s)", mb_cuda_last_error());
    MBT_CHECK(loss[0] == loss[1] && p0 == p1, "gpu graphs B%d T%d: 5 replayed steps bitwise equal to 5 launched ones", B, T);
    for (int g = 0; g < 2; g++) mb_cuda_trainer_free(t[g]);
    mb_model_free(m);
}

} /* namespace */

/* --small: only the small (ragged) shapes, for compute-sanitizer runs. */
int main(int argc, char **argv) {
    const bool small = argc > 1 && !strcmp(argv[1], "--small");
    if (mb_cuda_device_count() < 1) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    for (float eps : {0.0f, 0.1f}) {
        test_cross_entropy(37, eps);
        if (!small) test_cross_entropy(16384, eps);
    }
    test_layernorm(37, 50);
    if (!small) test_layernorm(16384, 192);
    if (!small) test_embedding(16384, 192);
    test_matmul(37, 19, 13, 25);
    if (!small) test_matmul(4096, 192, 768, 192);
    if (!small) test_matmul(4096, 12, 384, 44); /* dt_proj: strided input */
    for (int K : {4, 3}) {
        test_conv(2, 70, 40, K);
        if (!small) test_conv(16, 1024, 384, K);
    }
    test_scan(2, 70, 24, 16, 3, 16, 0.0);
    test_scan(2, 70, 24, 16, 3, 32, 0.0);
    test_scan(2, 70, 17, 16, 3, 16, 50.0);
    test_scan(2, 33, 10, 5, 2, 8, 0.0);
    test_scan(2, 45, 40, 64, 3, 16, 0.0); /* d_state 64, T not a multiple of the chunk */
    test_scan(1, 21, 70, 64, 2, 32, 0.0); /* T < chunk */
    test_scan(2, 67, 33, 20, 4, 32, 0.0);
    if (!small) test_scan(2, 1024, 384, 64, 12, 32, 0.0);
    if (!small) test_scan(4, 1024, 384, 16, 12, 32, 0.0);
    if (!small) test_scan(2, 1024, 384, 16, 12, 64, 0.0);
    test_model(2, 256, 0);
    if (!small) test_model(4, 1024, 0);
    test_model(2, 256, 1);
    test_model(2, 256, 2); /* tf32 */
    test_graphs(2, 100);
    printf("%d passed, %d failed, %d skipped\n", mbt_passed, mbt_failed, mbt_skipped);
    return mbt_failed == 0 && mbt_passed > 0 ? 0 : 1;
}
