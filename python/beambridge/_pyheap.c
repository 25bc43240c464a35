/* beambridge._pyheap: the worker keeps the interpreter's small-object memory between
 * calls.
 *
 * CPython's small-object allocator (pymalloc) takes its memory from the system in
 * arenas (1 MiB each on 64-bit builds since 3.10) and gives an arena back (munmap) as
 * soon as every object in it is freed. A call whose arguments are a million schema
 * values makes about half a GiB of small objects; freed after the answer, all of it
 * goes back to the kernel, and the next such call takes it again, page by page: some
 * 140,000 page faults, each one a zeroed page, about as long as making the objects
 * (measured: reading 1M ModelConfig values 0.6-0.8 s with the memory given back, 0.3 s
 * with it kept).
 *
 * install(limit) puts an arena allocator in front of pymalloc's
 * (PyObject_SetArenaAllocator) that keeps freed arenas, up to `limit` bytes, for the
 * next ones pymalloc asks for; trim() gives back all it keeps (the worker calls it
 * when no call has come for a second, beambridge.worker). Arenas it does not keep,
 * and any of another size, are mapped and unmapped as CPython's own allocator does,
 * so an arena made before install() is freed correctly after it. stats() says what
 * is kept. The interpreter's frame stacks come from the same allocator (blocks of 16
 * KiB), and are kept the same way. pymalloc calls its arena allocator with the GIL
 * held; a lock guards the lists all the same, for interpreters of their own GIL
 * (3.12) and free-threaded builds, which call it for frame stacks alone. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>

/* a kept block: its first bytes link to the next (nothing else uses them while kept) */
typedef struct kept {
    struct kept *next;
} kept_t;

/* Kept blocks by size: pymalloc's arenas, and the interpreter's frame stacks, which
 * come from the same allocator (16 KiB). Blocks of a size past these are not kept. */
#define SIZES 8

static struct {
    size_t size;
    kept_t *first;
} kept[SIZES];
static size_t kept_bytes; /* of all sizes */
static size_t limit;      /* bytes kept at most */
static int installed;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *map(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* The list for blocks of `size`, a new one if there is room; NULL when none. */
static int slot(size_t size) {
    for (int i = 0; i < SIZES; i++) {
        if (kept[i].size == size) return i;
        if (kept[i].size == 0) {
            kept[i].size = size;
            return i;
        }
    }
    return -1;
}

static void *arena_alloc(void *Py_UNUSED(ctx), size_t size) {
    kept_t *a = NULL;
    pthread_mutex_lock(&lock);
    int i = slot(size);
    if (i >= 0 && kept[i].first != NULL) {
        a = kept[i].first;
        kept[i].first = a->next;
        kept_bytes -= size;
    }
    pthread_mutex_unlock(&lock);
    return a != NULL ? a : map(size);
}

static void arena_free(void *Py_UNUSED(ctx), void *ptr, size_t size) {
    if (ptr == NULL) return;
    int keep = 0;
    pthread_mutex_lock(&lock);
    int i = slot(size);
    if (i >= 0 && size >= sizeof(kept_t) && kept_bytes + size <= limit) {
        kept_t *a = ptr;
        a->next = kept[i].first;
        kept[i].first = a;
        kept_bytes += size;
        keep = 1;
    }
    pthread_mutex_unlock(&lock);
    if (!keep) munmap(ptr, size);
}

/* Gives back kept blocks until at most `keep` bytes are kept; the bytes given back. */
static size_t release(size_t keep) {
    size_t freed = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < SIZES && kept_bytes > keep; i++) {
        while (kept[i].first != NULL && kept_bytes > keep) {
            kept_t *a = kept[i].first;
            kept[i].first = a->next;
            munmap(a, kept[i].size);
            kept_bytes -= kept[i].size;
            freed += kept[i].size;
        }
    }
    pthread_mutex_unlock(&lock);
    return freed;
}

static PyObject *install(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_ssize_t bytes;
    if (!PyArg_ParseTuple(args, "n", &bytes)) return NULL;
    if (bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "install(limit): limit is bytes, 0 or more");
        return NULL;
    }
    pthread_mutex_lock(&lock);
    limit = (size_t)bytes;
    pthread_mutex_unlock(&lock);
    release(limit);
    if (!installed) {
        PyObjectArenaAllocator allocator = {NULL, arena_alloc, arena_free};
        PyObject_SetArenaAllocator(&allocator);
        installed = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *trim(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    return PyLong_FromSize_t(release(0));
}

static PyObject *stats(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    pthread_mutex_lock(&lock);
    Py_ssize_t bytes = (Py_ssize_t)kept_bytes, most = (Py_ssize_t)limit;
    pthread_mutex_unlock(&lock);
    return Py_BuildValue("{s:O,s:n,s:n}", "installed", installed ? Py_True : Py_False, "kept",
                         bytes, "limit", most);
}

static PyMethodDef methods[] = {
    {"install", install, METH_VARARGS,
     "install(limit): keep freed arenas of the small-object allocator, up to limit bytes."},
    {"trim", trim, METH_NOARGS, "trim() -> int: give back every kept arena; the bytes."},
    {"stats", stats, METH_NOARGS,
     "stats() -> dict: installed, kept and limit (bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pyheap",
    "The worker keeps the interpreter's small-object memory between calls "
    "(see beambridge/_pyheap.c).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pyheap(void) { return PyModule_Create(&module); }
