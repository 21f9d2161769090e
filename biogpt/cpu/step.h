/* One decoding step of 1 to 8 rows (64 rows x tokens with fp32 weights), every layer in one
call: the CPU engine's step, built on its products (products.h). Part of the extension
`biogpt.cpu._cpu`: _cpu.c includes it once, after products.h, and gives Python `decode_step`.

A step of batch 1 is about a hundred matrix products with small work between them (layer
norms, attention over the cache, GELU, residual sums). Done op by op from Python, that
small work, dispatch mostly, costs a share of every step (benchmarks/decode_overhead.py
measures it); here the whole step, from the tokens' embeddings to their logits, runs in one
OpenMP parallel region. The products are those of products.h, for all the step's rows in one
pass over the weights, shared out over the threads by weight rows as `gemv` shares them, so
each output is the same dot product in the same order whatever the other rows are; the
rest is per-row arithmetic done where it is needed, between barriers, vectorised (GELU's
erf and softmax's exp by the polynomials of products.h). fp32 or bf16 weights and cache, or int8
weights (a scale per row) and an fp32 cache; fp32 activations.
Attention is shared out by (row, head), layer norms by rows, the products by weight rows,
so the logits do not depend on the thread count either, and a row's logits are those it
gets decoded alone.

The layout matches biogpt/model.py: pre-LayerNorm layers, exact (erf) GELU, the token
embedding scaled by embed_scale plus the position row, a cache of shape
(layers, rows, heads, capacity, head_dim) for keys and values, the final LayerNorm, and an
output projection (vocab, hidden) without bias. */

/* The int64 table the step reads (biogpt/cpu/fused.py builds it): sizes and addresses, then
   L_FIELDS addresses per layer. A bias address may be 0; so are the scales (*_S) but for
   int8 weights (P_KIND, the weights' kind, is one of the WEIGHTS_* below). */
enum { P_LAYERS, P_HIDDEN, P_HEADS, P_FFN, P_VOCAB, P_CAPACITY, P_POSITIONS_ROWS, P_KIND,
       P_EMBED, P_POSITIONS, P_FINAL_W, P_FINAL_B, P_HEAD, P_HEAD_S, P_FIELDS };
enum { L_LN1_W, L_LN1_B, L_Q_W, L_Q_B, L_K_W, L_K_B, L_V_W, L_V_B, L_OUT_W, L_OUT_B,
       L_LN2_W, L_LN2_B, L_FC1_W, L_FC1_B, L_FC2_W, L_FC2_B, L_Q_S, L_K_S, L_V_S, L_OUT_S,
       L_FC1_S, L_FC2_S, L_FIELDS };

/* A vector in the step's activations: fp32, with a bf16 copy when the weights are bf16. */
typedef struct {
    float *f32;
    uint16_t *bf16;
} Row;

/* What a step's weights are (the plan's P_KIND): fp32, bf16 (with a bf16 cache and bf16
   copies of the products' inputs), or int8 with a scale per row (fp32 everywhere else). */
enum { WEIGHTS_F32, WEIGHTS_BF16, WEIGHTS_INT8 };

/* y (op) x W^T + b for the m rows of x and the step's weights of kind `kind` (s: an int8
   matrix's row scales; the bf16 product takes x's copy); row i of y starts at
   y + i * ystride. */
AVX512 static void team_gemv(const void *w, const float *s, Row x, const float *b, Row y,
                             int64_t ystride, int64_t n, int64_t k, int op, int kind, int m) {
    if (kind == WEIGHTS_BF16)
        team_gemv_bf16[m](w, NULL, x.bf16, b, y.f32, y.bf16, ystride, n, k, op);
    else if (kind == WEIGHTS_INT8)
        team_gemv_i8[m](w, s, x.f32, b, y.f32, NULL, ystride, n, k, op);
    else if (m > MAX_M) /* a step of more rows than 8: fp32 only (py_decode_step checks) */
        team_gemv_f32_many(w, x.f32, b, y.f32, ystride, n, k, m, op);
    else
        team_gemv_f32[m](w, NULL, x.f32, b, y.f32, NULL, ystride, n, k, op);
}

