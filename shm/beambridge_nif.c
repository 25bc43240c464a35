/*
 * beambridge_nif.c — the part of beambridge that needs C.
 *
 * System calls (shm_open, posix_fallocate, mmap, shm_unlink), bounded copies
 * in and out of a mapping, sequentially consistent atomics on control-block
 * words, reader leases whose release is driven by a resource destructor,
 * xxh3_64, and zstd decompression of Arrow body buffers (bounded by the size
 * the stream declares, invariant 5). Header parsing and policy live in Elixir
 * (Bridge.Header, Bridge.Region); see protocol/SPEC.md.
 *
 * Safety rules kept throughout this file:
 *   - every argument is checked; user-reachable input never raises badarg and
 *     never leads to an access outside [addr, addr + size);
 *   - munmap happens only in the region destructor; a lease holds a reference
 *     on its region, and zero-copy binaries hold a reference on their lease,
 *     so the mapping outlives every binary pointing into it (invariant 1);
 *   - destructors never block;
 *   - copies, hashes and decompression above DIRTY_THRESHOLD run on dirty CPU
 *     schedulers.
 */
#define _GNU_SOURCE
#include "nif_common.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#define CB_SIZE 64u
#define MIN_REGION_SIZE 192u
#define MAX_REGION_SIZE (((uint64_t)1) << 48)
#define MAX_NAME_LEN 255u
/* zstd_decompress never makes a binary larger than this (Arrow's max_decompressed default). */
#define MAX_DECOMPRESSED (((uint64_t)1) << 32)


/* ------------------------------------------------------------------------ */
/* Resource types                                                           */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint8_t *addr;  /* MAP_SHARED mapping, unmapped only in region_dtor */
    size_t size;    /* fstat size at create/attach time */
    int owner;      /* created by this process: unlink on GC if not closed */
    int closed;     /* atomic flag: later operations return {error, closed} */
    int unlinked;   /* atomic flag: the name has been unlinked by us */
    char name[MAX_NAME_LEN + 1];
} region_t;

enum { LEASE_ACTIVE = 0, LEASE_HAS_BINARY = 1, LEASE_RELEASED = 2 };

typedef struct {
    region_t *region;  /* kept with enif_keep_resource */
    size_t count_off;  /* offset of the u32 lease counter */
    int state;         /* atomic, LEASE_* */
} lease_t;

static ErlNifResourceType *REGION_RT;
static ErlNifResourceType *LEASE_RT;

ERL_NIF_TERM ATOM_OK, ATOM_ERROR, ATOM_BADARG, ATOM_OUT_OF_BOUNDS, ATOM_CLOSED, ATOM_IN_USE,
    ATOM_RELEASED, ATOM_ENOMEM, ATOM_TRUE, ATOM_FALSE, ATOM_TOO_LARGE, ATOM_SIZE_MISMATCH;
static ERL_NIF_TERM ATOM_MISALIGNED, ATOM_BAD_NAME, ATOM_REGION_TOO_SMALL, ATOM_REGION_TOO_LARGE,
    ATOM_STATE_MISMATCH, ATOM_NOT_OWNER, ATOM_BAD_COMPRESSED_DATA;

static void region_dtor(ErlNifEnv *env, void *obj)
{
    region_t *r = (region_t *)obj;
    (void)env;
    if (r->owner && !__atomic_load_n(&r->closed, __ATOMIC_SEQ_CST) &&
        !__atomic_exchange_n(&r->unlinked, 1, __ATOMIC_SEQ_CST)) {
        DBG("dtor unlinks %s\n", r->name);
        shm_unlink(r->name);
    }
    if (r->addr != NULL) {
        munmap(r->addr, r->size);
        r->addr = NULL;
    }
}

