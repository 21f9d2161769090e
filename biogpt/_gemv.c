/* One row times a weight matrix, at the speed memory streams the weights: y = W x + b.

Decoding one token multiplies a single row by every weight matrix of the model, so a step
takes as long as reading the weights from memory. This kernel reads the rows of W as they
lie in memory (row-major (n, k), the layout of nn.Linear and of the token embedding, so the
tied output projection needs no copy) and keeps four rows in flight, each with its own
16-lane fp32 accumulator: on the 2-core AVX-512 development machine it reads the weights
1.2-1.5x as fast as oneDNN's kernel on fp32 weights prepacked for one row, and 1.15-1.6x
as fast as fbgemm's fp16-weight kernel on bf16 ones, near what torch.sum reaches over the
same bytes (benchmarks/gemv.py).

Weights are fp32 or bf16; b and y are fp32, x is fp32 or, with bf16 weights, bf16. A bf16
weight becomes fp32 exactly (its 16 bits are the top half of an fp32), and a product of two
bf16 numbers is exact in fp32, so the products and sums are fp32 ones in every case.
Each output is one dot product summed in a fixed order (16 lanes over k, then the lanes),
computed by one thread whatever the thread count: results do not depend on the number of
threads or on the other rows.

Built as the optional extension `biogpt._gemv` (see setup.py); the AVX-512 code is compiled
for that target only, so the module loads on any x86-64 CPU and says through `supported()`
whether this one can run it. Python calls it with raw data pointers (biogpt/gemv.py checks
shapes, dtypes and contiguity first).
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define INLINE static inline __attribute__((always_inline))
#define ROWS 4 /* weight rows in flight per thread: four independent read streams */

AVX512 INLINE __m512 load_f32(const void *w, int64_t i, __mmask16 lanes) {
    return _mm512_maskz_loadu_ps(lanes, (const float *)w + i);
}

/* bf16 -> fp32 is exact: widen to 32 bits and shift into the top half. */
AVX512 INLINE __m512 load_bf16(const void *w, int64_t i, __mmask16 lanes) {
    __m256i half = _mm256_maskz_loadu_epi16(lanes, (const uint16_t *)w + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

/* y[r] = b[r] + dot(w[r], x) for `rows` (1..ROWS) consecutive rows of w starting at `w`. */
#define DOT_ROWS(NAME, LOAD, WTYPE)                                                           \
    AVX512 INLINE void NAME(const WTYPE *w, int64_t k, const float *x, const float *b,       \
                            float *y, int rows) {                                            \
        __m512 acc[ROWS];                                                                    \
        for (int r = 0; r < rows; r++) acc[r] = _mm512_setzero_ps();                         \
        int64_t i = 0;                                                                       \
        for (; i + 16 <= k; i += 16) {                                                       \
            __m512 xv = _mm512_loadu_ps(x + i);                                              \
            for (int r = 0; r < rows; r++)                                                   \
                acc[r] = _mm512_fmadd_ps(LOAD(w + r * k, i, 0xFFFF), xv, acc[r]);            \
        }                                                                                    \
        if (i < k) { /* the last k % 16 columns, with masked loads (zeros elsewhere) */      \
            __mmask16 tail = (__mmask16)((1u << (k - i)) - 1);                               \
            __m512 xv = _mm512_maskz_loadu_ps(tail, x + i);                                  \
            for (int r = 0; r < rows; r++)                                                   \
                acc[r] = _mm512_fmadd_ps(LOAD(w + r * k, i, tail), xv, acc[r]);              \
        }                                                                                    \
        for (int r = 0; r < rows; r++)                                                       \
            y[r] = _mm512_reduce_add_ps(acc[r]) + (b ? b[r] : 0.0f);                         \
    }

DOT_ROWS(dot_rows_f32, load_f32, float)
DOT_ROWS(dot_rows_bf16, load_bf16, uint16_t)

/* The n rows in groups of ROWS, split into contiguous ranges over the threads; the few
   rows past the last full group go one at a time. */
#define GEMV(NAME, DOT, WTYPE)                                                               \
    AVX512 static void NAME(const WTYPE *w, const float *x, const float *b, float *y,        \
                            int64_t n, int64_t k, int threads) {                             \
        int64_t groups = n / ROWS;                                                           \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                    \
        for (int64_t g = 0; g < groups; g++)                                                 \
            DOT(w + g * ROWS * k, k, x, b ? b + g * ROWS : NULL, y + g * ROWS, ROWS);        \
        for (int64_t r = groups * ROWS; r < n; r++)                                          \
            DOT(w + r * k, k, x, b ? b + r : NULL, y + r, 1);                                \
    }

GEMV(gemv_f32, dot_rows_f32, float)
GEMV(gemv_bf16, dot_rows_bf16, uint16_t)

/* bf16 weights against a bf16 row (a bf16 model's activations): vdpbf16ps multiplies 32
   pairs at a time, exactly (8-bit by 8-bit significands fit in fp32), and adds them into 16
   fp32 lanes: half the instructions of widening the weights first, which is what keeps a
   bf16 row at memory speed. Denormal inputs count as zero (the instruction's rule). */
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

AVX512BF16 INLINE void dot_rows_bf16_bf16(const uint16_t *w, int64_t k, const uint16_t *x,
                                          const float *b, float *y, int rows) {
    __m512 acc[ROWS];
    for (int r = 0; r < rows; r++) acc[r] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        __m512bh xv = (__m512bh)_mm512_loadu_si512(x + i);
        for (int r = 0; r < rows; r++)
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(w + r * k + i), xv);
    }
    if (i < k) { /* the last k % 32 columns: masked loads put zeros in the other pairs */
        __mmask32 tail = (__mmask32)((1ull << (k - i)) - 1);
        __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(tail, x + i);
        for (int r = 0; r < rows; r++)
            acc[r] = _mm512_dpbf16_ps(
                acc[r], (__m512bh)_mm512_maskz_loadu_epi16(tail, w + r * k + i), xv);
    }
    for (int r = 0; r < rows; r++) y[r] = _mm512_reduce_add_ps(acc[r]) + (b ? b[r] : 0.0f);
}