/* out = LayerNorm(x) * w + b over n elements (and its bf16 copy): mean and variance in
   double, as exact as the fp32 input allows. */
AVX512 static void layer_norm(const float *x, const float *w, const float *b, Row out, int64_t n,
                              double eps) {
    double sum = 0.0, squares = 0.0;
    for (int64_t i = 0; i < n; i++) sum += x[i];
    double mean = sum / (double)n;
    for (int64_t i = 0; i < n; i++) squares += (x[i] - mean) * (x[i] - mean);
    float scale = (float)(1.0 / sqrt(squares / (double)n + eps)), shift = (float)mean;
    for (int64_t i = 0; i < n; i++) out.f32[i] = (x[i] - shift) * scale * w[i] + b[i];
    if (out.bf16) to_bf16(out.f32, out.bf16, n);
}

/* 16 (or `lanes`) elements of a cache row, fp32 or bf16 (widened exactly), from element i. */
AVX512 INLINE __m512 load_cache(const void *row, int bf16, int64_t i, __mmask16 lanes) {
    return bf16 ? load_bf16(row, i, lanes) : load_f32(row, i, lanes);
}

/* Writes n fp32 values into a cache row, rounded to bf16 if the cache is. */
AVX512 INLINE void store_cache(void *row, int bf16, const float *v, int64_t n) {
    if (bf16)
        to_bf16(v, row, n);
    else
        memcpy(row, v, n * sizeof(float));
}

/* Writes one head's key and value for the token at slot `length`: k, v (hd,); keys, values:
   this head's (capacity, hd) block. */
AVX512 INLINE void head_write(const float *k, const float *v, void *keys, void *values, int bf16,
                              int64_t length, int64_t hd) {
    int64_t width = bf16 ? 2 : 4; /* bytes per cache element */
    store_cache((char *)keys + length * hd * width, bf16, k, hd);
    store_cache((char *)values + length * hd * width, bf16, v, hd);
}

/* One head's attention for the new token at slot `length`, whose key and value are in the
   cache already (head_write): it attends to slots 0..length (those `mask` marks real, and
   always its own). q: (hd,); keys, values: this head's (capacity, hd) block, fp32 or bf16
   (the sums are fp32 either way); scores: length + 1 floats of scratch; out: (hd,).
   The scores of the real slots are packed together before the softmax sums them, and the
   weighted sum of values skips the others, so the result is the same wherever unreal slots
   lie (left padding from a join, a draft's rejected tokens): that of the real slots alone,
   bit for bit. */
AVX512 static void head_attention(const float *q, void *keys, void *values, int bf16,
                                  const uint8_t *mask, int64_t length, int64_t hd, float *scores,
                                  float *out) {
    int64_t width = bf16 ? 2 : 4; /* bytes per cache element */
    char *key_rows = keys, *value_rows = values;
    float scale = 1.0f / sqrtf((float)hd), top = -INFINITY;
    int64_t slots = 0; /* real slots, their scores packed at scores[0..slots) */
    for (int64_t s = 0; s <= length; s++) {
        if (s < length && mask && !mask[s]) continue;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < hd; d += 16) {
            __mmask16 lanes = hd - d >= 16 ? 0xFFFF : (__mmask16)((1u << (hd - d)) - 1);
            __m512 key = load_cache(key_rows + s * hd * width, bf16, d, lanes);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, q + d), key, acc);
        }
        float score = _mm512_reduce_add_ps(acc) * scale;
        scores[slots++] = score;
        top = score > top ? score : top;
    }
    __m512 sum = _mm512_setzero_ps(), shift = _mm512_set1_ps(top);
    for (int64_t s = 0; s < slots; s += 16) {
        __mmask16 lanes = slots - s >= 16 ? 0xFFFF : (__mmask16)((1u << (slots - s)) - 1);
        __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, scores + s), shift));
        e = _mm512_maskz_mov_ps(lanes, e); /* lanes past the last slot add nothing */
        _mm512_mask_storeu_ps(scores + s, lanes, e);
        sum = _mm512_add_ps(sum, e);
    }
    float inverse = 1.0f / _mm512_reduce_add_ps(sum);
    for (int64_t d = 0; d < hd; d += 16) {
        __mmask16 lanes = hd - d >= 16 ? 0xFFFF : (__mmask16)((1u << (hd - d)) - 1);
        __m512 acc = _mm512_setzero_ps();
        for (int64_t s = 0, j = 0; s <= length; s++) {
            if (s < length && mask && !mask[s]) continue;
            __m512 value = load_cache(value_rows + s * hd * width, bf16, d, lanes);
            acc = _mm512_fmadd_ps(_mm512_set1_ps(scores[j++] * inverse), value, acc);
        }
        _mm512_mask_storeu_ps(out + d, lanes, acc);
    }
}