static void lease_dtor(ErlNifEnv *env, void *obj)
{
    lease_t *l = (lease_t *)obj;
    (void)env;
    if (l->region == NULL)
        return;
    if (__atomic_exchange_n(&l->state, LEASE_RELEASED, __ATOMIC_SEQ_CST) != LEASE_RELEASED) {
        uint32_t *count = (uint32_t *)(l->region->addr + l->count_off);
        __atomic_fetch_sub(count, 1u, __ATOMIC_SEQ_CST);
    }
    enif_release_resource(l->region);
    l->region = NULL;
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

ERL_NIF_TERM error_tuple(ErlNifEnv *env, ERL_NIF_TERM reason)
{
    return enif_make_tuple2(env, ATOM_ERROR, reason);
}

ERL_NIF_TERM ok_tuple(ErlNifEnv *env, ERL_NIF_TERM value)
{
    return enif_make_tuple2(env, ATOM_OK, value);
}

/* {error, eNAME} for an errno value, e.g. enospc; unknown values -> errno_<n>. */
ERL_NIF_TERM errno_error(ErlNifEnv *env, int err)
{
    char buf[64];
    const char *name = strerrorname_np(err);
    size_t i;
    if (name == NULL) {
        snprintf(buf, sizeof buf, "errno_%d", err);
    } else {
        for (i = 0; name[i] != '\0' && i < sizeof buf - 1; i++)
            buf[i] = (char)tolower((unsigned char)name[i]);
        buf[i] = '\0';
    }
    return error_tuple(env, enif_make_atom(env, buf));
}

/*
 * Reads a non-negative integer that fits in uint64_t.
 * Not an integer -> badarg; an integer that is negative or >= 2^64 ->
 * out_of_bounds.
 */
int get_u64(ErlNifEnv *env, ERL_NIF_TERM t, uint64_t *out, ERL_NIF_TERM *err)
{
    ErlNifUInt64 v;
    if (enif_get_uint64(env, t, &v)) {
        *out = (uint64_t)v;
        return 1;
    }
    if (enif_term_type(env, t) == ERL_NIF_TERM_TYPE_INTEGER)
        *err = error_tuple(env, ATOM_OUT_OF_BOUNDS);
    else
        *err = error_tuple(env, ATOM_BADARG);
    return 0;
}

/* A value to be stored in a word of `width` bytes: badarg when it does not fit. */
static int get_value(ErlNifEnv *env, ERL_NIF_TERM t, unsigned width, uint64_t *out,
                     ERL_NIF_TERM *err)
{
    ErlNifUInt64 v;
    if (!enif_get_uint64(env, t, &v) || (width == 4 && v > UINT32_MAX)) {
        *err = error_tuple(env, ATOM_BADARG);
        return 0;
    }
    *out = (uint64_t)v;
    return 1;
}

static int get_region(ErlNifEnv *env, ERL_NIF_TERM t, region_t **out, int allow_closed,
                      ERL_NIF_TERM *err)
{
    region_t *r;
    if (!enif_get_resource(env, t, REGION_RT, (void **)&r) || r->addr == NULL) {
        *err = error_tuple(env, ATOM_BADARG);
        return 0;
    }
    if (!allow_closed && __atomic_load_n(&r->closed, __ATOMIC_SEQ_CST)) {
        *err = error_tuple(env, ATOM_CLOSED);
        return 0;
    }
    *out = r;
    return 1;
}

/* [off, off + len) lies inside the region; overflow-safe. */
static int in_bounds(const region_t *r, uint64_t off, uint64_t len)
{
    return off <= (uint64_t)r->size && len <= (uint64_t)r->size - off;
}

/* Reads region, offset and length arguments and checks the range. */
static int get_range(ErlNifEnv *env, const ERL_NIF_TERM argv[], region_t **r, uint64_t *off,
                     uint64_t *len, ERL_NIF_TERM *err)
{
    if (!get_region(env, argv[0], r, 0, err))
        return 0;
    if (!get_u64(env, argv[1], off, err) || !get_u64(env, argv[2], len, err))
        return 0;
    if (!in_bounds(*r, *off, *len)) {
        *err = error_tuple(env, ATOM_OUT_OF_BOUNDS);
        return 0;
    }
    return 1;
}

/* A word of `width` bytes at `off`: in bounds and naturally aligned. */
static int get_word(ErlNifEnv *env, const ERL_NIF_TERM argv[], unsigned width, region_t **r,
                    uint8_t **p, ERL_NIF_TERM *err)
{
    uint64_t off;
    if (!get_region(env, argv[0], r, 0, err) || !get_u64(env, argv[1], &off, err))
        return 0;
    if (!in_bounds(*r, off, width)) {
        *err = error_tuple(env, ATOM_OUT_OF_BOUNDS);
        return 0;
    }
    if (off % width != 0) {
        *err = error_tuple(env, ATOM_MISALIGNED);
        return 0;
    }
    *p = (*r)->addr + off;
    return 1;
}

/*
 * A region name as shm_open wants it: "/" followed by 1..254 bytes, no other
 * "/", no NUL. The protocol's stricter pattern (SPEC §1.1) is checked in Elixir.
 */
static int get_name(ErlNifEnv *env, ERL_NIF_TERM t, char *buf, ERL_NIF_TERM *err)
{
    ErlNifBinary bin;
    size_t i;
    if (!enif_inspect_binary(env, t, &bin)) {
        *err = error_tuple(env, ATOM_BADARG);
        return 0;
    }
    if (bin.size < 2 || bin.size > MAX_NAME_LEN || bin.data[0] != '/') {
        *err = error_tuple(env, ATOM_BAD_NAME);
        return 0;
    }
    for (i = 1; i < bin.size; i++) {
        if (bin.data[i] == '/' || bin.data[i] == '\0') {
            *err = error_tuple(env, ATOM_BAD_NAME);
            return 0;
        }
    }
    memcpy(buf, bin.data, bin.size);
    buf[bin.size] = '\0';
    if (strcmp(buf, "/.") == 0 || strcmp(buf, "/..") == 0) {
        *err = error_tuple(env, ATOM_BAD_NAME);
        return 0;
    }
    return 1;
}

static int make_region(ErlNifEnv *env, const char *name, uint8_t *addr, size_t size, int owner,
                       ERL_NIF_TERM *term)
{
    region_t *r = enif_alloc_resource(REGION_RT, sizeof(region_t));
    if (r == NULL)
        return 0;
    memset(r, 0, sizeof *r);
    r->addr = addr;
    r->size = size;
    r->owner = owner;
    strncpy(r->name, name, MAX_NAME_LEN);
    r->name[MAX_NAME_LEN] = '\0';
    *term = enif_make_resource(env, r);
    enif_release_resource(r);
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Regions                                                                  */
/* ------------------------------------------------------------------------ */

/* create(Name, Size) -> {ok, Region} | {error, Reason} */
static ERL_NIF_TERM nif_create(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    char name[MAX_NAME_LEN + 1];
    uint64_t size;
    ERL_NIF_TERM err, region;
    struct statvfs vfs;
    int fd, rc, saved;
    void *addr;
    (void)argc;

    if (!get_name(env, argv[0], name, &err))
        return err;
    if (!get_u64(env, argv[1], &size, &err))
        return err;
    if (size < MIN_REGION_SIZE)
        return error_tuple(env, ATOM_REGION_TOO_SMALL);
    if (size > MAX_REGION_SIZE || size > (uint64_t)SIZE_MAX || size > (uint64_t)INT64_MAX)
        return error_tuple(env, ATOM_REGION_TOO_LARGE);

    fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0)
        return errno_error(env, errno);

    /* Refuse at once when the file system cannot hold the region. */
    if (fstatvfs(fd, &vfs) == 0 && vfs.f_frsize > 0 &&
        (uint64_t)vfs.f_bavail < (size + vfs.f_frsize - 1) / vfs.f_frsize) {
        saved = ENOSPC;
        goto fail;
    }
    /* Reserve the pages: a full /dev/shm is ENOSPC here, never SIGBUS later. */
    do {
        rc = posix_fallocate(fd, 0, (off_t)size);
    } while (rc == EINTR);
    if (rc != 0) {
        saved = rc;
        goto fail;
    }
    addr = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) {
        saved = errno;
        goto fail;
    }
    close(fd);
    if (!make_region(env, name, (uint8_t *)addr, (size_t)size, 1, &region)) {
        munmap(addr, (size_t)size);
        shm_unlink(name);
        return error_tuple(env, ATOM_ENOMEM);
    }
    return ok_tuple(env, region);

fail:
    close(fd);
    shm_unlink(name);
    return errno_error(env, saved);
}

