/* The products of the CPU engine: a few rows times a weight matrix at the speed memory streams
the weights (y = W x + b), and up to 64 rows of fp32 x in one pass; the decoding step
(step.h) is built on them. Part of the extension `biogpt.cpu._cpu`: _cpu.c includes it once,
on x86-64 with GCC or Clang, and gives Python `gemv`.

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
threads or on the other rows. */

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
