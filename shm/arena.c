/*
 * arena.c — transport v2 shared objects (protocol/SPEC.md).
 *
 * Owned side: an arena set is a bounded group of sealed memfd arenas that any
 * BEAM process allocates slices from (a mutex guards the allocator, whose
 * state lives only here, never in shared memory). A slice is freed when its
 * holds drop to zero:
 *   - the allocating process's hold (slice_release, or the slice resource's
 *     destructor),
 *   - the peer's lease (slice_lend .. slice_return),
 *   - short holds (slice_hold .. slice_unhold),
 *   - every zero-copy binary made with slice_binary (a pin resource each, so
 *     a stale reference to the slice resource in some process heap never keeps
 *     the slice allocated).
 * Arenas are unmapped only when no slice of theirs is allocated, so no binary
 * ever points into an unmapped arena (invariant 1).
 *
 * Peer side: peer_open maps a peer's object read-only from a read-only
 * descriptor after checking its seals and header; a peer lease is a resource
 * whose zero-copy binaries keep the mapping alive and whose destructor ends the
 * lease by storing the slice's generation into this process's lease table.
 */
#define _GNU_SOURCE
#include "nif_common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define OBJ_HEADER 64u
#define OBJ_MAGIC "BBAR"
#define OBJ_LAYOUT 1u
#define MAX_ARENAS 16
#define ALIGN 64u
#define PAGE 4096u
#define MIN_OBJECT PAGE
#define MAX_OBJECT (((uint64_t)1) << 40)
#define FRAME_HEADER 128u
#define MAX_METADATA (1u << 20)
#define MAX_TICKETS (1u << 20)
#define HASH_CHUNK (64u * 1024u)
#define MIB (((uint64_t)1) << 20)

enum { KIND_ARENA = 0, KIND_SEALED = 1, KIND_LEASE_TABLE = 2 };
enum { HELD_BY_CALLER = 1, HELD_BY_PEER = 2 };
enum { LEASE_ACTIVE = 0, LEASE_HAS_BINARY = 1, LEASE_ENDED = 2 };

typedef struct {
    uint64_t off, len;
} extent_t;

typedef struct {
    int fd;           /* -1: slot unused */
    int creating;     /* reserved by arena_grow, not usable yet */
    uint8_t *addr;
    uint64_t size;
    uint32_t id;
    uint64_t nonce;
    extent_t *free;   /* free extents, sorted by offset, coalesced */
    size_t nfree, capfree;
    uint64_t used;    /* bytes in allocated slices */
    uint64_t live;    /* allocated slices */
    int64_t idle_since;
} arena_t;

typedef struct {
    ErlNifMutex *lock;
    arena_t arenas[MAX_ARENAS];
    uint64_t limit;     /* bytes of arenas at most */
    uint64_t min_arena; /* size of the first arena */
    uint64_t total;     /* bytes of arenas (including ones being created) */
    uint64_t peak_total, peak_used, allocs, grows, drops;
    int closed;
} aset_t;

typedef struct {
    aset_t *set;  /* kept */
    int slot;
    uint32_t arena_id;
    uint64_t off, len, gen;
    int holds;    /* atomic */
    int flags;    /* atomic HELD_BY_* */
} slice_t;

typedef struct {
    slice_t *slice; /* kept; holds one hold on it */
} pin_t;

typedef struct {
    int fd;
    uint8_t *addr;
    uint64_t size;
    uint32_t id, entries;
    uint64_t nonce;
} table_t;

typedef struct {
    uint8_t *addr;  /* unmapped once closed and no lease is left, or in the destructor */
    uint64_t size;
    uint32_t id;
    int kind;
    int leases;     /* atomic: live leases on its slices */
    int closed;     /* atomic: peer_close was called */
} peer_t;

typedef struct {
    peer_t *peer;   /* kept */
    table_t *table; /* kept, or NULL */
    uint64_t off, len, gen;
    uint32_t ticket;
    int state;      /* atomic LEASE_* */
} plea_t;

static ErlNifResourceType *ASET_RT, *SLICE_RT, *PIN_RT, *TABLE_RT, *PEER_RT, *PLEASE_RT;
static ERL_NIF_TERM ATOM_NO_ROOM, ATOM_NO_SPACE, ATOM_ARENA_FULL, ATOM_NOT_FOUND, ATOM_NOT_SEALED,
    ATOM_SLICE_OUT_OF_BOUNDS, ATOM_BAD_FRAME, ATOM_NIL, ATOM_ARENAS, ATOM_BYTES, ATOM_USED,
    ATOM_LIVE, ATOM_LIMIT, ATOM_PEAK_BYTES, ATOM_PEAK_USED, ATOM_ALLOCS, ATOM_GROWS,
    ATOM_DROPS;

/* One counter per OS process for object ids and one for slice generations (spec §1.1, §3). */
static uint32_t next_object_id = 0;
static uint64_t next_generation = 0;

static uint32_t new_object_id(void)
{
    return __atomic_add_fetch(&next_object_id, 1u, __ATOMIC_SEQ_CST);
}

static uint64_t random_u64(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
        v = ((uint64_t)getpid() << 32) ^ (uint64_t)enif_monotonic_time(ERL_NIF_NSEC);
    return v;
}

static void put_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ------------------------------------------------------------------------ */
/* Shared objects (spec §1)                                                 */
/* ------------------------------------------------------------------------ */

/*
 * A new sealed memfd of `size` bytes with its header written, mapped read-write.
 * Returns 0 or an errno value.
 */
