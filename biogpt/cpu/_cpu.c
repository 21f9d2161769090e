/* The CPU decoding kernels: a few rows times a weight matrix at the speed memory streams the
weights (y = W x + b), and a whole decoding step of 1 to 8 rows (to 64 with fp32 weights)
built on it.

Decoding one token multiplies a single row by every weight matrix of the model, so a step
takes as long as reading the weights from memory. The kernel reads the rows of W as they
lie in memory (row-major (n, k), the layout of nn.Linear and of the token embedding, so the
tied output projection needs no copy) and keeps four rows in flight (two for six to eight
rows of x, or, for int8 weights, a second pass over each group of four for the rest),
each with its own 16-lane fp32 accumulator per row of x, and asks for the weights 48 KB
ahead into L2 while it reads, so that more of memory's latency is spent in parallel than
the hardware prefetcher alone manages. So it reads the weights faster than oneDNN's kernel
on fp32 weights prepacked for one row and than fbgemm's fp16-weight kernel on bf16 ones,
and about as fast as torch.sum streams the same bytes: benchmarks/gemv.py races the four on
every matrix shape of the model (its results are in benchmarks/README.md).

Weights are fp32, bf16 or int8 (with one fp32 scale per row, applied to the row's sum); b
and y are fp32, x is fp32 or, with bf16 weights, bf16. A bf16 or int8 weight becomes fp32
exactly (a bf16's 16 bits are the top half of an fp32), and a product of two bf16 numbers
is exact in fp32, so the products and sums are fp32 ones in every case.
Each output is one dot product summed in a fixed order (16 lanes over k, then the lanes),
computed by one thread whatever the thread count: results do not depend on the number of
threads or on the other rows.

Built as the optional extension `biogpt.cpu._cpu` (see setup.py); the AVX-512 code is compiled
for that target only, so the module loads on any x86-64 CPU and says through `supported()`
whether this one can run it. Python calls it with raw data pointers (biogpt/cpu/gemv.py and
biogpt/cpu/fused.py check shapes, dtypes and contiguity first).
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_M 8     /* rows of x one pass over the weights serves in registers (a step's rows) */
#define MAX_MANY 64 /* rows of fp32 x one call takes (a short prompt's tokens) */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <omp.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define INLINE static inline __attribute__((always_inline))
#define ROWS 4 /* weight rows in a group: four read streams */

AVX512 INLINE __m512 load_f32(const void *w, int64_t i, __mmask16 lanes) {
    return _mm512_maskz_loadu_ps(lanes, (const float *)w + i);
}