/* attach(Name) -> {ok, Region} | {error, Reason} */
static ERL_NIF_TERM nif_attach(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    char name[MAX_NAME_LEN + 1];
    ERL_NIF_TERM err, region;
    struct stat st;
    int fd, saved;
    void *addr;
    (void)argc;

    if (!get_name(env, argv[0], name, &err))
        return err;
    fd = shm_open(name, O_RDWR | O_NOFOLLOW | O_NONBLOCK, 0);
    if (fd < 0)
        return errno_error(env, errno);
    if (fstat(fd, &st) != 0) {
        saved = errno;
        close(fd);
        return errno_error(env, saved);
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
        close(fd);
        return error_tuple(env, enif_make_atom(env, "bad_permissions"));
    }
    if (st.st_size < (off_t)MIN_REGION_SIZE) {
        close(fd);
        return error_tuple(env, ATOM_REGION_TOO_SMALL);
    }
    if ((uint64_t)st.st_size > MAX_REGION_SIZE) {
        close(fd);
        return error_tuple(env, ATOM_REGION_TOO_LARGE);
    }
    addr = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    saved = errno;
    close(fd);
    if (addr == MAP_FAILED)
        return errno_error(env, saved);
    if (!make_region(env, name, (uint8_t *)addr, (size_t)st.st_size, 0, &region)) {
        munmap(addr, (size_t)st.st_size);
        return error_tuple(env, ATOM_ENOMEM);
    }
    return ok_tuple(env, region);
}

/* unlink(Name) -> ok | {error, Reason}. Used by the reaper (SPEC §1.5). */
static ERL_NIF_TERM nif_unlink(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    char name[MAX_NAME_LEN + 1];
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_name(env, argv[0], name, &err))
        return err;
    if (shm_unlink(name) != 0)
        return errno_error(env, errno);
    return ATOM_OK;
}

/* region_unlink(Region) -> ok | {error, Reason}. Owner only, at most once. */
static ERL_NIF_TERM nif_region_unlink(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_region(env, argv[0], &r, 1, &err))
        return err;
    if (!r->owner)
        return error_tuple(env, ATOM_NOT_OWNER);
    if (__atomic_exchange_n(&r->unlinked, 1, __ATOMIC_SEQ_CST))
        return ATOM_OK;
    if (shm_unlink(r->name) != 0)
        return errno_error(env, errno);
    return ATOM_OK;
}

/* close(Region) -> ok. Marks the handle closed; the mapping stays until GC. */
static ERL_NIF_TERM nif_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_region(env, argv[0], &r, 1, &err))
        return err;
    __atomic_store_n(&r->closed, 1, __ATOMIC_SEQ_CST);
    return ATOM_OK;
}

static ERL_NIF_TERM nif_size(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_region(env, argv[0], &r, 1, &err))
        return err;
    return ok_tuple(env, enif_make_uint64(env, (ErlNifUInt64)r->size));
}

static ERL_NIF_TERM nif_name(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    ERL_NIF_TERM err, bin;
    size_t n;
    unsigned char *p;
    (void)argc;
    if (!get_region(env, argv[0], &r, 1, &err))
        return err;
    n = strlen(r->name);
    p = enif_make_new_binary(env, n, &bin);
    memcpy(p, r->name, n);
    return ok_tuple(env, bin);
}