static int object_create(uint64_t size, int kind, uint32_t entries, uint32_t id, int *fd_out,
                         uint8_t **addr_out, uint64_t *nonce_out)
{
    int fd, rc, saved;
    void *addr;
    uint8_t *h;
    uint64_t nonce = random_u64();

    fd = memfd_create("beambridge", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return errno;
    do {
        rc = posix_fallocate(fd, 0, (off_t)size);
    } while (rc == EINTR);
    if (rc != 0) {
        close(fd);
        return rc == ENOMEM ? ENOSPC : rc;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        saved = errno;
        close(fd);
        return saved;
    }
    addr = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (addr == MAP_FAILED) {
        saved = errno;
        close(fd);
        return saved;
    }
    h = (uint8_t *)addr;
    memcpy(h, OBJ_MAGIC, 4);
    put_u16(h + 4, OBJ_LAYOUT);
    put_u16(h + 6, OBJ_HEADER);
    put_u32(h + 8, (uint32_t)getpid());
    put_u32(h + 12, id);
    put_u64(h + 16, size);
    put_u64(h + 24, nonce);
    put_u32(h + 32, (uint32_t)kind);
    put_u32(h + 36, entries);
    *fd_out = fd;
    *addr_out = h;
    *nonce_out = nonce;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The allocator (private memory only)                                      */
/* ------------------------------------------------------------------------ */

static uint64_t round_up(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

static int64_t now_ms(void) { return (int64_t)enif_monotonic_time(ERL_NIF_MSEC); }

/* First fit; returns 1 and the offset, or 0. Caller holds the lock. */
static int extent_take(arena_t *a, uint64_t len, uint64_t *off)
{
    for (size_t i = 0; i < a->nfree; i++) {
        if (a->free[i].len >= len) {
            *off = a->free[i].off;
            a->free[i].off += len;
            a->free[i].len -= len;
            if (a->free[i].len == 0) {
                memmove(&a->free[i], &a->free[i + 1], (a->nfree - i - 1) * sizeof(extent_t));
                a->nfree--;
            }
            return 1;
        }
    }
    return 0;
}

/* Gives [off, off + len) back, coalescing with its neighbours. Caller holds the lock. */
static void extent_give(arena_t *a, uint64_t off, uint64_t len)
{
    size_t lo = 0, hi = a->nfree, i;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a->free[mid].off < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    i = lo;
    if (i > 0 && a->free[i - 1].off + a->free[i - 1].len == off) {
        a->free[i - 1].len += len;
        if (i < a->nfree && a->free[i - 1].off + a->free[i - 1].len == a->free[i].off) {
            a->free[i - 1].len += a->free[i].len;
            memmove(&a->free[i], &a->free[i + 1], (a->nfree - i - 1) * sizeof(extent_t));
            a->nfree--;
        }
        return;
    }
    if (i < a->nfree && off + len == a->free[i].off) {
        a->free[i].off = off;
        a->free[i].len += len;
        return;
    }
    if (a->nfree == a->capfree) {
        extent_t *grown = enif_realloc(a->free, sizeof(extent_t) * a->capfree * 2);
        if (grown == NULL)
            return; /* out of memory: this range stays unusable until the arena goes */
        a->free = grown;
        a->capfree *= 2;
    }
    memmove(&a->free[i + 1], &a->free[i], (a->nfree - i) * sizeof(extent_t));
    a->free[i].off = off;
    a->free[i].len = len;
    a->nfree++;
}

static void arena_unmap(aset_t *s, arena_t *a)
{
    DBG("drops arena %u (%llu bytes)\n", a->id, (unsigned long long)a->size);
    munmap(a->addr, (size_t)a->size);
    close(a->fd);
    enif_free(a->free);
    s->total -= a->size;
    s->drops++;
    memset(a, 0, sizeof *a);
    a->fd = -1;
}

static void aset_dtor(ErlNifEnv *env, void *obj)
{
    aset_t *s = (aset_t *)obj;
    (void)env;
    for (int i = 0; i < MAX_ARENAS; i++)
        if (s->arenas[i].fd >= 0 && !s->arenas[i].creating)
            arena_unmap(s, &s->arenas[i]);
    if (s->lock != NULL)
        enif_mutex_destroy(s->lock);
}

/* The slice's range goes back to its arena. */
static void slice_free(slice_t *sl)
{
    aset_t *s = sl->set;
    arena_t *a;
    enif_mutex_lock(s->lock);
    a = &s->arenas[sl->slot];
    if (a->fd >= 0 && a->id == sl->arena_id) {
        extent_give(a, sl->off, sl->len);
        a->used -= sl->len;
        a->live--;
        if (a->live == 0) {
            a->idle_since = now_ms();
            if (s->closed)
                arena_unmap(s, a);
        }
    }
    enif_mutex_unlock(s->lock);
}

static void drop_hold(slice_t *sl)
{
    if (__atomic_sub_fetch(&sl->holds, 1, __ATOMIC_SEQ_CST) == 0)
        slice_free(sl);
}

/* One more hold, only while the slice is still allocated (holds > 0). */
static int add_hold(slice_t *sl)
{
    int h = __atomic_load_n(&sl->holds, __ATOMIC_SEQ_CST);
    while (h > 0) {
        if (__atomic_compare_exchange_n(&sl->holds, &h, h + 1, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            return 1;
    }
    return 0;
}

/* Clears one HELD_BY_* flag; drops its hold if it was set. */
static void clear_flag(slice_t *sl, int flag)
{
    if (__atomic_fetch_and(&sl->flags, ~flag, __ATOMIC_SEQ_CST) & flag)
        drop_hold(sl);
}

static void slice_dtor(ErlNifEnv *env, void *obj)
{
    slice_t *sl = (slice_t *)obj;
    (void)env;
    if (sl->set == NULL)
        return;
    clear_flag(sl, HELD_BY_CALLER);
    clear_flag(sl, HELD_BY_PEER);
    enif_release_resource(sl->set);
    sl->set = NULL;
}

static void pin_dtor(ErlNifEnv *env, void *obj)
{
    pin_t *p = (pin_t *)obj;
    (void)env;
    if (p->slice == NULL)
        return;
    drop_hold(p->slice);
    enif_release_resource(p->slice);
    p->slice = NULL;
}

static int get_set(ErlNifEnv *env, ERL_NIF_TERM t, aset_t **s)
{
    return enif_get_resource(env, t, ASET_RT, (void **)s);
}

static int get_slice(ErlNifEnv *env, ERL_NIF_TERM t, slice_t **sl)
{
    return enif_get_resource(env, t, SLICE_RT, (void **)sl) && (*sl)->set != NULL;
}

/* arena_set_new(Limit, MinArena) -> {ok, Set} */
ERL_NIF_TERM nif_arena_set_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    uint64_t limit, min_arena;
    ERL_NIF_TERM err, term;
    aset_t *s;
    (void)argc;
    if (!get_u64(env, argv[0], &limit, &err) || !get_u64(env, argv[1], &min_arena, &err))
        return err;
    if (min_arena < MIN_OBJECT || min_arena > MAX_OBJECT || limit > MAX_OBJECT * MAX_ARENAS)
        return error_tuple(env, ATOM_OUT_OF_BOUNDS);
    s = enif_alloc_resource(ASET_RT, sizeof(aset_t));
    if (s == NULL)
        return error_tuple(env, ATOM_ENOMEM);
    memset(s, 0, sizeof *s);
    for (int i = 0; i < MAX_ARENAS; i++)
        s->arenas[i].fd = -1;
    s->lock = enif_mutex_create("beambridge_arena_set");
    s->limit = limit;
    s->min_arena = round_up(min_arena, PAGE);
    term = enif_make_resource(env, s);
    enif_release_resource(s);
    if (s->lock == NULL)
        return error_tuple(env, ATOM_ENOMEM);
    return ok_tuple(env, term);
}

/* arena_set_close(Set) -> ok: no new slices; arenas go as soon as they are empty. */
ERL_NIF_TERM nif_arena_set_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    aset_t *s;
    (void)argc;
    if (!get_set(env, argv[0], &s))
        return error_tuple(env, ATOM_BADARG);
    enif_mutex_lock(s->lock);
    s->closed = 1;
    for (int i = 0; i < MAX_ARENAS; i++) {
        arena_t *a = &s->arenas[i];
        if (a->fd >= 0 && !a->creating && a->live == 0)
            arena_unmap(s, a);
    }
    enif_mutex_unlock(s->lock);
    return ATOM_OK;
}

static ERL_NIF_TERM stat_pair(ErlNifEnv *env, ERL_NIF_TERM *keys, ERL_NIF_TERM *vals, int *n,
                              ERL_NIF_TERM key, uint64_t v)
{
    keys[*n] = key;
    vals[*n] = enif_make_uint64(env, (ErlNifUInt64)v);
    (*n)++;
    return key;
}

/* arena_set_stats(Set) -> {ok, #{arenas, bytes, used, live, limit, peak_bytes, ...}} */
ERL_NIF_TERM nif_arena_set_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    aset_t *s;
    ERL_NIF_TERM keys[10], vals[10], map;
    uint64_t arenas = 0, used = 0, live = 0;
    int n = 0;
    (void)argc;
    if (!get_set(env, argv[0], &s))
        return error_tuple(env, ATOM_BADARG);
    enif_mutex_lock(s->lock);
    for (int i = 0; i < MAX_ARENAS; i++) {
        arena_t *a = &s->arenas[i];
        if (a->fd >= 0 && !a->creating) {
            arenas++;
            used += a->used;
            live += a->live;
        }
    }
    stat_pair(env, keys, vals, &n, ATOM_ARENAS, arenas);
    stat_pair(env, keys, vals, &n, ATOM_BYTES, s->total);
    stat_pair(env, keys, vals, &n, ATOM_USED, used);
    stat_pair(env, keys, vals, &n, ATOM_LIVE, live);
    stat_pair(env, keys, vals, &n, ATOM_LIMIT, s->limit);
    stat_pair(env, keys, vals, &n, ATOM_PEAK_BYTES, s->peak_total);
    stat_pair(env, keys, vals, &n, ATOM_PEAK_USED, s->peak_used);
    stat_pair(env, keys, vals, &n, ATOM_ALLOCS, s->allocs);
    stat_pair(env, keys, vals, &n, ATOM_GROWS, s->grows);
    stat_pair(env, keys, vals, &n, ATOM_DROPS, s->drops);
    enif_mutex_unlock(s->lock);
    if (!enif_make_map_from_arrays(env, keys, vals, (size_t)n, &map))
        return error_tuple(env, ATOM_ENOMEM);
    return ok_tuple(env, map);
}

/*
 * arena_set_trim(Set, IdleMs, KeepBytes) -> {ok, [ArenaId]}
 * Drops arenas that have had no slice for at least IdleMs, largest first, until
 * the empty arenas left hold at most KeepBytes. Returns the ids dropped (the
 * peer is told, so it unmaps them too).
 */
ERL_NIF_TERM nif_arena_set_trim(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    aset_t *s;
    uint64_t idle_ms, keep, empty = 0;
    ERL_NIF_TERM err, list = enif_make_list(env, 0);
    int64_t now = now_ms();
    (void)argc;
    if (!get_set(env, argv[0], &s))
        return error_tuple(env, ATOM_BADARG);
    if (!get_u64(env, argv[1], &idle_ms, &err) || !get_u64(env, argv[2], &keep, &err))
        return err;
    enif_mutex_lock(s->lock);
    for (int i = 0; i < MAX_ARENAS; i++) {
        arena_t *a = &s->arenas[i];
        if (a->fd >= 0 && !a->creating && a->live == 0)
            empty += a->size;
    }
    while (empty > keep) {
        arena_t *victim = NULL;
        for (int i = 0; i < MAX_ARENAS; i++) {
            arena_t *a = &s->arenas[i];
            if (a->fd >= 0 && !a->creating && a->live == 0 &&
                now - a->idle_since >= (int64_t)idle_ms && (victim == NULL || a->size > victim->size))
                victim = a;
        }
        if (victim == NULL)
            break;
        empty -= victim->size;
        list = enif_make_list_cell(env, enif_make_uint(env, victim->id), list);
        arena_unmap(s, victim);
    }
    enif_mutex_unlock(s->lock);
    return ok_tuple(env, list);
}

static uint64_t slice_length_for(uint64_t frame_len)
{
    return round_up(frame_len < FRAME_HEADER ? FRAME_HEADER : frame_len, ALIGN);
}

/*
 * arena_grow(Set, FrameLen, MaxSize) -> {ok, ArenaId} |
 *     {error, too_large | arena_full | no_space | closed | eNNN}
 * Creates an arena that can hold a slice for a frame of FrameLen bytes, within
 * the limit and at most MaxSize bytes (the memory the caller found free: past it
 * the cgroup's OOM killer, not ENOSPC, would answer); dirty IO: the pages are
 * reserved here. When the limit or the arena count is in the way,
 * empty arenas are dropped, largest first, to make room.
 */
ERL_NIF_TERM nif_arena_grow(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    aset_t *s;
    uint64_t frame_len, max_size, need, size, largest = 0;
    ERL_NIF_TERM err;
    arena_t *a;
    int fd, rc;
    uint8_t *addr;
    uint64_t nonce;
    uint32_t id;
    (void)argc;
    if (!get_set(env, argv[0], &s))
        return error_tuple(env, ATOM_BADARG);
    if (!get_u64(env, argv[1], &frame_len, &err) || !get_u64(env, argv[2], &max_size, &err))
        return err;
    if (frame_len > MAX_OBJECT)
        return error_tuple(env, ATOM_TOO_LARGE);
    need = round_up(OBJ_HEADER + slice_length_for(frame_len), PAGE);
    if (need <= s->limit && need > max_size)
        return error_tuple(env, ATOM_NO_SPACE);
    enif_mutex_lock(s->lock);
    if (s->closed || need > s->limit) {
        enif_mutex_unlock(s->lock);
        return error_tuple(env, s->closed ? ATOM_CLOSED : ATOM_TOO_LARGE);
    }
    for (int i = 0; i < MAX_ARENAS; i++)
        if (s->arenas[i].fd >= 0 && s->arenas[i].size > largest)
            largest = s->arenas[i].size;
    /* A value as big as the arenas gets one of about its own size; small values grow
     * the set geometrically, so MAX_ARENAS arenas reach any limit. */
    if (2 * need > largest)
        size = round_up(need, MIB);
    else
        size = 2 * largest;
    if (size < s->min_arena)
        size = s->min_arena;
    if (size > max_size)
        size = max_size / PAGE * PAGE;
    for (;;) {
        arena_t *empty = NULL;
        uint64_t room = (s->limit - s->total) / PAGE * PAGE;
        a = NULL;
        for (int i = 0; i < MAX_ARENAS; i++) {
            arena_t *x = &s->arenas[i];
            if (x->fd < 0) {
                if (a == NULL)
                    a = x;
            } else if (!x->creating && x->live == 0 && (empty == NULL || x->size > empty->size)) {
                empty = x;
            }
        }
        if (size > room)
            size = room;
        if (a != NULL && size >= need)
            break;
        if (empty == NULL) {
            enif_mutex_unlock(s->lock);
            return error_tuple(env, ATOM_ARENA_FULL);
        }
        arena_unmap(s, empty);
        if (size < need)
            size = need;
    }
    a->fd = INT32_MAX; /* reserved until the object exists */
    a->creating = 1;
    s->total += size;
    enif_mutex_unlock(s->lock);

    id = new_object_id();
    rc = object_create(size, KIND_ARENA, 0, id, &fd, &addr, &nonce);

    enif_mutex_lock(s->lock);
    a->creating = 0;
    if (rc == 0) {
        a->capfree = 64;
        a->free = enif_alloc(sizeof(extent_t) * a->capfree);
        if (a->free == NULL) {
            munmap(addr, (size_t)size);
            close(fd);
            rc = ENOMEM;
        }
    }
    if (rc != 0) {
        a->fd = -1;
        s->total -= size;
        enif_mutex_unlock(s->lock);
        return errno_error(env, rc);
    }
    a->fd = fd;
    a->addr = addr;
    a->size = size;
    a->id = id;
    a->nonce = nonce;
    a->free[0].off = OBJ_HEADER;
    a->free[0].len = size - OBJ_HEADER;
    a->nfree = 1;
    a->idle_since = now_ms();
    s->grows++;
    if (s->total > s->peak_total)
        s->peak_total = s->total;
    if (s->closed)
        arena_unmap(s, a);
    enif_mutex_unlock(s->lock);
    return ok_tuple(env, enif_make_uint(env, id));
}

/* arena_info(Set, ArenaId) -> {ok, {Fd, Size, Nonce}} | {error, not_found} */
ERL_NIF_TERM nif_arena_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    aset_t *s;
    unsigned id;
    ERL_NIF_TERM result = error_tuple(env, ATOM_NOT_FOUND);
    (void)argc;
    if (!get_set(env, argv[0], &s) || !enif_get_uint(env, argv[1], &id))
        return error_tuple(env, ATOM_BADARG);
    enif_mutex_lock(s->lock);
    for (int i = 0; i < MAX_ARENAS; i++) {
        arena_t *a = &s->arenas[i];
        if (a->fd >= 0 && !a->creating && a->id == id)
            result = ok_tuple(env, enif_make_tuple3(env, enif_make_int(env, a->fd),
                                                    enif_make_uint64(env, a->size),
                                                    enif_make_uint64(env, a->nonce)));
    }
    enif_mutex_unlock(s->lock);
    return result;
}

/*
 * slice_alloc(Set, FrameLen) -> {ok, Slice} | {error, no_room | too_large | closed}
 * A slice for a frame of FrameLen bytes, held by the caller. no_room: call
 * arena_grow (dirty) and try again.
 */
ERL_NIF_TERM nif_slice_alloc(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    aset_t *s;
    uint64_t frame_len, len, off = 0, used = 0;
    ERL_NIF_TERM err, term;
    slice_t *sl;
    int slot = -1;
    (void)argc;
    if (!get_set(env, argv[0], &s))
        return error_tuple(env, ATOM_BADARG);
    if (!get_u64(env, argv[1], &frame_len, &err))
        return err;
    if (frame_len > MAX_OBJECT)
        return error_tuple(env, ATOM_TOO_LARGE);
    len = slice_length_for(frame_len);
    sl = enif_alloc_resource(SLICE_RT, sizeof(slice_t));
    if (sl == NULL)
        return error_tuple(env, ATOM_ENOMEM);
    memset(sl, 0, sizeof *sl);
    enif_mutex_lock(s->lock);
    if (s->closed) {
        enif_mutex_unlock(s->lock);
        enif_release_resource(sl);
        return error_tuple(env, ATOM_CLOSED);
    }
    if (round_up(OBJ_HEADER + len, PAGE) > s->limit) {
        enif_mutex_unlock(s->lock);
        enif_release_resource(sl);
        return error_tuple(env, ATOM_TOO_LARGE);
    }
    /* Smallest arena first: big arenas stay free for big values. */
    {
        int order[MAX_ARENAS], n = 0;
        for (int i = 0; i < MAX_ARENAS; i++) {
            arena_t *a = &s->arenas[i];
            if (a->fd >= 0 && !a->creating && a->size - OBJ_HEADER - a->used >= len) {
                int j = n++;
                while (j > 0 && s->arenas[order[j - 1]].size > a->size) {
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = i;
            }
        }
        for (int k = 0; k < n && slot < 0; k++)
            if (extent_take(&s->arenas[order[k]], len, &off))
                slot = order[k];
    }
    if (slot < 0) {
        enif_mutex_unlock(s->lock);
        enif_release_resource(sl);
        return error_tuple(env, ATOM_NO_ROOM);
    }
    {
        arena_t *a = &s->arenas[slot];
        a->used += len;
        a->live++;
        s->allocs++;
        for (int i = 0; i < MAX_ARENAS; i++)
            if (s->arenas[i].fd >= 0 && !s->arenas[i].creating)
                used += s->arenas[i].used;
        if (used > s->peak_used)
            s->peak_used = used;
        sl->arena_id = a->id;
    }
    enif_mutex_unlock(s->lock);
    enif_keep_resource(s);
    sl->set = s;
    sl->slot = slot;
    sl->off = off;
    sl->len = len;
    sl->gen = __atomic_add_fetch(&next_generation, 1u, __ATOMIC_SEQ_CST);
    sl->holds = 1;
    sl->flags = HELD_BY_CALLER;
    term = enif_make_resource(env, sl);
    enif_release_resource(sl);
    return ok_tuple(env, term);
}

/* slice_info(Slice) -> {ok, {ArenaId, Offset, Length, Generation}} */
ERL_NIF_TERM nif_slice_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    slice_t *sl;
    (void)argc;
    if (!get_slice(env, argv[0], &sl))
        return error_tuple(env, ATOM_BADARG);
    return ok_tuple(env, enif_make_tuple4(env, enif_make_uint(env, sl->arena_id),
                                          enif_make_uint64(env, sl->off),
                                          enif_make_uint64(env, sl->len),
                                          enif_make_uint64(env, sl->gen)));
}

/* The slice's bytes while the caller has a hold on it; NULL once it is released. */
static uint8_t *slice_addr(slice_t *sl)
{
    if (__atomic_load_n(&sl->holds, __ATOMIC_SEQ_CST) <= 0)
        return NULL;
    return sl->set->arenas[sl->slot].addr + sl->off;
}

static int get_parts(ErlNifEnv *env, ERL_NIF_TERM list, uint64_t *total, unsigned *count)
{
    ERL_NIF_TERM head, tail = list;
    ErlNifBinary bin;
    *total = 0;
    *count = 0;
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        if (!enif_inspect_binary(env, head, &bin))
            return 0;
        *total += bin.size;
        (*count)++;
    }
    return enif_is_empty_list(env, tail);
}