/* bf16 -> fp32 is exact: widen to 32 bits and shift into the top half. */
AVX512 INLINE __m512 load_bf16(const void *w, int64_t i, __mmask16 lanes) {
    __m256i half = _mm256_maskz_loadu_epi16(lanes, (const uint16_t *)w + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}


/* The four kinds of products, as loads and a multiply-add over one STEP of k:
   fp32 weights and rows (16 lanes); bf16 or int8 weights widened against fp32 rows (16
   lanes); and
   bf16 weights against bf16 rows (a bf16 model's activations), where vdpbf16ps multiplies
   32 pairs at a time, exactly (8-bit by 8-bit significands fit in fp32), and adds them into
   16 fp32 lanes: half the instructions of widening the weights first, which is what keeps
   a bf16 row at memory speed. Denormal inputs count as zero (the instruction's rule). */
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

/* Loads of one STEP of k; a full step (every lane, known when inlined) is a plain load. */
AVX512 INLINE __m512 load_x_f32(const float *x, __mmask16 lanes) {
    return lanes == 0xFFFF ? _mm512_loadu_ps(x) : _mm512_maskz_loadu_ps(lanes, x);
}
AVX512 INLINE __m512 load_w_f32(const float *w, __mmask16 lanes) { return load_x_f32(w, lanes); }
AVX512 INLINE __m512 load_w_bf16(const uint16_t *w, __mmask16 lanes) {
    __m256i half = lanes == 0xFFFF ? _mm256_loadu_si256((const __m256i *)w)
                                   : _mm256_maskz_loadu_epi16(lanes, w);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
/* int8 -> fp32 is exact: sign-extend 16 bytes to 32 bits and convert (an int8 matrix reads
   a quarter of the bytes of fp32 for the same products). */
AVX512 INLINE __m512 load_w_i8(const int8_t *w, __mmask16 lanes) {
    __m128i bytes = lanes == 0xFFFF ? _mm_loadu_si128((const __m128i *)w)
                                    : _mm_maskz_loadu_epi8(lanes, w);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
}
AVX512 INLINE __m512 fma_f32(__m512 acc, __m512 w, __m512 x) { return _mm512_fmadd_ps(w, x, acc); }
AVX512BF16 INLINE __m512bh load_pairs(const uint16_t *p, __mmask32 lanes) {
    return (__m512bh)(lanes == 0xFFFFFFFFu ? _mm512_loadu_si512(p)
                                           : _mm512_maskz_loadu_epi16(lanes, p));
}
AVX512BF16 INLINE __m512 dot_pairs(__m512 acc, __m512bh w, __m512bh x) {
    return _mm512_dpbf16_ps(acc, w, x);
}

/* y[m * ystride + r] = b[r] + dot(w[r], x[m]) (times s[r] where the rows have scales, before
   b is added) for `rows` (1..R) consecutive rows of w
   starting at `w` and the M rows of x (each k long, one after another): each weight vector
   loaded serves all M rows, and the rows of w read side by side are that many streams.
   Every sum runs in the same order whatever M and `rows` are (lanes over k, the last k %
   STEP columns by masked loads, then the lanes), so a row of x gets the same result alone
   or among others. M and R are constants, so that the R x M accumulators live in registers
   (R = 4 up to five rows of x, 2 beyond: 32 vector registers). While it reads this group,
   it asks for the bytes AHEAD further on, every cache line of as many as it reads, into L2,
   up to `limit` (the end of the calling thread's share of W: no line is fetched for
   nothing). It beats touching a quarter of the next group's lines into L1 (the hardware
   prefetcher doing the rest), by more for several rows of x than for one, and distances
   from 16 to 96 KB differ by little (benchmarks/gemv.py; the A/B results are in
   benchmarks/README.md). */
#define AHEAD 49152
#define DOT_ROWS(NAME, TARGET, WTYPE, XTYPE, VW, VX, STEP, MASK, LOAD_W, LOAD_X, MAC, M, R)   \
    TARGET INLINE void NAME##_##M(const WTYPE *w, int64_t k, const XTYPE *x, const float *b, \
                                  const float *s, float *y, int64_t ystride, int rows,       \
                                  uintptr_t limit) {                                         \
        __m512 acc[R][M];                                                                    \
        for (int r = 0; r < rows; r++)                                                       \
            for (int m = 0; m < M; m++) acc[r][m] = _mm512_setzero_ps();                     \
        /* addresses as integers: never a pointer out of bounds */                          \
        uintptr_t ahead = (uintptr_t)w + AHEAD;                                              \
        int64_t i = 0;                                                                       \
        for (; i + STEP <= k; i += STEP) {                                                   \
            for (int line = 0; line < (rows * STEP * (int)sizeof(WTYPE) + 63) / 64; line++) { \
                uintptr_t at = ahead + i * rows * sizeof(WTYPE) + line * 64;                 \
                if (at < limit) _mm_prefetch((const char *)at, _MM_HINT_T1);                 \
            }                                                                                \
            VX xv[M];                                                                        \
            for (int m = 0; m < M; m++) xv[m] = LOAD_X(x + m * k + i, (MASK)~0ull);          \
            for (int r = 0; r < rows; r++) {                                                 \
                VW wv = LOAD_W(w + r * k + i, (MASK)~0ull);                                  \
                for (int m = 0; m < M; m++) acc[r][m] = MAC(acc[r][m], wv, xv[m]);           \
            }                                                                                \
        }                                                                                    \
        if (i < k) { /* masked loads put zeros past the end */                               \
            MASK tail = (MASK)((1ull << (k - i)) - 1);                                       \
            for (int r = 0; r < rows; r++) {                                                 \
                VW wv = LOAD_W(w + r * k + i, tail);                                         \
                for (int m = 0; m < M; m++)                                                  \
                    acc[r][m] = MAC(acc[r][m], wv, LOAD_X(x + m * k + i, tail));             \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < rows; r++)                                                       \
            for (int m = 0; m < M; m++)                                                      \
            {                                                                                \
                float sum = _mm512_reduce_add_ps(acc[r][m]);                                 \
                float bias = b ? b[r] : 0.0f; /* one rounding of sum * s + b, always */      \
                y[m * ystride + r] = s ? fmaf(sum, s[r], bias) : sum + bias;                 \
            }                                                                                \
    }

/* The calling thread's share of `groups` groups in an even split into contiguous ranges:
   groups [*first, *last). */
static inline void thread_share(int64_t groups, int64_t *first, int64_t *last) {
    int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
    *first = groups * t / threads;
    *last = groups * (t + 1) / threads;
}

/* The dot products of one kind for M = 1..MAX_M rows of x (dot_NAME_M). */
#define KIND(NAME, TARGET, WTYPE, XTYPE, VW, VX, STEP, MASK, LOAD_W, LOAD_X, MAC)            \
    DOT_ROWS(dot_##NAME, TARGET, WTYPE, XTYPE, VW, VX, STEP, MASK, LOAD_W, LOAD_X, MAC, 1, 4)\
    DOT_ROWS(dot_##NAME, TARGET, WTYPE, XTYPE, VW, VX, STEP, MASK, LOAD_W, LOAD_X, MAC, 2, 4)\
    DOT_ROWS(dot_##NAME, TARGET, WTYPE, XTYPE, VW, VX, STEP, MASK, LOAD_W, LOAD_X, MAC, 3, 4)\
    DOT_ROWS(dot_##NAME, TARGET, WTYPE, XTYPE, VW, VX, STEP, MASK, LOAD_W, LOAD_X, MAC, 4, 4)\
    DOT_ROWS(dot_##NAME, TARGET, WTYPE, XTYPE, VW, VX, STEP, MASK, LOAD_W, LOAD_X, MAC, 5, 4)\
    DOT_ROWS(dot_##NAME, TARGET, WTYPE, XTYPE, VW, VX, STEP, MASK, LOAD_W, LOAD_X, MAC, 6, 2)\
    DOT_ROWS(dot_##NAME, TARGET, WTYPE, XTYPE, VW, VX, STEP, MASK, LOAD_W, LOAD_X, MAC, 7, 2)\
    DOT_ROWS(dot_##NAME, TARGET, WTYPE, XTYPE, VW, VX, STEP, MASK, LOAD_W, LOAD_X, MAC, 8, 2)\
    /* no rows: the second pass TEAM_GEMV names when it has none */                         \
    TARGET INLINE void dot_##NAME##_0(const WTYPE *w, int64_t k, const XTYPE *x,             \
                                      const float *b, const float *s, float *y,              \
                                      int64_t ystride, int rows, uintptr_t limit) {}

KIND(gemv_f32, AVX512, float, float, __m512, __m512, 16, __mmask16, load_w_f32, load_x_f32,
     fma_f32)
KIND(gemv_bf16, AVX512, uint16_t, float, __m512, __m512, 16, __mmask16, load_w_bf16,
     load_x_f32, fma_f32)
KIND(gemv_bf16_bf16, AVX512BF16, uint16_t, uint16_t, __m512bh, __m512bh, 32, __mmask32,
     load_pairs, load_pairs, dot_pairs)
KIND(gemv_i8, AVX512, int8_t, float, __m512, __m512, 16, __mmask16, load_w_i8, load_x_f32,
     fma_f32)

/* --- One decoding step of 1 to 8 rows (64 in fp32), every layer in one call --------------

A step of batch 1 is about a hundred matrix products with small work between them (layer
norms, attention over the cache, GELU, residual sums). Done op by op from Python, that
small work, dispatch mostly, costs a share of every step (benchmarks/decode_overhead.py
measures it); here the whole step, from the tokens' embeddings to their logits, runs in one
OpenMP parallel region. The products are the kernel's above, for all the step's rows in one
pass over the weights, shared out over the threads by weight rows as `gemv` shares them, so
each output is the same dot product in the same order whatever the other rows are; the
rest is per-row arithmetic done where it is needed, between barriers, vectorised (GELU's
erf and softmax's exp by the polynomials below). fp32 or bf16 weights and cache, or int8
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

enum { STORE, ADD, GELU }; /* what a product does with its result: y = r, y += r, y = gelu(r) */

/* e^y for 16 lanes of y <= 0 (what softmax and erf need), -inf included: y = n ln2 + r with
   |r| <= ln2/2, e^r by its Taylor series to r^7 (relative error below 1e-7), times 2^n by
   scalef. Below -104 the result is 0 in fp32 anyway, so y is clamped there first. */
AVX512 INLINE __m512 exp_nonpositive(__m512 y) {
    y = _mm512_max_ps(y, _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), y); /* ln2, split */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-6f), r);
    __m512 e = _mm512_set1_ps(1.0f / 5040);
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 720));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 120));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 24));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 6));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(0.5f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(e, n);
}

