/* beambridge._sszc: the column plans of beambridge.ssz_columns in C, for batches of
 * typed-schema values (protocol/formats/ssz.md, "Batches").
 *
 * A plan is a tuple of fields (name, kind, element kind, n) for a container whose
 * fields are numbers, booleans, vectors of numbers (its fixed part), strings, bytes
 * and lists of numbers. encode(values, plan, fixed_size) walks the values once and
 * writes the SSZ list of them; decode(data, plan, fixed_size, cls) reads one and
 * makes each value with cls(*fields). Either returns None, with no exception set,
 * whenever a value or a byte is not exactly as it should be: the caller's exact codec
 * then does the whole batch again and names what is wrong. So nothing here decides
 * an error, and the bytes and values are the exact codec's.
 *
 * Every read of `data` is bounds-checked against its length: bytes from the other
 * runtime are not trusted.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "beambridge._sszc writes numbers as they are in memory: little-endian hosts only"
#endif

/* Field kinds (beambridge/ssz_columns.py, _KINDS) */
enum {
    K_U8, K_U16, K_U32, K_U64, K_I8, K_I16, K_I32, K_I64,
    K_F32, K_F64, K_BOOL, K_STRING, K_BYTES, K_LIST, K_VECTOR
};

#define FLOAT32_MAX 3.4028234663852886e38
#define TWO_53 9007199254740992.0
#define OFFSET_LIMIT ((uint64_t)1 << 32)
#define MAX_FIELDS 256

typedef struct {
    PyObject *name; /* borrowed from the plan tuple */
    int kind, elem;
    Py_ssize_t n;   /* a list's limit, a vector's length */
} field_t;

static int kind_size(int kind) {
    switch (kind) {
    case K_U8: case K_I8: case K_BOOL: return 1;
    case K_U16: case K_I16: return 2;
    case K_U32: case K_I32: case K_F32: return 4;
    case K_U64: case K_I64: case K_F64: return 8;
    default: return 4; /* an offset */
    }
}

static int is_number(int kind) { return kind >= K_U8 && kind <= K_F64; }

/* The bytes field `d` takes in the fixed part (an offset, for a variable-size one). */
static Py_ssize_t field_size(const field_t *d) {
    return d->kind == K_VECTOR ? kind_size(d->elem) * d->n : kind_size(d->kind);
}

/* The plan's fields into `fields`; -1 with an exception when it is malformed. */
static Py_ssize_t read_plan(PyObject *plan, field_t *fields, Py_ssize_t fixed_size) {
    if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) == 0 || PyTuple_GET_SIZE(plan) > MAX_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "a plan is a tuple of 1 to 256 fields");
        return -1;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(plan), size = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *f = PyTuple_GET_ITEM(plan, i);
        field_t *d = &fields[i];
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 4 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(f, 0))) {
            PyErr_SetString(PyExc_TypeError, "a plan field is (name, kind, elem, n)");
            return -1;
        }
        d->name = PyTuple_GET_ITEM(f, 0);
        d->kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(f, 1));
        d->elem = (int)PyLong_AsLong(PyTuple_GET_ITEM(f, 2));
        d->n = PyLong_AsSsize_t(PyTuple_GET_ITEM(f, 3));
        if (PyErr_Occurred()) return -1;
        int compound = d->kind == K_LIST || d->kind == K_VECTOR;
        if (d->kind < K_U8 || d->kind > K_VECTOR || (compound && !is_number(d->elem)) ||
            d->n < 0 || (d->kind == K_VECTOR && d->n == 0)) {
            PyErr_SetString(PyExc_ValueError, "a plan field of no known kind");
            return -1;
        }
        size += field_size(d);
    }
    if (size != fixed_size) {
        PyErr_SetString(PyExc_ValueError, "a plan whose fields do not add up to its fixed size");
        return -1;
    }
    return count;
}

/* ---- writing ------------------------------------------------------------------------- */

/* The bytes being written: a bytes object grown in place (a large one is remapped, not
 * copied) and cut to its length at the end, so the list is never copied whole. */
typedef struct {
    PyObject *bytes;
    char *data;
    size_t len, cap;
} buf_t;

static int reserve(buf_t *b, size_t more) {
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + more) cap *= 2;
    if (cap > PY_SSIZE_T_MAX) {
        PyErr_NoMemory();
        return -1;
    }
    if (b->bytes == NULL) {
        b->bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
        if (b->bytes == NULL) return -1;
    } else if (_PyBytes_Resize(&b->bytes, (Py_ssize_t)cap) < 0) {
        return -1; /* b->bytes is NULL now */
    }
    b->data = PyBytes_AS_STRING(b->bytes);
    b->cap = cap;
    return 0;
}