/* Scratch of one step of m rows, each (m, width) row-major: the residual stream, a
   normalised copy, q|k|v, the heads' output, the MLP's hidden layer and every head's
   scores (with bf16 copies of the products' inputs when the weights are bf16). */
typedef struct {
    int m;
    float *x, *qkv, *scores;
    Row normed, heads_out, mlp;
} Scratch;

/* Row r of an (m, n) activation and of its bf16 copy. */
static inline Row row_of(Row a, int64_t r, int64_t n) {
    return (Row){a.f32 + r * n, a.bf16 ? a.bf16 + r * n : NULL};
}

/* Where each of the step's rows is in the cache: row r is the token at slot slots[r] of
   cache row cache_rows[r]. Several rows may be consecutive tokens of one cache row (a draft
   verified in one pass): then every key and value is written before any row attends. */
typedef struct {
    const int64_t *cache_rows, *slots;
    int shared; /* whether two rows share a cache row */
} Places;

/* One decoder layer for the step's m rows. keys, values: this layer's (B, heads, capacity,
   head_dim) block of the cache of B rows; mask: (B, capacity), or NULL when every slot is
   real. */
AVX512 static void decoder_layer(const int64_t *p, const int64_t *layer, Scratch *t,
                                 char *keys, char *values, const uint8_t *mask, Places at,
                                 double eps) {
    int64_t h = p[P_HIDDEN], nh = p[P_HEADS], hd = h / nh, f = p[P_FFN], cap = p[P_CAPACITY];
    int kind = (int)p[P_KIND], bf16 = kind == WEIGHTS_BF16, m = t->m;
    int64_t head_bytes = cap * hd * (bf16 ? 2 : 4);
    Row x = {t->x, NULL};
#define AT(field) ((const void *)layer[field])
#define F32(field) ((const float *)layer[field])
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m; r++)
        layer_norm(t->x + r * h, F32(L_LN1_W), F32(L_LN1_B), row_of(t->normed, r, h), h, eps);
    team_gemv(AT(L_Q_W), F32(L_Q_S), t->normed, F32(L_Q_B), (Row){t->qkv, NULL}, 3 * h, h, h,
              STORE, kind, m);
    team_gemv(AT(L_K_W), F32(L_K_S), t->normed, F32(L_K_B), (Row){t->qkv + h, NULL}, 3 * h, h,
              h, STORE, kind, m);
    team_gemv(AT(L_V_W), F32(L_V_S), t->normed, F32(L_V_B), (Row){t->qkv + 2 * h, NULL}, 3 * h,
              h, h, STORE, kind, m);
#pragma omp barrier
    if (at.shared) { /* a row reads the keys its cache row's earlier rows write */
#pragma omp for schedule(static)
        for (int64_t j = 0; j < m * nh; j++) {
            int64_t r = j / nh, block = (at.cache_rows[r] * nh + j % nh) * head_bytes;
            const float *q = t->qkv + r * 3 * h + (j % nh) * hd;
            head_write(q + h, q + 2 * h, keys + block, values + block, bf16, at.slots[r], hd);
        }
    }