/* Exact GELU, x (1 + erf(x / sqrt 2)) / 2, for 16 lanes. erf by Abramowitz and Stegun's
   formula 7.1.26 (absolute error below 1.5e-7, about an fp32 rounding of 1 + erf):
   erf(a) = 1 - t (a1 + t (a2 + ... + t a5)) e^(-a^2), t = 1 / (1 + p a), for a >= 0. */
AVX512 INLINE __m512 gelu16(__m512 x) {
    __m512 a = _mm512_abs_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)));
    __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                             _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
    __m512 poly = _mm512_set1_ps(1.061405429f);
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-1.453152027f));
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
    __m512 minus_square = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a);
    __m512 tail = _mm512_mul_ps(_mm512_mul_ps(poly, t), exp_nonpositive(minus_square));
    /* erf is odd: 1 + erf(x / sqrt 2) is 2 - tail for x >= 0 and, for x < 0, 1 - (1 - tail)
       = tail itself, with no cancellation. */
    __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 one_plus =
        _mm512_mask_blend_ps(negative, _mm512_sub_ps(_mm512_set1_ps(2.0f), tail), tail);
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), one_plus);
}

/* fp32 -> bf16 rounded to nearest, ties to even (as PyTorch rounds), for 16 lanes: add
   0x7FFF plus the lowest kept bit, keep the top 16 bits; NaN stays a (quiet) NaN. */