/* One number `x` of `kind` at `at`: 0, or 1 when it does not go as it is. */
static int put_number(int kind, PyObject *x, char *at) {
    if (kind == K_F32 || kind == K_F64) {
        double d;
        if (PyFloat_CheckExact(x)) {
            d = PyFloat_AS_DOUBLE(x);
        } else if (PyLong_CheckExact(x)) {
            int overflow;
            long long v = PyLong_AsLongLongAndOverflow(x, &overflow);
            if (overflow || v <= -(long long)TWO_53 || v >= (long long)TWO_53) return 1;
            d = (double)v;
        } else {
            return 1;
        }
        if (!isfinite(d)) return 1;
        if (kind == K_F32) {
            if (fabs(d) > FLOAT32_MAX) return 1;
            float f = (float)d;
            memcpy(at, &f, 4);
        } else {
            memcpy(at, &d, 8);
        }
        return 0;
    }
    if (kind == K_BOOL) {
        if (x == Py_True) *at = 1;
        else if (x == Py_False) *at = 0;
        else return 1;
        return 0;
    }
    if (!PyLong_CheckExact(x)) return 1;
    if (kind <= K_U64) {
        unsigned long long v = PyLong_AsUnsignedLongLong(x);
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* negative, or past 64 bits */
            return 1;
        }
        switch (kind) {
        case K_U8: if (v > UINT8_MAX) return 1; { uint8_t w = (uint8_t)v; memcpy(at, &w, 1); } break;
        case K_U16: if (v > UINT16_MAX) return 1; { uint16_t w = (uint16_t)v; memcpy(at, &w, 2); } break;
        case K_U32: if (v > UINT32_MAX) return 1; { uint32_t w = (uint32_t)v; memcpy(at, &w, 4); } break;
        default: { uint64_t w = v; memcpy(at, &w, 8); }
        }
        return 0;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(x, &overflow);
    if (overflow) return 1;
    switch (kind) {
    case K_I8: if (v < INT8_MIN || v > INT8_MAX) return 1; { int8_t w = (int8_t)v; memcpy(at, &w, 1); } break;
    case K_I16: if (v < INT16_MIN || v > INT16_MAX) return 1; { int16_t w = (int16_t)v; memcpy(at, &w, 2); } break;
    case K_I32: if (v < INT32_MIN || v > INT32_MAX) return 1; { int32_t w = (int32_t)v; memcpy(at, &w, 4); } break;
    default: { int64_t w = v; memcpy(at, &w, 8); }
    }
    return 0;
}

/* A list or tuple's numbers at `at` (room for `count` of `kind` is there). */
static int put_numbers(int kind, PyObject *seq, Py_ssize_t count, char *at) {
    PyObject **items = PySequence_Fast_ITEMS(seq);
    int size = kind_size(kind);
    for (Py_ssize_t k = 0; k < count; k++)
        if (put_number(kind, items[k], at + k * size)) return 1;
    return 0;
}

/* Field `d` of one value `x` into `b`: its place in the fixed part is `at`; a variable
 * part goes at the end, its offset (from `start`, where the value starts) at `at`.
 * 0: done; 1: the value does not go as it is; -1: an exception (out of memory). */
static int put_field(const field_t *d, PyObject *x, buf_t *b, size_t at, size_t start) {
    if (is_number(d->kind) || d->kind == K_BOOL) return put_number(d->kind, x, b->data + at);
    if (d->kind == K_VECTOR) {
        if (!(PyList_CheckExact(x) || PyTuple_CheckExact(x)) || PySequence_Fast_GET_SIZE(x) != d->n)
            return 1;
        return put_numbers(d->elem, x, d->n, b->data + at);
    }
    const char *src = NULL;
    Py_ssize_t len;
    if (d->kind == K_STRING) {
        if (!PyUnicode_CheckExact(x)) return 1;
        src = PyUnicode_AsUTF8AndSize(x, &len);
        if (src == NULL) { /* a lone surrogate: no UTF-8 for it */
            PyErr_Clear();
            return 1;
        }
    } else if (d->kind == K_BYTES) {
        if (!PyBytes_CheckExact(x)) return 1;
        src = PyBytes_AS_STRING(x);
        len = PyBytes_GET_SIZE(x);
    } else { /* K_LIST */
        if (!(PyList_CheckExact(x) || PyTuple_CheckExact(x))) return 1;
        if (PySequence_Fast_GET_SIZE(x) > d->n) return 1;
        len = PySequence_Fast_GET_SIZE(x) * kind_size(d->elem);
    }
    uint64_t offset = b->len - start;
    if (offset >= OFFSET_LIMIT) return 1; /* the exact codec says how large */
    uint32_t o = (uint32_t)offset;
    memcpy(b->data + at, &o, 4);
    if (reserve(b, (size_t)len) < 0) return -1;
    if (src != NULL) {
        memcpy(b->data + b->len, src, (size_t)len);
    } else if (put_numbers(d->elem, x, PySequence_Fast_GET_SIZE(x), b->data + b->len)) {
        return 1;
    }
    b->len += (size_t)len;
    return 0;
}