static ERL_NIF_TERM nif_address(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_region(env, argv[0], &r, 1, &err))
        return err;
    return ok_tuple(env, enif_make_uint64(env, (ErlNifUInt64)(uintptr_t)r->addr));
}

/* binary_address(Binary) -> {ok, Address}: where a binary's bytes live (zero-copy tests). */
static ERL_NIF_TERM nif_binary_address(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary bin;
    (void)argc;
    if (!enif_inspect_binary(env, argv[0], &bin))
        return error_tuple(env, ATOM_BADARG);
    return ok_tuple(env, enif_make_uint64(env, (ErlNifUInt64)(uintptr_t)bin.data));
}

static ERL_NIF_TERM nif_owner(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_region(env, argv[0], &r, 1, &err))
        return err;
    return ok_tuple(env, r->owner ? ATOM_TRUE : ATOM_FALSE);
}

static ERL_NIF_TERM nif_closed(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_region(env, argv[0], &r, 1, &err))
        return err;
    return ok_tuple(env, __atomic_load_n(&r->closed, __ATOMIC_SEQ_CST) ? ATOM_TRUE : ATOM_FALSE);
}

/*
 * kill(OsPid, Signal) -> ok | {error, Reason}: sends SIGTERM (term) or SIGKILL
 * (kill) to one worker process. OsPid must be an integer > 1 that fits in
 * pid_t: 0, -1 and negative values (process groups, "every process") and
 * pid 1 are refused with badarg, as is any other signal name.
 */
static ERL_NIF_TERM nif_kill(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifSInt64 pid;
    char sig_name[8];
    int sig;
    (void)argc;
    if (!enif_get_int64(env, argv[0], &pid) || pid <= 1 || pid > INT_MAX)
        return error_tuple(env, ATOM_BADARG);
    if (enif_get_atom(env, argv[1], sig_name, sizeof sig_name, ERL_NIF_LATIN1) <= 0)
        return error_tuple(env, ATOM_BADARG);
    if (strcmp(sig_name, "term") == 0)
        sig = SIGTERM;
    else if (strcmp(sig_name, "kill") == 0)
        sig = SIGKILL;
    else
        return error_tuple(env, ATOM_BADARG);
    if (kill((pid_t)pid, sig) != 0)
        return errno_error(env, errno);
    return ATOM_OK;
}

/* The reaper only judges objects owned by this uid (SPEC §1.5 step 0). */
static ERL_NIF_TERM nif_euid(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    (void)argv;
    return ok_tuple(env, enif_make_uint(env, (unsigned)geteuid()));
}

/* ------------------------------------------------------------------------ */
/* Copies                                                                   */
/* ------------------------------------------------------------------------ */

static ERL_NIF_TERM read_copy_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint64_t off, len;
    ERL_NIF_TERM err;
    ErlNifBinary bin;
    (void)argc;
    if (!get_range(env, argv, &r, &off, &len, &err))
        return err;
    if (!enif_alloc_binary((size_t)len, &bin))
        return error_tuple(env, ATOM_ENOMEM);
    memcpy(bin.data, r->addr + off, (size_t)len);
    return ok_tuple(env, enif_make_binary(env, &bin));
}

/* read_copy(Region, Off, Len) -> {ok, Binary} | {error, Reason}: a private copy. */
static ERL_NIF_TERM nif_read_copy(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint64_t off, len;
    ERL_NIF_TERM err;
    if (!get_range(env, argv, &r, &off, &len, &err))
        return err;
    if (len > DIRTY_THRESHOLD)
        return enif_schedule_nif(env, "read_copy_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 read_copy_impl, argc, argv);
    return read_copy_impl(env, argc, argv);
}

static int get_write_args(ErlNifEnv *env, const ERL_NIF_TERM argv[], region_t **r,
                          uint64_t *off, ErlNifBinary *bin, ERL_NIF_TERM *err)
{
    if (!get_region(env, argv[0], r, 0, err) || !get_u64(env, argv[1], off, err))
        return 0;
    if (!enif_inspect_binary(env, argv[2], bin)) {
        *err = error_tuple(env, ATOM_BADARG);
        return 0;
    }
    if (!in_bounds(*r, *off, (uint64_t)bin->size)) {
        *err = error_tuple(env, ATOM_OUT_OF_BOUNDS);
        return 0;
    }
    return 1;
}

static ERL_NIF_TERM write_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint64_t off;
    ErlNifBinary bin;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_write_args(env, argv, &r, &off, &bin, &err))
        return err;
    if (bin.size > 0)
        memmove(r->addr + off, bin.data, bin.size);
    return ATOM_OK;
}

/* write(Region, Off, Binary) -> ok | {error, Reason} */
static ERL_NIF_TERM nif_write(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint64_t off;
    ErlNifBinary bin;
    ERL_NIF_TERM err;
    if (!get_write_args(env, argv, &r, &off, &bin, &err))
        return err;
    if (bin.size > DIRTY_THRESHOLD)
        return enif_schedule_nif(env, "write_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND, write_impl,
                                 argc, argv);
    return write_impl(env, argc, argv);
}