AVX512 INLINE __m256i round_bf16(__m512 v) {
    __m512i bits = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC00000));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

/* y = bf16(x) over n elements. */
AVX512 static void to_bf16(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 lanes = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(y + i, lanes, round_bf16(_mm512_maskz_loadu_ps(lanes, x + i)));
    }
}

/* y = GELU(x) over n elements (what py_gelu exposes to the tests). */
AVX512 static void gelu_all(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 lanes = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, lanes, gelu16(_mm512_maskz_loadu_ps(lanes, x + i)));
    }
}

/* y (op) the results `out` of `rows` consecutive rows; with `y16`, their bf16 roundings
   too (the input of the next bf16 product). */
AVX512 INLINE void store_rows(float *y, uint16_t *y16, const float *out, int rows, int op) {
    __mmask16 lanes = (__mmask16)((1u << rows) - 1);
    __m512 v = _mm512_maskz_loadu_ps(lanes, out);
    if (op == GELU) v = gelu16(v);
    if (op == ADD) v = _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, y), v);
    _mm512_mask_storeu_ps(y, lanes, v);
    if (y16) _mm256_mask_storeu_epi16(y16, lanes, round_bf16(v));
}

/* y (op) x W^T + b for the M rows of x (each k long, one after another) over the n rows of
   W, shared out over the team in contiguous ranges of groups (fp32 weights and rows, bf16
   or int8 weights (s: the int8 rows' scales, else NULL) and fp32 rows, or both bf16); row m
   of the result starts at y + m * ystride (and its bf16 rounding at y16 + m * ystride). No
   barrier at the end: the caller places one where a result is read. Each group of weight
   rows serves the first A rows of x in one pass, RA weight rows at a time, and the other
   B = M - A (if any) in a second pass, four weight rows at a time, which finds the group in
   L1 or L2 and asks for nothing ahead. */
