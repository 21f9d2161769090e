/* The extension `biogpt.cpu._cpu`: the CPU engine's C code and its Python functions.

- products.h: a few rows of x times a weight matrix at the speed memory streams the weights
  (`gemv`, biogpt/cpu/gemv.py), and up to 64 rows of fp32 x in one pass;
- step.h: a whole decoding step of 1 to 8 rows (to 64 rows x tokens with fp32 weights) in
  one call (`decode_step`, biogpt/cpu/fused.py), built on those products;
- here: whether this CPU runs them, and the functions Python calls with raw addresses
  (the Python side checks shapes, dtypes and contiguity first; these check the indices
  that would reach outside the buffers).

The AVX-512 code is compiled for that target only, so the module loads on any x86-64 CPU
and says through `supported()` whether this one can run it. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_M 8     /* rows of x one pass over the weights serves in registers (a step's rows) */
#define MAX_MANY 64 /* rows of fp32 x one call takes (a short prompt's tokens) */

#if defined(__x86_64__) && defined(__GNUC__)
#include "products.h"
#include "step.h"

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