static int has_variable(const field_t *fields, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++)
        if (fields[i].kind >= K_STRING && fields[i].kind <= K_LIST) return 1;
    return 0;
}

static PyObject *encode(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *values, *plan;
    Py_ssize_t fixed_size;
    field_t fields[MAX_FIELDS];
    if (!PyArg_ParseTuple(args, "O!On", &PyList_Type, &values, &plan, &fixed_size)) return NULL;
    Py_ssize_t count = read_plan(plan, fields, fixed_size);
    if (count < 0) return NULL;
    int variable = has_variable(fields, count);
    Py_ssize_t n = PyList_GET_SIZE(values);
    buf_t b = {NULL, NULL, 0, 0};
    size_t table = variable ? 4 * (size_t)n : 0;
    if (reserve(&b, table + (size_t)n * (size_t)fixed_size + 1) < 0) return PyErr_NoMemory();
    b.len = table;
    int status = 0; /* 1: not as it is; -1: an exception */
    for (Py_ssize_t i = 0; i < n && status == 0; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        size_t start = b.len;
        if (variable) {
            if (start >= OFFSET_LIMIT) {
                status = 1;
                break;
            }
            uint32_t o = (uint32_t)start;
            memcpy(b.data + 4 * i, &o, 4);
        }
        if (reserve(&b, (size_t)fixed_size) < 0) {
            status = -1;
            PyErr_NoMemory();
            break;
        }
        b.len += (size_t)fixed_size;
        size_t at = start;
        for (Py_ssize_t k = 0; k < count && status == 0; k++) {
            const field_t *d = &fields[k];
            PyObject *x = PyObject_GetAttr(v, d->name);
            if (x == NULL) {
                PyErr_Clear(); /* the exact codec says what is missing */
                status = 1;
                break;
            }
            status = put_field(d, x, &b, at, start);
            Py_DECREF(x);
            at += (size_t)field_size(d);
        }
    }
    if (status == 0 && variable && b.len >= OFFSET_LIMIT) status = 1;
    if (status == 0) {
        if (_PyBytes_Resize(&b.bytes, (Py_ssize_t)b.len) < 0) return NULL;
        return b.bytes;
    }
    Py_XDECREF(b.bytes);
    return status > 0 ? Py_NewRef(Py_None) : NULL;
}

/* ---- reading ------------------------------------------------------------------------- */

static uint32_t u32_at(const char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The number of `kind` at `p`, a new reference; NULL with no exception when it is not
 * one the exact codec takes (a float that is NaN or infinite, a boolean byte over 1). */
static PyObject *get_number(int kind, const char *p) {
    switch (kind) {
    case K_U8: return PyLong_FromUnsignedLong(*(const uint8_t *)p);
    case K_U16: { uint16_t v; memcpy(&v, p, 2); return PyLong_FromUnsignedLong(v); }
    case K_U32: { uint32_t v; memcpy(&v, p, 4); return PyLong_FromUnsignedLong(v); }
    case K_U64: { uint64_t v; memcpy(&v, p, 8); return PyLong_FromUnsignedLongLong(v); }
    case K_I8: return PyLong_FromLong(*(const int8_t *)p);
    case K_I16: { int16_t v; memcpy(&v, p, 2); return PyLong_FromLong(v); }
    case K_I32: { int32_t v; memcpy(&v, p, 4); return PyLong_FromLong(v); }
    case K_I64: { int64_t v; memcpy(&v, p, 8); return PyLong_FromLongLong(v); }
    case K_F32: {
        float v;
        memcpy(&v, p, 4);
        return isfinite(v) ? PyFloat_FromDouble(v) : NULL;
    }
    case K_F64: {
        double v;
        memcpy(&v, p, 8);
        return isfinite(v) ? PyFloat_FromDouble(v) : NULL;
    }
    case K_BOOL:
        if ((uint8_t)*p > 1) return NULL;
        return Py_NewRef(*p ? Py_True : Py_False);
    default:
        return NULL;
    }
}

/* A list of `count` numbers of `kind` at `p`, or NULL (with or without an exception). */
static PyObject *get_numbers(int kind, const char *p, Py_ssize_t count) {
    PyObject *list = PyList_New(count);
    if (list == NULL) return NULL;
    int size = kind_size(kind);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *x = get_number(kind, p + k * size);
        if (x == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, x);
    }
    return list;
}