#define TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, M, A, RA, B)                              \
    TARGET static void NAME##_##M(const WTYPE *w, const float *s, const XTYPE *x,            \
                                  const float *b, float *y, uint16_t *y16, int64_t ystride,  \
                                  int64_t n, int64_t k, int op) {                            \
        int64_t groups = (n + ROWS - 1) / ROWS, mine, end;                                   \
        thread_share(groups, &mine, &end);                                                   \
        uintptr_t limit = (uintptr_t)(w + (end * ROWS < n ? end * ROWS : n) * k);            \
        for (int64_t g = mine; g < end; g++) {                                               \
            int64_t first = g * ROWS;                                                        \
            int rows = n - first < ROWS ? (int)(n - first) : ROWS;                           \
            float out[M * ROWS]; /* row m's results at out + m * ROWS */                    \
            const float *bg = b ? b + first : NULL, *sg = s ? s + first : NULL;              \
            if (rows == ROWS) {                                                              \
                for (int r = 0; r < ROWS; r += RA)                                           \
                    DOT##_##A(w + (first + r) * k, k, x, bg ? bg + r : NULL,                 \
                              sg ? sg + r : NULL, out + r, ROWS, RA, limit);                 \
                if (B) /* the rest of x, over the group just read */                        \
                    DOT##_##B(w + first * k, k, x + A * k, bg, sg, out + A * ROWS, ROWS,     \
                              ROWS, 0);                                                      \
            } else {                                                                         \
                for (int r = 0; r < rows; r++) {                                             \
                    DOT##_##A(w + (first + r) * k, k, x, bg ? bg + r : NULL,                 \
                              sg ? sg + r : NULL, out + r, ROWS, 1, limit);                  \
                    if (B)                                                                   \
                        DOT##_##B(w + (first + r) * k, k, x + A * k, bg ? bg + r : NULL,     \
                                  sg ? sg + r : NULL, out + A * ROWS + r, ROWS, 1, 0);       \
                }                                                                            \
            }                                                                                \
            for (int m = 0; m < M; m++)                                                      \
                store_rows(y + m * ystride + first, y16 ? y16 + m * ystride + first : NULL,  \
                           out + m * ROWS, rows, op);                                        \
        }                                                                                    \
    }

/* Six to eight rows of x: in one pass, two weight rows at a time, where the weights' bytes
   set the pace (fp32 and bf16: faster than a second pass over each group of four on the AMD
   machine, 5% slower in the fused step on the Intel one), or, where
   the multiply-adds do (int8 weights, widened: two instructions a vector before the
   products), in two passes of four weight rows (faster there than the one pass). Each
   choice was timed against the other in one process; benchmarks/README.md has the results
   and benchmarks/gemv.py times several rows against one matrix. */
#define ONE_PASS(NAME, TARGET, DOT, WTYPE, XTYPE)                                            \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 6, 6, 2, 0)                                   \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 7, 7, 2, 0)                                   \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 8, 8, 2, 0)
#define TWO_PASSES(NAME, TARGET, DOT, WTYPE, XTYPE)                                          \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 6, 3, 4, 3)                                   \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 7, 4, 4, 3)                                   \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 8, 4, 4, 4)

/* The team's products for M = 1..MAX_M rows of one kind, and the table NAME[M] of them. */
#define TEAM_KIND(NAME, TARGET, DOT, WTYPE, XTYPE, SIX_TO_EIGHT)                             \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 1, 1, 4, 0)                                   \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 2, 2, 4, 0)                                   \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 3, 3, 4, 0)                                   \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 4, 4, 4, 0)                                   \
    TEAM_GEMV(NAME, TARGET, DOT, WTYPE, XTYPE, 5, 5, 4, 0)                                   \
    SIX_TO_EIGHT(NAME, TARGET, DOT, WTYPE, XTYPE)                                            \
    typedef void (*NAME##_fn)(const WTYPE *, const float *, const XTYPE *, const float *,    \
                              float *, uint16_t *, int64_t, int64_t, int64_t, int);          \
    static const NAME##_fn NAME[MAX_M + 1] = {NULL,      NAME##_1, NAME##_2, NAME##_3,       \
                                              NAME##_4, NAME##_5, NAME##_6, NAME##_7,        \
                                              NAME##_8};

TEAM_KIND(team_gemv_f32, AVX512, dot_gemv_f32, float, float, ONE_PASS)
TEAM_KIND(team_gemv_widen, AVX512, dot_gemv_bf16, uint16_t, float, ONE_PASS)
TEAM_KIND(team_gemv_bf16, AVX512BF16, dot_gemv_bf16_bf16, uint16_t, uint16_t, ONE_PASS)
TEAM_KIND(team_gemv_i8, AVX512, dot_gemv_i8, int8_t, float, TWO_PASSES)