#pragma omp for schedule(static)
    for (int64_t j = 0; j < m * nh; j++) { /* head j % nh of row j / nh */
        int64_t r = j / nh, i = j % nh, c = at.cache_rows[r], block = (c * nh + i) * head_bytes;
        const float *q = t->qkv + r * 3 * h + i * hd;
        float *out = t->heads_out.f32 + r * h + i * hd;
        if (!at.shared)
            head_write(q + h, q + 2 * h, keys + block, values + block, bf16, at.slots[r], hd);
        head_attention(q, keys + block, values + block, bf16, mask ? mask + c * cap : NULL,
                       at.slots[r], hd, t->scores + j * cap, out);
        if (bf16) to_bf16(out, t->heads_out.bf16 + r * h + i * hd, hd);
    }
    team_gemv(AT(L_OUT_W), F32(L_OUT_S), t->heads_out, F32(L_OUT_B), x, h, h, h, ADD, kind, m);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m; r++)
        layer_norm(t->x + r * h, F32(L_LN2_W), F32(L_LN2_B), row_of(t->normed, r, h), h, eps);
    team_gemv(AT(L_FC1_W), F32(L_FC1_S), t->normed, F32(L_FC1_B), t->mlp, f, f, h, GELU, kind,
              m);
#pragma omp barrier
    team_gemv(AT(L_FC2_W), F32(L_FC2_S), t->mlp, F32(L_FC2_B), x, h, h, f, ADD, kind, m);
#pragma omp barrier
#undef AT
#undef F32
}

/* One element of an embedding table, fp32 or bf16 (widened exactly). */
static inline float table_at(const void *table, int bf16, int64_t i) {
    if (!bf16) return ((const float *)table)[i];
    uint32_t bits = (uint32_t)((const uint16_t *)table)[i] << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* The step of m rows (1..MAX_M; 1..MAX_MANY with fp32 weights): logits (m, vocab) of the
   tokens after `tokens`, row r fed at slot `at.slots[r]` of cache row `at.cache_rows[r]`
   with position row `positions[r]`; the cache, of `batch` rows, gets their keys and values. Returns 0, or -1 if out of
   memory. */
AVX512 static int decode_step(const int64_t *p, void *keys, void *values, const uint8_t *mask,
                              const int64_t *tokens, const int64_t *positions, int m,
                              int64_t batch, Places at, float *logits, int threads,
                              float embed_scale, double eps) {
    int64_t h = p[P_HIDDEN], nh = p[P_HEADS], f = p[P_FFN], cap = p[P_CAPACITY];
    int kind = (int)p[P_KIND], bf16 = kind == WEIGHTS_BF16;
    /* per row, fp32: x, normed, qkv (3h), heads_out, mlp (f), scores (nh cap); then bf16
       copies of normed, heads_out and mlp (in 2-byte halves of floats) */
    int64_t per_row = 6 * h + f + nh * cap;
    int64_t floats = m * per_row + (m * (h + h + f) + 2) / 2;
    float *buffer = aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
    if (buffer == NULL) return -1;
    uint16_t *halves = (uint16_t *)(buffer + m * per_row);
    Scratch t = {.m = m, .x = buffer, .qkv = buffer + 2 * m * h,
                 .scores = buffer + 6 * m * h + m * f};
    t.normed = (Row){buffer + m * h, bf16 ? halves : NULL};
    t.heads_out = (Row){buffer + 5 * m * h, bf16 ? halves + m * h : NULL};
    t.mlp = (Row){buffer + 6 * m * h, bf16 ? halves + 2 * m * h : NULL};
    for (int r = 0; r < m; r++)
        for (int64_t i = 0; i < h; i++)
            t.x[r * h + i] =
                table_at((const void *)p[P_EMBED], bf16, tokens[r] * h + i) * embed_scale +
                table_at((const void *)p[P_POSITIONS], bf16, positions[r] * h + i);
    int64_t layer_bytes = batch * nh * cap * (h / nh) * (bf16 ? 2 : 4);
#pragma omp parallel num_threads(threads)
    {
        for (int64_t l = 0; l < p[P_LAYERS]; l++)
            decoder_layer(p, p + P_FIELDS + l * L_FIELDS, &t, (char *)keys + l * layer_bytes,
                          (char *)values + l * layer_bytes, mask, at, eps);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < m; r++)
            layer_norm(t.x + r * h, (const float *)p[P_FINAL_W], (const float *)p[P_FINAL_B],
                       row_of(t.normed, r, h), h, eps);
        team_gemv((const void *)p[P_HEAD], (const float *)p[P_HEAD_S], t.normed, NULL,
                  (Row){logits, NULL}, p[P_VOCAB], p[P_VOCAB], h, STORE, kind, m);
    }
    free(buffer);
    return 0;
}