/* Copy and hash in chunks small enough to stay in cache, so the hash reads what was
 * just written from cache instead of from memory a second time: for a 64 MiB payload
 * this makes a checksummed write cost about a copy (bench/, see the README). */
#define HASH_CHUNK (64u * 1024u)

static ERL_NIF_TERM write_hashed_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint64_t off;
    ErlNifBinary bin;
    ERL_NIF_TERM err;
    XXH3_state_t *state;
    XXH64_hash_t hash;
    (void)argc;
    if (!get_write_args(env, argv, &r, &off, &bin, &err))
        return err;
    state = XXH3_createState();
    if (state == NULL || XXH3_64bits_reset(state) != XXH_OK) {
        XXH3_freeState(state);
        return error_tuple(env, ATOM_ENOMEM);
    }
    for (size_t done = 0; done < bin.size;) {
        size_t n = bin.size - done < HASH_CHUNK ? bin.size - done : HASH_CHUNK;
        memmove(r->addr + off + done, bin.data + done, n);
        XXH3_64bits_update(state, r->addr + off + done, n);
        done += n;
    }
    hash = XXH3_64bits_digest(state);
    XXH3_freeState(state);
    return ok_tuple(env, enif_make_uint64(env, (ErlNifUInt64)hash));
}

/* write_hashed(Region, Off, Binary) -> {ok, Xxh3} | {error, Reason}: write/3 that also
 * returns xxh3_64 of the bytes written. */
static ERL_NIF_TERM nif_write_hashed(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint64_t off;
    ErlNifBinary bin;
    ERL_NIF_TERM err;
    if (!get_write_args(env, argv, &r, &off, &bin, &err))
        return err;
    if (bin.size > DIRTY_THRESHOLD)
        return enif_schedule_nif(env, "write_hashed_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 write_hashed_impl, argc, argv);
    return write_hashed_impl(env, argc, argv);
}

/* ------------------------------------------------------------------------ */
/* Hashes                                                                   */
/* ------------------------------------------------------------------------ */

static ERL_NIF_TERM xxh3_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary bin;
    (void)argc;
    if (!enif_inspect_binary(env, argv[0], &bin))
        return error_tuple(env, ATOM_BADARG);
    return ok_tuple(env, enif_make_uint64(env, (ErlNifUInt64)XXH3_64bits(bin.data, bin.size)));
}

/* xxh3_64(Binary) -> {ok, Integer} | {error, badarg} */
static ERL_NIF_TERM nif_xxh3_64(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary bin;
    if (!enif_inspect_binary(env, argv[0], &bin))
        return error_tuple(env, ATOM_BADARG);
    if (bin.size > DIRTY_THRESHOLD)
        return enif_schedule_nif(env, "xxh3_64_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND, xxh3_impl,
                                 argc, argv);
    return xxh3_impl(env, argc, argv);
}

static ERL_NIF_TERM xxh3_region_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint64_t off, len;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_range(env, argv, &r, &off, &len, &err))
        return err;
    return ok_tuple(env, enif_make_uint64(
                             env, (ErlNifUInt64)XXH3_64bits(r->addr + off, (size_t)len)));
}