/* More rows of x than 8 (a prompt of 9 to MAX_MANY tokens, or a step's rows with their
   drafts), fp32, y (op) x W^T + b with row i of y at y + i * ystride: each group of
   four weight rows, read from memory once, serves every block of six rows of x in turn, all
   four weight rows at once (24 accumulators: four weight loads and six row loads feed 24
   multiply-adds, where the 8-row pass's two weight rows get 16 from ten loads); the first
   block asks for the bytes ahead, the others find the group in L1 or L2. Compute sets the
   pace here, not memory. Each output is still the same sum in the same order as alone, so
   the rows do not depend on each other. benchmarks/gemv.py times it against PyTorch's
   kernels on the same raw weights. */
DOT_ROWS(dot_wide_f32, AVX512, float, float, __m512, __m512, 16, __mmask16, load_w_f32,
         load_x_f32, fma_f32, 6, 4)

/* The dot products of `rows` weight rows (ROWS, or fewer at the end of W) against M rows of
   x, R weight rows a call; the number of weight rows is a constant in each call, so that
   the accumulators stay in registers. */
#define GROUP_DOT(DOT, M, R, W, K, X, B, OUT, ROWSN, LIMIT)                                  \
    if ((ROWSN) == ROWS) {                                                                   \
        for (int r = 0; r < ROWS; r += R)                                                    \
            DOT##_##M((W) + r * (K), K, X, (B) ? (B) + r : NULL, NULL, (OUT) + r, ROWS, R,   \
                      LIMIT);                                                                \
    } else {                                                                                 \
        for (int r = 0; r < (ROWSN); r++)                                                    \
            DOT##_##M((W) + r * (K), K, X, (B) ? (B) + r : NULL, NULL, (OUT) + r, ROWS, 1,   \
                      LIMIT);                                                                \
    }

AVX512 static void team_gemv_f32_many(const float *w, const float *x, const float *b, float *y,
                                      int64_t ystride, int64_t n, int64_t k, int64_t m,
                                      int op) {
    int64_t groups = (n + ROWS - 1) / ROWS, mine, end;
    thread_share(groups, &mine, &end);
    uintptr_t limit = (uintptr_t)(w + (end * ROWS < n ? end * ROWS : n) * k);
    for (int64_t g = mine; g < end; g++) {
        int64_t first = g * ROWS;
        int rows = n - first < ROWS ? (int)(n - first) : ROWS;
        const float *wg = w + first * k, *bg = b ? b + first : NULL;
        for (int64_t j = 0; j < m; j += 6) {
            int block = m - j < 6 ? (int)(m - j) : 6;
            const float *xb = x + j * k;
            uintptr_t ahead = j == 0 ? limit : 0;
            float out[6 * ROWS]; /* row i's results at out + i * ROWS */
            switch (block) {
            case 1: GROUP_DOT(dot_gemv_f32, 1, 4, wg, k, xb, bg, out, rows, ahead) break;
            case 2: GROUP_DOT(dot_gemv_f32, 2, 4, wg, k, xb, bg, out, rows, ahead) break;
            case 3: GROUP_DOT(dot_gemv_f32, 3, 4, wg, k, xb, bg, out, rows, ahead) break;
            case 4: GROUP_DOT(dot_gemv_f32, 4, 4, wg, k, xb, bg, out, rows, ahead) break;
            case 5: GROUP_DOT(dot_gemv_f32, 5, 4, wg, k, xb, bg, out, rows, ahead) break;
            default: GROUP_DOT(dot_wide_f32, 6, 4, wg, k, xb, bg, out, rows, ahead) break;
            }
            for (int i = 0; i < block; i++)
                store_rows(y + (j + i) * ystride + first, NULL, out + i * ROWS, rows, op);
        }
    }
}

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

static int cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
}

static int cpu_has_bf16_dot(void) {
    return cpu_supported() && __builtin_cpu_supports("avx512bf16");
}
#else
static int cpu_supported(void) { return 0; }
static int cpu_has_bf16_dot(void) { return 0; }
#endif