static ERL_NIF_TERM write_frame_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    slice_t *sl;
    ErlNifBinary header, meta, bin;
    uint64_t total, payload_off, written = 0;
    unsigned count;
    uint8_t *base, h[FRAME_HEADER];
    ERL_NIF_TERM head, tail;
    XXH3_state_t *state = NULL;
    uint64_t checksum = 0;
    int hash = enif_is_identical(argv[4], ATOM_TRUE);
    (void)argc;
    if (!get_slice(env, argv[0], &sl) || !enif_inspect_binary(env, argv[1], &header) ||
        !enif_inspect_binary(env, argv[2], &meta) || !get_parts(env, argv[3], &total, &count))
        return error_tuple(env, ATOM_BADARG);
    if (header.size != FRAME_HEADER || meta.size > MAX_METADATA)
        return error_tuple(env, ATOM_BAD_FRAME);
    memcpy(h, header.data, FRAME_HEADER);
    payload_off = get64(h + 40);
    if (get32(h + 36) != meta.size || get64(h + 48) != total || payload_off % ALIGN != 0 ||
        payload_off < FRAME_HEADER + meta.size || payload_off > sl->len ||
        total > sl->len - payload_off)
        return error_tuple(env, ATOM_BAD_FRAME);
    if ((__atomic_load_n(&sl->flags, __ATOMIC_SEQ_CST) & HELD_BY_CALLER) == 0 ||
        (base = slice_addr(sl)) == NULL)
        return error_tuple(env, ATOM_RELEASED);
    if (hash) {
        state = XXH3_createState();
        if (state == NULL || XXH3_64bits_reset(state) != XXH_OK) {
            XXH3_freeState(state);
            return error_tuple(env, ATOM_ENOMEM);
        }
    }
    tail = argv[3];
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        enif_inspect_binary(env, head, &bin);
        for (size_t done = 0; done < bin.size;) {
            size_t n = bin.size - done < HASH_CHUNK ? bin.size - done : HASH_CHUNK;
            memcpy(base + payload_off + written + done, bin.data + done, n);
            if (hash)
                XXH3_64bits_update(state, base + payload_off + written + done, n);
            done += n;
        }
        written += bin.size;
    }
    if (hash) {
        checksum = XXH3_64bits_digest(state);
        XXH3_freeState(state);
        put_u64(h + 64, checksum);
    }
    {
        /* header_checksum = xxh3_64(header[0:120] ++ metadata), SPEC §5.1 */
        XXH3_state_t *hs = XXH3_createState();
        if (hs == NULL || XXH3_64bits_reset(hs) != XXH_OK) {
            XXH3_freeState(hs);
            return error_tuple(env, ATOM_ENOMEM);
        }
        XXH3_64bits_update(hs, h, 120);
        XXH3_64bits_update(hs, meta.data, meta.size);
        put_u64(h + 120, XXH3_64bits_digest(hs));
        XXH3_freeState(hs);
    }
    memcpy(base + FRAME_HEADER, meta.data, meta.size);
    memset(base + FRAME_HEADER + meta.size, 0, payload_off - FRAME_HEADER - meta.size);
    memcpy(base, h, FRAME_HEADER);
    return ok_tuple(env, enif_make_tuple2(env, enif_make_uint64(env, checksum),
                                          enif_make_uint64(env, get64(h + 120))));
}