AVX512BF16 static void gemv_bf16_bf16(const uint16_t *w, const uint16_t *x, const float *b,
                                      float *y, int64_t n, int64_t k, int threads) {
    int64_t groups = n / ROWS;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < groups; g++)
        dot_rows_bf16_bf16(w + g * ROWS * k, k, x, b ? b + g * ROWS : NULL, y + g * ROWS, ROWS);
    for (int64_t r = groups * ROWS; r < n; r++)
        dot_rows_bf16_bf16(w + r * k, k, x, b ? b + r : NULL, y + r, 1);
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

/* gemv(w, x, b, y, n, k, threads, kind): raw addresses (b may be 0), sizes, thread count,
   and what w and x hold: 0 fp32 and fp32, 1 bf16 and fp32, 2 bf16 and bf16. The caller
   guarantees shapes and contiguity. */
static PyObject *py_gemv(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "gemv takes 8 arguments");
        return NULL;
    }
    void *ptr[4];
    for (int i = 0; i < 4; i++) {
        ptr[i] = PyLong_AsVoidPtr(args[i]);
        if (ptr[i] == NULL && PyErr_Occurred()) return NULL;
    }
    long long n = PyLong_AsLongLong(args[4]), k = PyLong_AsLongLong(args[5]);
    long threads = PyLong_AsLong(args[6]);
    long kind = PyLong_AsLong(args[7]);
    if (PyErr_Occurred()) return NULL;
    if (kind < 0 || kind > 2) {
        PyErr_SetString(PyExc_ValueError, "gemv: kind must be 0, 1 or 2");
        return NULL;
    }
    if (!(kind == 2 ? cpu_has_bf16_dot() : cpu_supported())) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks the AVX-512 the gemv kernel needs");
        return NULL;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    Py_BEGIN_ALLOW_THREADS;
    if (kind == 2)
        gemv_bf16_bf16(ptr[0], ptr[1], ptr[2], ptr[3], n, k, (int)threads);
    else if (kind == 1)
        gemv_bf16((const uint16_t *)ptr[0], ptr[1], ptr[2], ptr[3], n, k, (int)threads);
    else
        gemv_f32((const float *)ptr[0], ptr[1], ptr[2], ptr[3], n, k, (int)threads);
    Py_END_ALLOW_THREADS;
#endif
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"supported", py_supported, METH_NOARGS, "Whether this CPU runs the kernel (AVX-512)."},
    {"bf16_dot", py_bf16_dot, METH_NOARGS, "Whether this CPU runs the bf16-row kernel."},
    {"gemv", (PyCFunction)(void (*)(void))py_gemv, METH_FASTCALL,
     "gemv(w, x, b, y, n, k, threads, kind): y = W x + b from raw addresses."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_gemv", "One row times a weight matrix (see biogpt/gemv.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__gemv(void) { return PyModule_Create(&module); }