/* xxh3_64_region(Region, Off, Len) -> {ok, Integer} | {error, Reason} */
static ERL_NIF_TERM nif_xxh3_64_region(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint64_t off, len;
    ERL_NIF_TERM err;
    if (!get_range(env, argv, &r, &off, &len, &err))
        return err;
    if (len > DIRTY_THRESHOLD)
        return enif_schedule_nif(env, "xxh3_64_region_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 xxh3_region_impl, argc, argv);
    return xxh3_region_impl(env, argc, argv);
}

/* ------------------------------------------------------------------------ */
/* zstd (Arrow BodyCompression ZSTD)                                        */
/* ------------------------------------------------------------------------ */

/*
 * Checks zstd_decompress's arguments and the frame header, without allocating
 * (invariant 5): Frame must be a binary and ExpectedSize an integer in
 * [0, MAX_DECOMPRESSED]; a frame header that cannot be read is
 * bad_compressed_data; a frame that declares its content size must declare
 * exactly ExpectedSize when it is the only frame (at most ExpectedSize when
 * more frames follow), else size_mismatch.
 */
static int get_zstd_args(ErlNifEnv *env, const ERL_NIF_TERM argv[], ErlNifBinary *in,
                         uint64_t *expected, ERL_NIF_TERM *err)
{
    ErlNifUInt64 v;
    unsigned long long declared;
    size_t first;
    if (!enif_inspect_binary(env, argv[0], in)) {
        *err = error_tuple(env, ATOM_BADARG);
        return 0;
    }
    if (!enif_get_uint64(env, argv[1], &v)) {
        /* Not an integer, or a negative one: badarg. A positive bignum: too_large. */
        int positive = enif_term_type(env, argv[1]) == ERL_NIF_TERM_TYPE_INTEGER &&
                       enif_compare(argv[1], enif_make_int(env, 0)) > 0;
        *err = error_tuple(env, positive ? ATOM_TOO_LARGE : ATOM_BADARG);
        return 0;
    }
    if ((uint64_t)v > MAX_DECOMPRESSED || (uint64_t)v > (uint64_t)SIZE_MAX) {
        *err = error_tuple(env, ATOM_TOO_LARGE);
        return 0;
    }
    *expected = (uint64_t)v;
    declared = ZSTD_getFrameContentSize(in->data, in->size);
    if (declared == ZSTD_CONTENTSIZE_ERROR) {
        *err = error_tuple(env, ATOM_BAD_COMPRESSED_DATA);
        return 0;
    }
    if (declared != ZSTD_CONTENTSIZE_UNKNOWN) {
        first = ZSTD_findFrameCompressedSize(in->data, in->size);
        if (ZSTD_isError(first)) {
            *err = error_tuple(env, ATOM_BAD_COMPRESSED_DATA);
            return 0;
        }
        if (first == in->size ? (uint64_t)declared != *expected : (uint64_t)declared > *expected) {
            *err = error_tuple(env, ATOM_SIZE_MISMATCH);
            return 0;
        }
    }
    return 1;
}

static ERL_NIF_TERM zstd_decompress_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary in, out;
    uint64_t expected;
    ERL_NIF_TERM err;
    ZSTD_DCtx *dctx;
    size_t n;
    (void)argc;
    if (!get_zstd_args(env, argv, &in, &expected, &err))
        return err;
    dctx = ZSTD_createDCtx();
    if (dctx == NULL)
        return error_tuple(env, ATOM_ENOMEM);
    if (!enif_alloc_binary((size_t)expected, &out)) {
        ZSTD_freeDCtx(dctx);
        return error_tuple(env, ATOM_ENOMEM);
    }
    /* The output buffer is exactly ExpectedSize: zstd stops (dstSize_tooSmall)
     * rather than write past it, whatever the frame says. */
    n = ZSTD_decompressDCtx(dctx, out.data, out.size, in.data, in.size);
    ZSTD_freeDCtx(dctx);
    if (ZSTD_isError(n) || (uint64_t)n != expected) {
        DBG("zstd_decompress: %s\n", ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short output");
        enif_release_binary(&out);
        return error_tuple(env, ATOM_BAD_COMPRESSED_DATA);
    }
    return ok_tuple(env, enif_make_binary(env, &out));
}

/*
 * zstd_decompress(Frame, ExpectedSize) -> {ok, Binary} | {error, Reason}
 * Decompresses zstd data (one frame, as Arrow writes it) into a new binary of
 * exactly ExpectedSize bytes. Reasons: badarg (not a binary; not an integer
 * or negative), too_large (above 2^32), size_mismatch (the frame declares
 * another content size; checked before allocating), bad_compressed_data (no
 * frame header, corrupt data, or output of another length), enomem.
 */
static ERL_NIF_TERM nif_zstd_decompress(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary in;
    uint64_t expected;
    ERL_NIF_TERM err;
    if (!get_zstd_args(env, argv, &in, &expected, &err))
        return err;
    if (in.size > DIRTY_THRESHOLD || expected > DIRTY_THRESHOLD)
        return enif_schedule_nif(env, "zstd_decompress_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 zstd_decompress_impl, argc, argv);
    return zstd_decompress_impl(env, argc, argv);
}

/* ------------------------------------------------------------------------ */
/* Atomics on control-block words (sequentially consistent)                 */
/* ------------------------------------------------------------------------ */

static ERL_NIF_TERM nif_load_u32(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint8_t *p;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_word(env, argv, 4, &r, &p, &err))
        return err;
    return ok_tuple(env, enif_make_uint(env, __atomic_load_n((uint32_t *)p, __ATOMIC_SEQ_CST)));
}

static ERL_NIF_TERM nif_load_u64(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint8_t *p;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_word(env, argv, 8, &r, &p, &err))
        return err;
    return ok_tuple(env, enif_make_uint64(env, (ErlNifUInt64)__atomic_load_n((uint64_t *)p,
                                                                            __ATOMIC_SEQ_CST)));
}

static ERL_NIF_TERM nif_store_u32(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint8_t *p;
    uint64_t v;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_word(env, argv, 4, &r, &p, &err) || !get_value(env, argv[2], 4, &v, &err))
        return err;
    __atomic_store_n((uint32_t *)p, (uint32_t)v, __ATOMIC_SEQ_CST);
    return ATOM_OK;
}

static ERL_NIF_TERM nif_store_u64(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint8_t *p;
    uint64_t v;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_word(env, argv, 8, &r, &p, &err) || !get_value(env, argv[2], 8, &v, &err))
        return err;
    __atomic_store_n((uint64_t *)p, v, __ATOMIC_SEQ_CST);
    return ATOM_OK;
}

/* cas_uN(Region, Off, Expected, Desired) -> {ok, Previous}; success iff Previous == Expected */
static ERL_NIF_TERM nif_cas_u32(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint8_t *p;
    uint64_t e, d;
    uint32_t expected;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_word(env, argv, 4, &r, &p, &err) || !get_value(env, argv[2], 4, &e, &err) ||
        !get_value(env, argv[3], 4, &d, &err))
        return err;
    expected = (uint32_t)e;
    __atomic_compare_exchange_n((uint32_t *)p, &expected, (uint32_t)d, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_SEQ_CST);
    return ok_tuple(env, enif_make_uint(env, expected));
}