/*
 * slice_write_frame(Slice, Header, Metadata, PayloadParts, Checksum) ->
 *     {ok, {PayloadChecksum, HeaderChecksum}} | {error, bad_frame | released | badarg}
 * Header is the 128-byte frame header with payload_checksum and header_checksum
 * still to fill; PayloadParts a list of binaries written one after another at
 * payload_offset. With Checksum true the payload's xxh3_64 is computed while it
 * is copied. Only the allocating process writes, before the slice is lent.
 */
ERL_NIF_TERM nif_slice_write_frame(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    uint64_t total;
    unsigned count;
    if (get_parts(env, argv[3], &total, &count) && total > DIRTY_THRESHOLD)
        return enif_schedule_nif(env, "slice_write_frame_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 write_frame_impl, argc, argv);
    return write_frame_impl(env, argc, argv);
}

/*
 * slice_write(Slice, Off, Binary) -> ok | {error, Reason}: raw bytes into the slice,
 * by the allocating process before it lends the slice (tests write frames of
 * their own making, hostile ones included, this way).
 */
ERL_NIF_TERM nif_slice_write(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    slice_t *sl;
    uint64_t off;
    ErlNifBinary bin;
    ERL_NIF_TERM err;
    uint8_t *base;
    (void)argc;
    if (!get_slice(env, argv[0], &sl) || !enif_inspect_binary(env, argv[2], &bin))
        return error_tuple(env, ATOM_BADARG);
    if (!get_u64(env, argv[1], &off, &err))
        return err;
    if (off > sl->len || bin.size > sl->len - off)
        return error_tuple(env, ATOM_OUT_OF_BOUNDS);
    if ((__atomic_load_n(&sl->flags, __ATOMIC_SEQ_CST) & HELD_BY_CALLER) == 0 ||
        (base = slice_addr(sl)) == NULL)
        return error_tuple(env, ATOM_RELEASED);
    memcpy(base + off, bin.data, bin.size);
    return ATOM_OK;
}

/* slice_read(Slice, Off, Len) -> {ok, Binary}: a private copy, offsets within the slice. */
ERL_NIF_TERM nif_slice_read(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    slice_t *sl;
    uint64_t off, len;
    ERL_NIF_TERM err;
    ErlNifBinary bin;
    uint8_t *base;
    (void)argc;
    if (!get_slice(env, argv[0], &sl))
        return error_tuple(env, ATOM_BADARG);
    if (!get_u64(env, argv[1], &off, &err) || !get_u64(env, argv[2], &len, &err))
        return err;
    if (off > sl->len || len > sl->len - off)
        return error_tuple(env, ATOM_OUT_OF_BOUNDS);
    if (!add_hold(sl))
        return error_tuple(env, ATOM_RELEASED);
    base = sl->set->arenas[sl->slot].addr + sl->off;
    if (!enif_alloc_binary((size_t)len, &bin)) {
        drop_hold(sl);
        return error_tuple(env, ATOM_ENOMEM);
    }
    memcpy(bin.data, base + off, (size_t)len);
    drop_hold(sl);
    return ok_tuple(env, enif_make_binary(env, &bin));
}

/* slice_release(Slice) -> ok: the allocating process lets go (idempotent). */
ERL_NIF_TERM nif_slice_release(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    slice_t *sl;
    (void)argc;
    if (!get_slice(env, argv[0], &sl))
        return error_tuple(env, ATOM_BADARG);
    clear_flag(sl, HELD_BY_CALLER);
    return ATOM_OK;
}

/* slice_lend(Slice) -> ok | {error, released | in_use}: the slice's handle goes to the peer. */
ERL_NIF_TERM nif_slice_lend(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    slice_t *sl;
    int f;
    (void)argc;
    if (!get_slice(env, argv[0], &sl))
        return error_tuple(env, ATOM_BADARG);
    f = __atomic_load_n(&sl->flags, __ATOMIC_SEQ_CST);
    for (;;) {
        if ((f & HELD_BY_CALLER) == 0)
            return error_tuple(env, ATOM_RELEASED);
        if (f & HELD_BY_PEER)
            return error_tuple(env, ATOM_IN_USE);
        if (!add_hold(sl))
            return error_tuple(env, ATOM_RELEASED);
        if (__atomic_compare_exchange_n(&sl->flags, &f, f | HELD_BY_PEER, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            return ATOM_OK;
        drop_hold(sl);
    }
}

/* slice_return(Slice) -> ok: the peer's lease ended (idempotent). */
ERL_NIF_TERM nif_slice_return(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    slice_t *sl;
    (void)argc;
    if (!get_slice(env, argv[0], &sl))
        return error_tuple(env, ATOM_BADARG);
    clear_flag(sl, HELD_BY_PEER);
    return ATOM_OK;
}

/* slice_hold(Slice) -> ok | {error, released}; slice_unhold(Slice) -> ok. */
ERL_NIF_TERM nif_slice_hold(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    slice_t *sl;
    (void)argc;
    if (!get_slice(env, argv[0], &sl))
        return error_tuple(env, ATOM_BADARG);
    return add_hold(sl) ? ATOM_OK : error_tuple(env, ATOM_RELEASED);
}

ERL_NIF_TERM nif_slice_unhold(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    slice_t *sl;
    (void)argc;
    if (!get_slice(env, argv[0], &sl))
        return error_tuple(env, ATOM_BADARG);
    if (__atomic_load_n(&sl->holds, __ATOMIC_SEQ_CST) <= 0)
        return error_tuple(env, ATOM_RELEASED);
    drop_hold(sl);
    return ATOM_OK;
}

/*
 * slice_binary(Slice, Off, Len) -> {ok, Binary} | {error, released | out_of_bounds}
 * A zero-copy binary over [Off, Off + Len) of the slice. It holds the slice
 * until it is garbage-collected.
 */
ERL_NIF_TERM nif_slice_binary(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    slice_t *sl;
    uint64_t off, len;
    ERL_NIF_TERM err, bin;
    pin_t *p;
    (void)argc;
    if (!get_slice(env, argv[0], &sl))
        return error_tuple(env, ATOM_BADARG);
    if (!get_u64(env, argv[1], &off, &err) || !get_u64(env, argv[2], &len, &err))
        return err;
    if (off > sl->len || len > sl->len - off)
        return error_tuple(env, ATOM_OUT_OF_BOUNDS);
    p = enif_alloc_resource(PIN_RT, sizeof(pin_t));
    if (p == NULL)
        return error_tuple(env, ATOM_ENOMEM);
    p->slice = NULL;
    if (!add_hold(sl)) {
        enif_release_resource(p);
        return error_tuple(env, ATOM_RELEASED);
    }
    enif_keep_resource(sl);
    p->slice = sl;
    bin = enif_make_resource_binary(env, p, sl->set->arenas[sl->slot].addr + sl->off + off,
                                    (size_t)len);
    enif_release_resource(p);
    return ok_tuple(env, bin);
}

/* ------------------------------------------------------------------------ */
/* Lease tables (spec §4)                                                   */
/* ------------------------------------------------------------------------ */

static void table_dtor(ErlNifEnv *env, void *obj)
{
    table_t *t = (table_t *)obj;
    (void)env;
    if (t->addr != NULL)
        munmap(t->addr, (size_t)t->size);
    if (t->fd >= 0)
        close(t->fd);
}

/* lease_table_new(Entries) -> {ok, Table} */
ERL_NIF_TERM nif_lease_table_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    unsigned entries;
    table_t *t;
    int rc;
    ERL_NIF_TERM term;
    (void)argc;
    if (!enif_get_uint(env, argv[0], &entries) || entries == 0 || entries > MAX_TICKETS)
        return error_tuple(env, ATOM_BADARG);
    t = enif_alloc_resource(TABLE_RT, sizeof(table_t));
    if (t == NULL)
        return error_tuple(env, ATOM_ENOMEM);
    memset(t, 0, sizeof *t);
    t->fd = -1;
    t->entries = entries;
    t->size = round_up(OBJ_HEADER + (uint64_t)entries * 8, PAGE);
    t->id = new_object_id();
    rc = object_create(t->size, KIND_LEASE_TABLE, entries, t->id, &t->fd, &t->addr, &t->nonce);
    if (rc != 0) {
        t->addr = NULL;
        t->fd = -1;
        enif_release_resource(t);
        return errno_error(env, rc);
    }
    term = enif_make_resource(env, t);
    enif_release_resource(t);
    return ok_tuple(env, term);
}

/* lease_table_info(Table) -> {ok, {Id, Fd, Size, Entries, Nonce}} */
ERL_NIF_TERM nif_lease_table_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    table_t *t;
    ERL_NIF_TERM items[5];
    (void)argc;
    if (!enif_get_resource(env, argv[0], TABLE_RT, (void **)&t))
        return error_tuple(env, ATOM_BADARG);
    items[0] = enif_make_uint(env, t->id);
    items[1] = enif_make_int(env, t->fd);
    items[2] = enif_make_uint64(env, t->size);
    items[3] = enif_make_uint(env, t->entries);
    items[4] = enif_make_uint64(env, t->nonce);
    return ok_tuple(env, enif_make_tuple_from_array(env, items, 5));
}

/* lease_table_word(Table, Ticket) -> {ok, Generation}: what a worker would read. */
ERL_NIF_TERM nif_lease_table_word(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    table_t *t;
    unsigned ticket;
    uint64_t v;
    (void)argc;
    if (!enif_get_resource(env, argv[0], TABLE_RT, (void **)&t) ||
        !enif_get_uint(env, argv[1], &ticket))
        return error_tuple(env, ATOM_BADARG);
    if (ticket >= t->entries)
        return error_tuple(env, ATOM_OUT_OF_BOUNDS);
    v = __atomic_load_n((uint64_t *)(t->addr + OBJ_HEADER + (uint64_t)ticket * 8),
                        __ATOMIC_SEQ_CST);
    return ok_tuple(env, enif_make_uint64(env, v));
}

/* ------------------------------------------------------------------------ */
/* Peer objects (spec §2) and leases on their slices                        */
/* ------------------------------------------------------------------------ */

static void peer_unmap(peer_t *p)
{
    uint8_t *addr = __atomic_exchange_n(&p->addr, NULL, __ATOMIC_SEQ_CST);
    if (addr != NULL)
        munmap(addr, (size_t)p->size);
}

static void peer_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    peer_unmap((peer_t *)obj);
}

