/*
 * beambridge._atomic: sequentially consistent atomic operations on naturally aligned
 * u32/u64 words at a byte offset inside a Python buffer object (an mmap of a region).
 *
 * Python has no atomics of its own; the lease protocol (protocol/SPEC.md §2.2) needs
 * seq_cst loads, stores and read-modify-writes on control-block words that the peer
 * (the BEAM NIF) accesses with __atomic_* builtins. Every function checks that the
 * word lies inside the buffer (IndexError) and that its absolute address is naturally
 * aligned (ValueError) before touching memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Borrow the buffer of `obj` and locate `width` bytes at `offset`, checked. */
static void *
word_at(PyObject *obj, Py_ssize_t offset, Py_ssize_t width, int writable, Py_buffer *view)
{
    int flags = writable ? PyBUF_WRITABLE : PyBUF_SIMPLE;
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        return NULL;
    }
    if (offset < 0 || view->len < width || offset > view->len - width) {
        PyErr_Format(PyExc_IndexError,
                     "offset %zd: a %zd-byte word does not fit in a buffer of %zd bytes",
                     offset, width, view->len);
        PyBuffer_Release(view);
        return NULL;
    }
    char *addr = (char *)view->buf + offset;
    if (((uintptr_t)addr) % (uintptr_t)width != 0) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd: address %p is not aligned to %zd bytes", offset,
                     (void *)addr, width);
        PyBuffer_Release(view);
        return NULL;
    }
    return addr;
}

/* Convert a Python int to an unsigned value of at most `max`, or raise OverflowError. */
static int
to_unsigned(PyObject *value, unsigned long long max, unsigned long long *out)
{
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "expected an int, got %s", Py_TYPE(value)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (v > max) {
        PyErr_Format(PyExc_OverflowError, "value %llu does not fit in the word (max %llu)",
                     v, max);
        return -1;
    }
    *out = v;
    return 0;
}