/* Field `d` of a value: `p` its bytes, `lo`..`hi` its variable part (if any). */
static PyObject *get_field(const field_t *d, const char *p, size_t at, size_t lo, size_t hi) {
    if (is_number(d->kind) || d->kind == K_BOOL) return get_number(d->kind, p + at);
    if (d->kind == K_VECTOR) return get_numbers(d->elem, p + at, d->n);
    size_t len = hi - lo;
    if (d->kind == K_STRING) {
        PyObject *s = PyUnicode_DecodeUTF8(p + lo, (Py_ssize_t)len, "strict");
        if (s == NULL) PyErr_Clear();
        return s;
    }
    if (d->kind == K_BYTES) return PyBytes_FromStringAndSize(p + lo, (Py_ssize_t)len);
    size_t size = (size_t)kind_size(d->elem); /* K_LIST */
    if (len % size || len / size > (size_t)d->n) return NULL;
    return get_numbers(d->elem, p + lo, (Py_ssize_t)(len / size));
}

/* One value from its `len` bytes at `p`: a new reference, or NULL (an exception set
 * only when it is one to raise, out of memory). */
static PyObject *get_value(const field_t *fields, Py_ssize_t count, Py_ssize_t fixed_size,
                           PyObject *cls, const char *p, size_t len) {
    PyObject *vals[MAX_FIELDS];
    size_t lo[MAX_FIELDS], hi[MAX_FIELDS];
    if (len < (size_t)fixed_size) return NULL;
    /* where each variable part is: offsets in order, the first right after the fixed part */
    size_t at = 0, prev = (size_t)fixed_size;
    Py_ssize_t last = -1;
    for (Py_ssize_t k = 0; k < count; k++) {
        const field_t *d = &fields[k];
        lo[k] = hi[k] = 0;
        if (d->kind >= K_STRING && d->kind <= K_LIST) {
            size_t o = u32_at(p + at);
            if ((last < 0 && o != (size_t)fixed_size) || o < prev || o > len) return NULL;
            if (last >= 0) hi[last] = o;
            lo[k] = prev = o;
            last = k;
        }
        at += (size_t)field_size(d);
    }
    if (last >= 0) hi[last] = len;
    else if (len != (size_t)fixed_size) return NULL;
    at = 0;
    Py_ssize_t made = 0;
    for (; made < count; made++) {
        const field_t *d = &fields[made];
        vals[made] = get_field(d, p, at, lo[made], hi[made]);
        if (vals[made] == NULL) break;
        at += (size_t)field_size(d);
    }
    PyObject *obj = NULL;
    if (made == count) {
        obj = PyObject_Vectorcall(cls, vals, (size_t)count, NULL);
        if (obj == NULL && !PyErr_ExceptionMatches(PyExc_MemoryError))
            PyErr_Clear(); /* the exact codec raises it again, as it always has */
    }
    for (Py_ssize_t k = 0; k < made; k++) Py_DECREF(vals[k]);
    return obj;
}

static PyObject *decode(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer view;
    PyObject *plan, *cls;
    Py_ssize_t fixed_size;
    field_t fields[MAX_FIELDS];
    if (!PyArg_ParseTuple(args, "y*OnO", &view, &plan, &fixed_size, &cls)) return NULL;
    PyObject *out = NULL;
    Py_ssize_t count = read_plan(plan, fields, fixed_size);
    if (count < 0) goto done;
    int variable = has_variable(fields, count);
    const char *data = view.buf;
    size_t len = (size_t)view.len, n;
    if (!variable) {
        if (fixed_size == 0 || len % (size_t)fixed_size) goto none;
        n = len / (size_t)fixed_size;
    } else {
        if (len < 4) goto none;
        size_t first = u32_at(data);
        if (first % 4 || first == 0 || first > len) goto none;
        n = first / 4;
    }
    out = PyList_New((Py_ssize_t)n);
    if (out == NULL) goto done;
    for (size_t i = 0; i < n; i++) {
        size_t lo = variable ? u32_at(data + 4 * i) : i * (size_t)fixed_size;
        size_t hi = !variable ? lo + (size_t)fixed_size : i + 1 < n ? u32_at(data + 4 * (i + 1)) : len;
        if (lo > hi || hi > len) goto bad;
        PyObject *v = get_value(fields, count, fixed_size, cls, data + lo, hi - lo);
        if (v == NULL) goto bad;
        PyList_SET_ITEM(out, (Py_ssize_t)i, v);
    }
    goto done;
bad:
    Py_CLEAR(out);
    if (PyErr_Occurred()) goto done;
none:
    out = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS,
     "encode(values, plan, fixed_size) -> bytes or None: the SSZ list of values."},
    {"decode", decode, METH_VARARGS,
     "decode(data, plan, fixed_size, cls) -> list or None: the values of an SSZ list."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sszc",
    "Column plans of beambridge.ssz_columns in C (see beambridge/_sszc.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__sszc(void) { return PyModule_Create(&module); }