/* One lease fewer; a closed peer with none left is unmapped now, not at the next GC. */
static void peer_drop_lease(peer_t *p)
{
    if (__atomic_sub_fetch(&p->leases, 1, __ATOMIC_SEQ_CST) == 0 &&
        __atomic_load_n(&p->closed, __ATOMIC_SEQ_CST))
        peer_unmap(p);
}

static ERL_NIF_TERM bad_object(ErlNifEnv *env, const char *field)
{
    return error_tuple(env, enif_make_tuple2(env, enif_make_atom(env, "bad_object"),
                                             enif_make_atom(env, field)));
}

/*
 * peer_open(OwnerPid, Fd, Kind, Id, Size, Nonce) -> {ok, Peer} | {error, Reason}
 * Opens /proc/OwnerPid/fd/Fd read-only and maps it PROT_READ after the checks
 * of spec §2. Reasons: {peer_open_failed, eNNN}, size_mismatch, not_sealed,
 * {bad_object, Field}, eNNN (fstat, pread, mmap).
 */
ERL_NIF_TERM nif_peer_open(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    unsigned pid, fdn, kind, id;
    uint64_t size, nonce;
    ERL_NIF_TERM err, term;
    char path[64];
    struct stat st;
    int fd, seals, want, saved;
    uint8_t h[OBJ_HEADER];
    void *addr;
    peer_t *p;
    (void)argc;
    if (!enif_get_uint(env, argv[0], &pid) || !enif_get_uint(env, argv[1], &fdn) ||
        !enif_get_uint(env, argv[2], &kind) || !enif_get_uint(env, argv[3], &id))
        return error_tuple(env, ATOM_BADARG);
    if (!get_u64(env, argv[4], &size, &err) || !get_u64(env, argv[5], &nonce, &err))
        return err;
    if (pid < 2 || kind > KIND_LEASE_TABLE || size < MIN_OBJECT || size > MAX_OBJECT ||
        size % PAGE != 0)
        return error_tuple(env, ATOM_BADARG);
    snprintf(path, sizeof path, "/proc/%u/fd/%u", pid, fdn);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return error_tuple(env, enif_make_tuple2(env, enif_make_atom(env, "peer_open_failed"),
                                                 enif_make_int(env, errno)));
    if (fstat(fd, &st) != 0) {
        saved = errno;
        close(fd);
        return errno_error(env, saved);
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != size) {
        close(fd);
        return error_tuple(env, ATOM_SIZE_MISMATCH);
    }
    seals = fcntl(fd, F_GET_SEALS);
    want = F_SEAL_SHRINK | F_SEAL_GROW | (kind == KIND_SEALED ? F_SEAL_WRITE : 0);
    if (seals < 0 || (seals & want) != want) {
        close(fd);
        return error_tuple(env, ATOM_NOT_SEALED);
    }
    if (pread(fd, h, OBJ_HEADER, 0) != (ssize_t)OBJ_HEADER) {
        close(fd);
        return bad_object(env, "header");
    }
    if (memcmp(h, OBJ_MAGIC, 4) != 0) {
        close(fd);
        return bad_object(env, "magic");
    }
    if (get16(h + 4) != OBJ_LAYOUT || get16(h + 6) != OBJ_HEADER) {
        close(fd);
        return bad_object(env, get16(h + 4) != OBJ_LAYOUT ? "layout_version" : "header_size");
    }
    if (get32(h + 8) != pid || get32(h + 12) != id || get64(h + 16) != size ||
        get64(h + 24) != nonce || get32(h + 32) != kind) {
        const char *field = get32(h + 8) != pid    ? "owner_pid"
                            : get32(h + 12) != id  ? "object_id"
                            : get64(h + 16) != size ? "object_size"
                            : get64(h + 24) != nonce ? "nonce"
                                                     : "kind";
        close(fd);
        return bad_object(env, field);
    }
    addr = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
    saved = errno;
    close(fd);
    if (addr == MAP_FAILED)
        return errno_error(env, saved);
    p = enif_alloc_resource(PEER_RT, sizeof(peer_t));
    if (p == NULL) {
        munmap(addr, (size_t)size);
        return error_tuple(env, ATOM_ENOMEM);
    }
    p->addr = (uint8_t *)addr;
    p->size = size;
    p->id = id;
    p->kind = (int)kind;
    p->leases = 0;
    p->closed = 0;
    term = enif_make_resource(env, p);
    enif_release_resource(p);
    return ok_tuple(env, term);
}