#define DEFINE_OPS(BITS, CTYPE, MAX)                                                       \
    static PyObject *load_u##BITS(PyObject *self, PyObject *args)                          \
    {                                                                                      \
        (void)self;                                                                        \
        PyObject *obj;                                                                     \
        Py_ssize_t offset;                                                                 \
        Py_buffer view;                                                                    \
        if (!PyArg_ParseTuple(args, "On:load_u" #BITS, &obj, &offset)) {                   \
            return NULL;                                                                   \
        }                                                                                  \
        CTYPE *p = word_at(obj, offset, sizeof(CTYPE), 0, &view);                          \
        if (p == NULL) {                                                                   \
            return NULL;                                                                   \
        }                                                                                  \
        CTYPE v = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                    \
        PyBuffer_Release(&view);                                                           \
        return PyLong_FromUnsignedLongLong((unsigned long long)v);                         \
    }                                                                                      \
                                                                                           \
    static PyObject *store_u##BITS(PyObject *self, PyObject *args)                         \
    {                                                                                      \
        (void)self;                                                                        \
        PyObject *obj, *value;                                                             \
        Py_ssize_t offset;                                                                 \
        unsigned long long v;                                                              \
        Py_buffer view;                                                                    \
        if (!PyArg_ParseTuple(args, "OnO:store_u" #BITS, &obj, &offset, &value) ||         \
            to_unsigned(value, MAX, &v) != 0) {                                            \
            return NULL;                                                                   \
        }                                                                                  \
        CTYPE *p = word_at(obj, offset, sizeof(CTYPE), 1, &view);                          \
        if (p == NULL) {                                                                   \
            return NULL;                                                                   \
        }                                                                                  \
        __atomic_store_n(p, (CTYPE)v, __ATOMIC_SEQ_CST);                                   \
        PyBuffer_Release(&view);                                                           \
        Py_RETURN_NONE;                                                                    \
    }                                                                                      \
                                                                                           \
    static PyObject *fetch_add_u##BITS(PyObject *self, PyObject *args)                     \
    {                                                                                      \
        (void)self;                                                                        \
        PyObject *obj, *value;                                                             \
        Py_ssize_t offset;                                                                 \
        unsigned long long v;                                                              \
        Py_buffer view;                                                                    \
        if (!PyArg_ParseTuple(args, "OnO:fetch_add_u" #BITS, &obj, &offset, &value) ||     \
            to_unsigned(value, MAX, &v) != 0) {                                            \
            return NULL;                                                                   \
        }                                                                                  \
        CTYPE *p = word_at(obj, offset, sizeof(CTYPE), 1, &view);                          \
        if (p == NULL) {                                                                   \
            return NULL;                                                                   \
        }                                                                                  \
        CTYPE old = __atomic_fetch_add(p, (CTYPE)v, __ATOMIC_SEQ_CST);                     \
        PyBuffer_Release(&view);                                                           \
        return PyLong_FromUnsignedLongLong((unsigned long long)old);                       \
    }                                                                                      \
                                                                                           \
    static PyObject *fetch_sub_u##BITS(PyObject *self, PyObject *args)                     \
    {                                                                                      \
        (void)self;                                                                        \
        PyObject *obj, *value;                                                             \
        Py_ssize_t offset;                                                                 \
        unsigned long long v;                                                              \
        Py_buffer view;                                                                    \
        if (!PyArg_ParseTuple(args, "OnO:fetch_sub_u" #BITS, &obj, &offset, &value) ||     \
            to_unsigned(value, MAX, &v) != 0) {                                            \
            return NULL;                                                                   \
        }                                                                                  \
        CTYPE *p = word_at(obj, offset, sizeof(CTYPE), 1, &view);                          \
        if (p == NULL) {                                                                   \
            return NULL;                                                                   \
        }                                                                                  \
        CTYPE old = __atomic_fetch_sub(p, (CTYPE)v, __ATOMIC_SEQ_CST);                     \
        PyBuffer_Release(&view);                                                           \
        return PyLong_FromUnsignedLongLong((unsigned long long)old);                       \
    }                                                                                      \
                                                                                           \
    static PyObject *compare_exchange_u##BITS(PyObject *self, PyObject *args)              \
    {                                                                                      \
        (void)self;                                                                        \
        PyObject *obj, *expected_obj, *desired_obj;                                        \
        Py_ssize_t offset;                                                                 \
        unsigned long long expected, desired;                                              \
        Py_buffer view;                                                                    \
        if (!PyArg_ParseTuple(args, "OnOO:compare_exchange_u" #BITS, &obj, &offset,        \
                              &expected_obj, &desired_obj) ||                              \
            to_unsigned(expected_obj, MAX, &expected) != 0 ||                              \
            to_unsigned(desired_obj, MAX, &desired) != 0) {                                \
            return NULL;                                                                   \
        }                                                                                  \
        CTYPE *p = word_at(obj, offset, sizeof(CTYPE), 1, &view);                          \
        if (p == NULL) {                                                                   \
            return NULL;                                                                   \
        }                                                                                  \
        CTYPE current = (CTYPE)expected;                                                   \
        int ok = __atomic_compare_exchange_n(p, &current, (CTYPE)desired, 0,               \
                                             __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);          \
        PyBuffer_Release(&view);                                                           \
        return Py_BuildValue("(OK)", ok ? Py_True : Py_False,                              \
                             (unsigned long long)current);                                 \
    }

DEFINE_OPS(32, uint32_t, 0xFFFFFFFFULL)
DEFINE_OPS(64, uint64_t, 0xFFFFFFFFFFFFFFFFULL)

#define METHODS(BITS)                                                                      \
    {"load_u" #BITS, load_u##BITS, METH_VARARGS,                                           \
     "load_u" #BITS "(buffer, offset) -> int: seq_cst atomic load."},                      \
        {"store_u" #BITS, store_u##BITS, METH_VARARGS,                                     \
         "store_u" #BITS "(buffer, offset, value): seq_cst atomic store."},                \
        {"fetch_add_u" #BITS, fetch_add_u##BITS, METH_VARARGS,                             \
         "fetch_add_u" #BITS "(buffer, offset, delta) -> old value (wraps)."},             \
        {"fetch_sub_u" #BITS, fetch_sub_u##BITS, METH_VARARGS,                             \
         "fetch_sub_u" #BITS "(buffer, offset, delta) -> old value (wraps)."},             \
        {"compare_exchange_u" #BITS, compare_exchange_u##BITS, METH_VARARGS,               \
         "compare_exchange_u" #BITS "(buffer, offset, expected, desired) -> "              \
         "(swapped, value seen)."},

static PyMethodDef atomic_methods[] = {
    METHODS(32) METHODS(64){NULL, NULL, 0, NULL},
};

static struct PyModuleDef atomic_module = {
    PyModuleDef_HEAD_INIT,
    "beambridge._atomic",
    "Sequentially consistent atomics on aligned u32/u64 words inside a buffer.",
    -1,
    atomic_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__atomic(void)
{
    return PyModule_Create(&atomic_module);
}