static ERL_NIF_TERM nif_cas_u64(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint8_t *p;
    uint64_t expected, d;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_word(env, argv, 8, &r, &p, &err) || !get_value(env, argv[2], 8, &expected, &err) ||
        !get_value(env, argv[3], 8, &d, &err))
        return err;
    __atomic_compare_exchange_n((uint64_t *)p, &expected, d, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_SEQ_CST);
    return ok_tuple(env, enif_make_uint64(env, (ErlNifUInt64)expected));
}

/* fetch_add_uN(Region, Off, Delta) -> {ok, Previous}; wraps modulo 2^N */
static ERL_NIF_TERM nif_fetch_add_u32(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint8_t *p;
    uint64_t v;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_word(env, argv, 4, &r, &p, &err) || !get_value(env, argv[2], 4, &v, &err))
        return err;
    return ok_tuple(env, enif_make_uint(env, __atomic_fetch_add((uint32_t *)p, (uint32_t)v,
                                                                __ATOMIC_SEQ_CST)));
}

static ERL_NIF_TERM nif_fetch_add_u64(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint8_t *p;
    uint64_t v;
    ERL_NIF_TERM err;
    (void)argc;
    if (!get_word(env, argv, 8, &r, &p, &err) || !get_value(env, argv[2], 8, &v, &err))
        return err;
    return ok_tuple(env, enif_make_uint64(env, (ErlNifUInt64)__atomic_fetch_add(
                                                   (uint64_t *)p, v, __ATOMIC_SEQ_CST)));
}

/* ------------------------------------------------------------------------ */
/* Leases (SPEC §2.2)                                                       */
/* ------------------------------------------------------------------------ */

static int get_u32_offset(ErlNifEnv *env, const region_t *r, ERL_NIF_TERM t, uint64_t *off,
                          ERL_NIF_TERM *err)
{
    if (!get_u64(env, t, off, err))
        return 0;
    if (!in_bounds(r, *off, 4)) {
        *err = error_tuple(env, ATOM_OUT_OF_BOUNDS);
        return 0;
    }
    if (*off % 4 != 0) {
        *err = error_tuple(env, ATOM_MISALIGNED);
        return 0;
    }
    return 1;
}

/*
 * lease_acquire(Region, CountOff, StateOff, ExpectedState) -> {ok, Lease} | {error, Reason}
 * Adds 1 to the u32 at CountOff, then loads the u32 at StateOff (both seq_cst).
 * When the state is not ExpectedState the count is given back and the result
 * is {error, state_mismatch}.
 */
static ERL_NIF_TERM nif_lease_acquire(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    region_t *r;
    uint64_t count_off, state_off, expected;
    uint32_t *count, state;
    lease_t *l;
    ERL_NIF_TERM err, term;
    (void)argc;
    if (!get_region(env, argv[0], &r, 0, &err) ||
        !get_u32_offset(env, r, argv[1], &count_off, &err) ||
        !get_u32_offset(env, r, argv[2], &state_off, &err) ||
        !get_value(env, argv[3], 4, &expected, &err))
        return err;

    l = enif_alloc_resource(LEASE_RT, sizeof(lease_t));
    if (l == NULL)
        return error_tuple(env, ATOM_ENOMEM);
    l->region = NULL; /* until the count is taken, the destructor does nothing */
    l->count_off = (size_t)count_off;
    l->state = LEASE_RELEASED;

    count = (uint32_t *)(r->addr + count_off);
    __atomic_fetch_add(count, 1u, __ATOMIC_SEQ_CST);
    state = __atomic_load_n((uint32_t *)(r->addr + state_off), __ATOMIC_SEQ_CST);
    if (state != (uint32_t)expected) {
        __atomic_fetch_sub(count, 1u, __ATOMIC_SEQ_CST);
        enif_release_resource(l);
        return error_tuple(env, ATOM_STATE_MISMATCH);
    }
    enif_keep_resource(r);
    l->region = r;
    l->state = LEASE_ACTIVE;
    term = enif_make_resource(env, l);
    enif_release_resource(l);
    return ok_tuple(env, term);
}

/*
 * lease_binary(Lease, Off, Len) -> {ok, Binary} | {error, Reason}
 * A zero-copy binary over [Off, Off + Len) of the leased region. The binary
 * keeps the lease (and so the region's mapping) alive until it is collected.
 */
static ERL_NIF_TERM nif_lease_binary(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    lease_t *l;
    uint64_t off, len;
    int expected = LEASE_ACTIVE;
    ERL_NIF_TERM err;
    (void)argc;
    if (!enif_get_resource(env, argv[0], LEASE_RT, (void **)&l) || l->region == NULL)
        return error_tuple(env, ATOM_BADARG);
    if (!get_u64(env, argv[1], &off, &err) || !get_u64(env, argv[2], &len, &err))
        return err;
    if (!in_bounds(l->region, off, len))
        return error_tuple(env, ATOM_OUT_OF_BOUNDS);
    if (!__atomic_compare_exchange_n(&l->state, &expected, LEASE_HAS_BINARY, 0,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST) &&
        expected != LEASE_HAS_BINARY)
        return error_tuple(env, ATOM_RELEASED);
    return ok_tuple(env, enif_make_resource_binary(env, l, l->region->addr + off, (size_t)len));
}