/* supported() -> bool: whether this CPU runs the kernel. */
static PyObject *py_supported(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(cpu_supported());
}

/* bf16_dot() -> bool: whether this CPU runs the bf16-row kernel (AVX512-BF16). */
static PyObject *py_bf16_dot(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(cpu_has_bf16_dot());
}

/* The first `count` arguments of a call as raw addresses, once its argument count is
   checked: 0, or -1 with a Python error set. */
static int addresses(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                     const char *name, void **out, int count) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, want);
        return -1;
    }
    for (int i = 0; i < count; i++) {
        out[i] = PyLong_AsVoidPtr(args[i]);
        if (out[i] == NULL && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* gemv(w, s, x, b, y, m, n, k, threads, kind): y (m, n) = x (m, k) W^T + b from raw
   addresses (b may be 0; s, int8 rows' scales, is 0 for the other kinds), for m = 1..8 rows
   of x (1..MAX_MANY for fp32 weights and rows); sizes, thread count, and what w and x
   hold: 0 fp32 and fp32, 1 bf16 and fp32, 2 bf16 and bf16, 3 int8 (times s) and fp32. The
   caller guarantees shapes and contiguity. */
static PyObject *py_gemv(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *ptr[5];
    if (addresses(args, nargs, 10, "gemv", ptr, 5) < 0) return NULL;
    long m = PyLong_AsLong(args[5]);
    long long n = PyLong_AsLongLong(args[6]), k = PyLong_AsLongLong(args[7]);
    long threads = PyLong_AsLong(args[8]);
    long kind = PyLong_AsLong(args[9]);
    if (PyErr_Occurred()) return NULL;
    if (kind < 0 || kind > 3) {
        PyErr_SetString(PyExc_ValueError, "gemv: kind must be 0, 1, 2 or 3");
        return NULL;
    }
    if ((kind == 3) != (ptr[1] != NULL)) {
        PyErr_SetString(PyExc_ValueError, "gemv: int8 weights, and only they, take scales");
        return NULL;
    }
    if (m < 1 || m > (kind == 0 ? MAX_MANY : MAX_M)) {
        PyErr_Format(PyExc_ValueError, "gemv: 1 to %d rows of x", kind == 0 ? MAX_MANY : MAX_M);
        return NULL;
    }
    if (!(kind == 2 ? cpu_has_bf16_dot() : cpu_supported())) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks the AVX-512 the gemv kernel needs");
        return NULL;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    Py_BEGIN_ALLOW_THREADS;
#pragma omp parallel num_threads((int)threads)
    {
        if (m > MAX_M)
            team_gemv_f32_many(ptr[0], ptr[2], ptr[3], ptr[4], n, n, k, m, STORE);
        else if (kind == 3)
            team_gemv_i8[m](ptr[0], ptr[1], ptr[2], ptr[3], ptr[4], NULL, n, n, k, STORE);
        else if (kind == 2)
            team_gemv_bf16[m](ptr[0], NULL, ptr[2], ptr[3], ptr[4], NULL, n, n, k, STORE);
        else if (kind == 1)
            team_gemv_widen[m](ptr[0], NULL, ptr[2], ptr[3], ptr[4], NULL, n, n, k, STORE);
        else
            team_gemv_f32[m](ptr[0], NULL, ptr[2], ptr[3], ptr[4], NULL, n, n, k, STORE);
    }
    Py_END_ALLOW_THREADS;
#endif
    Py_RETURN_NONE;
}

/* decode_step(plan, keys, values, mask, tokens, positions, cache_rows, slots, rows, batch,
   logits, threads, embed_scale, eps): one decoding step of 1..8 rows, fp32, bf16 or int8
   (1..MAX_MANY rows for fp32 weights)
   (see decode_step), from raw addresses (tokens, positions, cache_rows and slots: int64
   arrays of `rows` entries; mask may be 0: every slot real) over a cache of `batch` rows.
   biogpt/cpu/fused.py checks the model and cache; this checks the indices that would reach
   outside them, and that rows sharing a cache row take distinct slots. */
static PyObject *py_decode_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *ptr[8];
    if (addresses(args, nargs, 14, "decode_step", ptr, 8) < 0) return NULL;
    long rows = PyLong_AsLong(args[8]);
    long long batch = PyLong_AsLongLong(args[9]);
    void *logits = PyLong_AsVoidPtr(args[10]);
    long threads = PyLong_AsLong(args[11]);
    double scale = PyFloat_AsDouble(args[12]), eps = PyFloat_AsDouble(args[13]);
    if (PyErr_Occurred()) return NULL;
    if (!cpu_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks the AVX-512 the step needs");
        return NULL;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    const int64_t *plan = ptr[0], *tokens = ptr[4], *positions = ptr[5];
    long most = plan[P_KIND] == WEIGHTS_F32 ? MAX_MANY : MAX_M;
    if (rows < 1 || rows > most) {
        PyErr_Format(PyExc_ValueError, "decode_step: 1 to %ld rows for these weights", most);
        return NULL;
    }
    Places at = {.cache_rows = ptr[6], .slots = ptr[7], .shared = 0};
    for (long r = 0; r < rows; r++) {
        if (tokens[r] < 0 || tokens[r] >= plan[P_VOCAB] || positions[r] < 0 ||
            positions[r] >= plan[P_POSITIONS_ROWS] || at.cache_rows[r] < 0 ||
            at.cache_rows[r] >= batch || at.slots[r] < 0 || at.slots[r] >= plan[P_CAPACITY]) {
            PyErr_Format(PyExc_IndexError,
                         "decode_step: token %lld, position %lld, cache row %lld or slot %lld "
                         "out of range",
                         (long long)tokens[r], (long long)positions[r],
                         (long long)at.cache_rows[r], (long long)at.slots[r]);
            return NULL;
        }
        for (long q = 0; q < r; q++) {
            if (at.cache_rows[q] != at.cache_rows[r]) continue;
            if (at.slots[q] == at.slots[r]) {
                PyErr_SetString(PyExc_ValueError, "decode_step: two rows write the same slot");
                return NULL;
            }
            at.shared = 1;
        }
    }
    if (plan[P_KIND] < WEIGHTS_F32 || plan[P_KIND] > WEIGHTS_INT8) {
        PyErr_SetString(PyExc_ValueError, "decode_step: unknown kind of weights");
        return NULL;
    }
    if (plan[P_KIND] == WEIGHTS_BF16 && !cpu_has_bf16_dot()) {
        PyErr_SetString(PyExc_RuntimeError, "a bf16 step needs AVX512-BF16, which this CPU lacks");
        return NULL;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = decode_step(plan, ptr[1], ptr[2], ptr[3], tokens, positions, (int)rows, batch, at,
                         logits, (int)threads, (float)scale, eps);
    Py_END_ALLOW_THREADS;
    if (status != 0) return PyErr_NoMemory();
#endif
    Py_RETURN_NONE;
}

/* gelu(x, y, n): y = GELU(x) over n fp32 elements by the step's vectorised GELU, so tests
   can hold it against an exact one. */
static PyObject *py_gelu(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *ptr[2];
    if (addresses(args, nargs, 3, "gelu", ptr, 2) < 0) return NULL;
    long long n = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (!cpu_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks the AVX-512 the step needs");
        return NULL;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    gelu_all(ptr[0], ptr[1], n);
#endif
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"supported", py_supported, METH_NOARGS, "Whether this CPU runs the kernel (AVX-512)."},
    {"bf16_dot", py_bf16_dot, METH_NOARGS, "Whether this CPU runs the bf16-row kernel."},
    {"gemv", (PyCFunction)(void (*)(void))py_gemv, METH_FASTCALL,
     "gemv(w, s, x, b, y, m, n, k, threads, kind): y = x W^T + b from raw addresses."},
    {"decode_step", (PyCFunction)(void (*)(void))py_decode_step, METH_FASTCALL,
     "decode_step(plan, keys, values, mask, tokens, positions, cache_rows, slots, rows, batch, "
     "logits, threads, embed_scale, eps): one decoding step of 1 to 8 rows (64 in fp32)."},
    {"gelu", (PyCFunction)(void (*)(void))py_gelu, METH_FASTCALL,
     "gelu(x, y, n): y = GELU(x) by the step's vectorised GELU (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpu", "CPU decoding kernels (biogpt/cpu/gemv.py, biogpt/cpu/fused.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__cpu(void) { return PyModule_Create(&module); }