/*
 * peer_close(Peer) -> ok: the owner dropped the object (or died). The mapping goes
 * as soon as no lease on it is left: now, or when the last lease ends. A stale
 * reference to Peer in some process heap no longer keeps the memory.
 */
ERL_NIF_TERM nif_peer_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    peer_t *p;
    (void)argc;
    if (!enif_get_resource(env, argv[0], PEER_RT, (void **)&p))
        return error_tuple(env, ATOM_BADARG);
    /* One pseudo-lease while closing, so a lease ending meanwhile cannot race us. */
    __atomic_add_fetch(&p->leases, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&p->closed, 1, __ATOMIC_SEQ_CST);
    peer_drop_lease(p);
    return ATOM_OK;
}

/* peer_info(Peer) -> {ok, {Id, Kind, Size}} */
ERL_NIF_TERM nif_peer_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    peer_t *p;
    (void)argc;
    if (!enif_get_resource(env, argv[0], PEER_RT, (void **)&p))
        return error_tuple(env, ATOM_BADARG);
    return ok_tuple(env, enif_make_tuple3(env, enif_make_uint(env, p->id),
                                          enif_make_int(env, p->kind),
                                          enif_make_uint64(env, p->size)));
}

static void plea_end(plea_t *l)
{
    if (l->table != NULL) {
        uint64_t *word = (uint64_t *)(l->table->addr + OBJ_HEADER + (uint64_t)l->ticket * 8);
        __atomic_store_n(word, l->gen, __ATOMIC_SEQ_CST);
    }
}