/*
 * lease_release(Lease) -> ok | {error, in_use | released}
 * Gives the lease back early. Refused once a binary has been made from it:
 * from then on only the destructor may release it (invariant 1).
 */
static ERL_NIF_TERM nif_lease_release(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    lease_t *l;
    int expected = LEASE_ACTIVE;
    (void)argc;
    if (!enif_get_resource(env, argv[0], LEASE_RT, (void **)&l) || l->region == NULL)
        return error_tuple(env, ATOM_BADARG);
    if (__atomic_compare_exchange_n(&l->state, &expected, LEASE_RELEASED, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) {
        __atomic_fetch_sub((uint32_t *)(l->region->addr + l->count_off), 1u, __ATOMIC_SEQ_CST);
        return ATOM_OK;
    }
    return error_tuple(env, expected == LEASE_HAS_BINARY ? ATOM_IN_USE : ATOM_RELEASED);
}

/* ------------------------------------------------------------------------ */
/* Load                                                                     */
/* ------------------------------------------------------------------------ */

static int open_resources(ErlNifEnv *env)
{
    ErlNifResourceFlags flags = ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER;
    REGION_RT = enif_open_resource_type(env, NULL, "beambridge_region", region_dtor, flags, NULL);
    LEASE_RT = enif_open_resource_type(env, NULL, "beambridge_lease", lease_dtor, flags, NULL);
    return REGION_RT != NULL && LEASE_RT != NULL;
}

static int load(ErlNifEnv *env, void **priv, ERL_NIF_TERM info)
{
    (void)priv;
    (void)info;
    ATOM_OK = enif_make_atom(env, "ok");
    ATOM_ERROR = enif_make_atom(env, "error");
    ATOM_BADARG = enif_make_atom(env, "badarg");
    ATOM_OUT_OF_BOUNDS = enif_make_atom(env, "out_of_bounds");
    ATOM_MISALIGNED = enif_make_atom(env, "misaligned");
    ATOM_CLOSED = enif_make_atom(env, "closed");
    ATOM_BAD_NAME = enif_make_atom(env, "bad_name");
    ATOM_REGION_TOO_SMALL = enif_make_atom(env, "region_too_small");
    ATOM_REGION_TOO_LARGE = enif_make_atom(env, "region_too_large");
    ATOM_STATE_MISMATCH = enif_make_atom(env, "state_mismatch");
    ATOM_IN_USE = enif_make_atom(env, "in_use");
    ATOM_RELEASED = enif_make_atom(env, "released");
    ATOM_NOT_OWNER = enif_make_atom(env, "not_owner");
    ATOM_ENOMEM = enif_make_atom(env, "enomem");
    ATOM_TRUE = enif_make_atom(env, "true");
    ATOM_FALSE = enif_make_atom(env, "false");
    ATOM_TOO_LARGE = enif_make_atom(env, "too_large");
    ATOM_SIZE_MISMATCH = enif_make_atom(env, "size_mismatch");
    ATOM_BAD_COMPRESSED_DATA = enif_make_atom(env, "bad_compressed_data");
    return open_resources(env) && arena_load(env) ? 0 : 1;
}

static int upgrade(ErlNifEnv *env, void **priv, void **old_priv, ERL_NIF_TERM info)
{
    (void)old_priv;
    return load(env, priv, info);
}

static ErlNifFunc nif_funcs[] = {
    {"create", 2, nif_create, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"attach", 1, nif_attach, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"unlink", 1, nif_unlink, 0},
    {"region_unlink", 1, nif_region_unlink, 0},
    {"close", 1, nif_close, 0},
    {"closed?", 1, nif_closed, 0},
    {"owner?", 1, nif_owner, 0},
    {"euid", 0, nif_euid, 0},
    {"kill", 2, nif_kill, 0},
    {"size", 1, nif_size, 0},
    {"name", 1, nif_name, 0},
    {"address", 1, nif_address, 0},
    {"binary_address", 1, nif_binary_address, 0},
    {"read_copy", 3, nif_read_copy, 0},
    {"write", 3, nif_write, 0},
    {"write_hashed", 3, nif_write_hashed, 0},
    {"xxh3_64", 1, nif_xxh3_64, 0},
    {"xxh3_64_region", 3, nif_xxh3_64_region, 0},
    {"zstd_decompress", 2, nif_zstd_decompress, 0},
    {"load_u32", 2, nif_load_u32, 0},
    {"load_u64", 2, nif_load_u64, 0},
    {"store_u32", 3, nif_store_u32, 0},
    {"store_u64", 3, nif_store_u64, 0},
    {"cas_u32", 4, nif_cas_u32, 0},
    {"cas_u64", 4, nif_cas_u64, 0},
    {"fetch_add_u32", 3, nif_fetch_add_u32, 0},
    {"fetch_add_u64", 3, nif_fetch_add_u64, 0},
    {"lease_acquire", 4, nif_lease_acquire, 0},
    {"lease_binary", 3, nif_lease_binary, 0},
    {"lease_release", 1, nif_lease_release, 0},
    ARENA_NIF_FUNCS,
};

ERL_NIF_INIT(Elixir.Bridge.NIF, nif_funcs, load, NULL, upgrade, NULL)
