static mb_status mb_stream_feed(mb_stream *s, const uint8_t *b, int64_t n, float *logits) { int64_t i; for (i = 0; i < n; i++) { const float *l = mb_stream_step(s, b[i]); if (logits) memcpy(logits + i * 256, l, 1024); } return MB_STATUS_OK; }
static int mb_sample_byte(const float *logits, double temp, int top_k, uint64_t *rng) {
    int b;
        if (temp <= 0.0) {
            b = mb__argmax(logits, 256);
        } else {
            float p[256], scaled[256], cut = -INFINITY;
            double u, acc = 0.0;
            int v;
            for (v = 0; v < 256; v++) scaled[v] = (float)(logits[v] / temp);
            if (top_k > 0 && top_k < 256) { /* the k-th largest logit is the cut */
                float sorted[256];
                int a, c;
                memcpy(sorted, scaled, sizeof sorted);
                for (a = 0; a < top_k; a++)
                    for (c = a + 1; c < 256; c++)
                        if (sorted[c] > sorted[a]) { float t = sorted[a]; sorted[a] = sorted[c]; sorted[c] = t; }
                cut = sorted[top_k - 1];
                for (v = 0; v < 256; v++) if (scaled[v] < cut) scaled[v] = -INFINITY;
            }
            mb_softmax(p, scaled, 1, 256);
            u = mb__rng_uniform(rng);
            for (b = 0; b < 255; b++) { acc += p[b]; if (u < acc) break; }
        }
    return b;
}