static void plea_dtor(ErlNifEnv *env, void *obj)
{
    plea_t *l = (plea_t *)obj;
    (void)env;
    if (l->peer == NULL)
        return;
    if (__atomic_exchange_n(&l->state, LEASE_ENDED, __ATOMIC_SEQ_CST) != LEASE_ENDED)
        plea_end(l);
    if (l->table != NULL)
        enif_release_resource(l->table);
    peer_drop_lease(l->peer);
    enif_release_resource(l->peer);
    l->peer = NULL;
}

/*
 * peer_lease(Peer, Offset, Length, Table, {Ticket, Generation} | nil) ->
 *     {ok, Lease} | {error, slice_out_of_bounds | out_of_bounds}
 * A lease on the peer's slice [Offset, Offset + Length). Table is this side's
 * lease table (or nil for a sealed object, whose lease ends with its mapping):
 * when the lease ends, Generation is stored into word Ticket.
 */
ERL_NIF_TERM nif_peer_lease(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    peer_t *p;
    table_t *t = NULL;
    uint64_t off, len, gen = 0;
    unsigned ticket = 0;
    ERL_NIF_TERM err, term;
    const ERL_NIF_TERM *tg;
    int arity;
    plea_t *l;
    (void)argc;
    if (!enif_get_resource(env, argv[0], PEER_RT, (void **)&p))
        return error_tuple(env, ATOM_BADARG);
    if (!get_u64(env, argv[1], &off, &err) || !get_u64(env, argv[2], &len, &err))
        return err;
    if (!enif_is_identical(argv[3], ATOM_NIL)) {
        if (!enif_get_resource(env, argv[3], TABLE_RT, (void **)&t) ||
            !enif_get_tuple(env, argv[4], &arity, &tg) || arity != 2 ||
            !enif_get_uint(env, tg[0], &ticket) || !get_u64(env, tg[1], &gen, &err))
            return error_tuple(env, ATOM_BADARG);
        if (ticket >= t->entries)
            return error_tuple(env, ATOM_OUT_OF_BOUNDS);
    }
    if (off < OBJ_HEADER || off % ALIGN != 0 || len < FRAME_HEADER || off > p->size ||
        len > p->size - off)
        return error_tuple(env, ATOM_SLICE_OUT_OF_BOUNDS);
    l = enif_alloc_resource(PLEASE_RT, sizeof(plea_t));
    if (l == NULL)
        return error_tuple(env, ATOM_ENOMEM);
    __atomic_add_fetch(&p->leases, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&p->closed, __ATOMIC_SEQ_CST)) {
        /* no new leases on a closed peer (its mapping may be going) */
        peer_drop_lease(p);
        l->peer = NULL;
        enif_release_resource(l);
        return error_tuple(env, ATOM_CLOSED);
    }
    enif_keep_resource(p);
    if (t != NULL)
        enif_keep_resource(t);
    l->peer = p;
    l->table = t;
    l->off = off;
    l->len = len;
    l->gen = gen;
    l->ticket = ticket;
    l->state = LEASE_ACTIVE;
    term = enif_make_resource(env, l);
    enif_release_resource(l);
    return ok_tuple(env, term);
}

static int get_plea_range(ErlNifEnv *env, const ERL_NIF_TERM argv[], plea_t **l, uint64_t *off,
                          uint64_t *len, ERL_NIF_TERM *err)
{
    if (!enif_get_resource(env, argv[0], PLEASE_RT, (void **)l) || (*l)->peer == NULL) {
        *err = error_tuple(env, ATOM_BADARG);
        return 0;
    }
    if (!get_u64(env, argv[1], off, err) || !get_u64(env, argv[2], len, err))
        return 0;
    if (*off > (*l)->len || *len > (*l)->len - *off) {
        *err = error_tuple(env, ATOM_OUT_OF_BOUNDS);
        return 0;
    }
    if (__atomic_load_n(&(*l)->state, __ATOMIC_SEQ_CST) == LEASE_ENDED) {
        *err = error_tuple(env, ATOM_RELEASED);
        return 0;
    }
    return 1;
}

static ERL_NIF_TERM plea_read_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    plea_t *l;
    uint64_t off, len;
    ERL_NIF_TERM err;
    ErlNifBinary bin;
    (void)argc;
    if (!get_plea_range(env, argv, &l, &off, &len, &err))
        return err;
    if (!enif_alloc_binary((size_t)len, &bin))
        return error_tuple(env, ATOM_ENOMEM);
    memcpy(bin.data, l->peer->addr + l->off + off, (size_t)len);
    return ok_tuple(env, enif_make_binary(env, &bin));
}

/* peer_lease_read(Lease, Off, Len) -> {ok, Binary}: a private copy (offsets within the slice). */
ERL_NIF_TERM nif_peer_lease_read(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    plea_t *l;
    uint64_t off, len;
    ERL_NIF_TERM err;
    if (!get_plea_range(env, argv, &l, &off, &len, &err))
        return err;
    if (len > DIRTY_THRESHOLD)
        return enif_schedule_nif(env, "peer_lease_read_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 plea_read_impl, argc, argv);
    return plea_read_impl(env, argc, argv);
}

/*
 * peer_lease_binary(Lease, Off, Len) -> {ok, Binary} | {error, Reason}
 * A zero-copy binary over the slice; it keeps the lease (and the mapping) until
 * it is garbage-collected. After this the lease can no longer be released early.
 */
ERL_NIF_TERM nif_peer_lease_binary(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    plea_t *l;
    uint64_t off, len;
    ERL_NIF_TERM err;
    int expected = LEASE_ACTIVE;
    (void)argc;
    if (!get_plea_range(env, argv, &l, &off, &len, &err))
        return err;
    if (!__atomic_compare_exchange_n(&l->state, &expected, LEASE_HAS_BINARY, 0,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST) &&
        expected != LEASE_HAS_BINARY)
        return error_tuple(env, ATOM_RELEASED);
    return ok_tuple(env,
                    enif_make_resource_binary(env, l, l->peer->addr + l->off + off, (size_t)len));
}

/* peer_lease_release(Lease) -> ok | {error, in_use}: ends a lease no binary was made from. */
ERL_NIF_TERM nif_peer_lease_release(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    plea_t *l;
    int expected = LEASE_ACTIVE;
    (void)argc;
    if (!enif_get_resource(env, argv[0], PLEASE_RT, (void **)&l) || l->peer == NULL)
        return error_tuple(env, ATOM_BADARG);
    if (__atomic_compare_exchange_n(&l->state, &expected, LEASE_ENDED, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) {
        plea_end(l);
        return ATOM_OK;
    }
    return expected == LEASE_HAS_BINARY ? error_tuple(env, ATOM_IN_USE) : ATOM_OK;
}

/* fd_count() -> {ok, N}: open descriptors of this OS process (tests, stats). */
ERL_NIF_TERM nif_fd_count(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    DIR *d;
    struct dirent *e;
    unsigned n = 0;
    (void)argc;
    (void)argv;
    d = opendir("/proc/self/fd");
    if (d == NULL)
        return errno_error(env, errno);
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return ok_tuple(env, enif_make_uint(env, n > 0 ? n - 1 : 0));
}

int arena_load(ErlNifEnv *env)
{
    ErlNifResourceFlags flags = ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER;
    ASET_RT = enif_open_resource_type(env, NULL, "beambridge_arena_set", aset_dtor, flags, NULL);
    SLICE_RT = enif_open_resource_type(env, NULL, "beambridge_slice", slice_dtor, flags, NULL);
    PIN_RT = enif_open_resource_type(env, NULL, "beambridge_slice_pin", pin_dtor, flags, NULL);
    TABLE_RT = enif_open_resource_type(env, NULL, "beambridge_lease_table", table_dtor, flags,
                                       NULL);
    PEER_RT = enif_open_resource_type(env, NULL, "beambridge_peer", peer_dtor, flags, NULL);
    PLEASE_RT =
        enif_open_resource_type(env, NULL, "beambridge_peer_lease", plea_dtor, flags, NULL);
    ATOM_NO_ROOM = enif_make_atom(env, "no_room");
    ATOM_NO_SPACE = enif_make_atom(env, "no_space");
    ATOM_ARENA_FULL = enif_make_atom(env, "arena_full");
    ATOM_NOT_FOUND = enif_make_atom(env, "not_found");
    ATOM_NOT_SEALED = enif_make_atom(env, "not_sealed");
    ATOM_SLICE_OUT_OF_BOUNDS = enif_make_atom(env, "slice_out_of_bounds");
    ATOM_BAD_FRAME = enif_make_atom(env, "bad_frame");
    ATOM_NIL = enif_make_atom(env, "nil");
    ATOM_ARENAS = enif_make_atom(env, "arenas");
    ATOM_BYTES = enif_make_atom(env, "bytes");
    ATOM_USED = enif_make_atom(env, "used");
    ATOM_LIVE = enif_make_atom(env, "live");
    ATOM_LIMIT = enif_make_atom(env, "limit");
    ATOM_PEAK_BYTES = enif_make_atom(env, "peak_bytes");
    ATOM_PEAK_USED = enif_make_atom(env, "peak_used");
    ATOM_ALLOCS = enif_make_atom(env, "allocs");
    ATOM_GROWS = enif_make_atom(env, "grows");
    ATOM_DROPS = enif_make_atom(env, "drops");
    return ASET_RT != NULL && SLICE_RT != NULL && PIN_RT != NULL && TABLE_RT != NULL &&
           PEER_RT != NULL && PLEASE_RT != NULL;
}
