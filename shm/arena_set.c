/*
 * arena_set.c — the owned side's arena sets (protocol/SPEC.md §3).
 *
 * An arena set is a bounded group of sealed memfd arenas that any BEAM process
 * allocates slices from (a mutex guards the allocator, whose state lives only
 * here, never in shared memory). Arenas are unmapped only when no slice of
 * theirs is allocated, so no binary ever points into an unmapped arena
 * (invariant 1). slices.c takes ranges with extent_take and gives them back
 * with slice_free.
 */
#include "objects.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB (((uint64_t)1) << 20)

static ErlNifResourceType *ASET_RT;
static ERL_NIF_TERM ATOM_NO_SPACE, ATOM_ARENA_FULL, ATOM_NOT_FOUND, ATOM_ARENAS, ATOM_BYTES,
    ATOM_USED, ATOM_LIVE, ATOM_LIMIT, ATOM_PEAK_BYTES, ATOM_PEAK_USED, ATOM_ALLOCS, ATOM_GROWS,
    ATOM_DROPS;

/* ------------------------------------------------------------------------ */
/* The allocator (private memory only)                                      */
/* ------------------------------------------------------------------------ */

static int64_t now_ms(void) { return (int64_t)enif_monotonic_time(ERL_NIF_MSEC); }

/* First fit; returns 1 and the offset, or 0. Caller holds the lock. */
int extent_take(arena_t *a, uint64_t len, uint64_t *off)
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
    if (s->grow_lock != NULL)
        enif_mutex_destroy(s->grow_lock);
}

/* The slice's range goes back to its arena. */
void slice_free(slice_t *sl)
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

int get_set(ErlNifEnv *env, ERL_NIF_TERM t, aset_t **s)
{
    return enif_get_resource(env, t, ASET_RT, (void **)s);
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
    s->grow_lock = enif_mutex_create("beambridge_arena_set_grow");
    s->limit = limit;
    s->min_arena = round_up(min_arena, PAGE);
    term = enif_make_resource(env, s);
    enif_release_resource(s);
    if (s->lock == NULL || s->grow_lock == NULL)
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

/* An arena (made, not being made) with a free extent of len bytes, or NULL. Caller
 * holds the lock. */
static arena_t *arena_with_room(aset_t *s, uint64_t len)
{
    for (int i = 0; i < MAX_ARENAS; i++) {
        arena_t *a = &s->arenas[i];
        if (a->fd < 0 || a->creating)
            continue;
        for (size_t j = 0; j < a->nfree; j++)
            if (a->free[j].len >= len)
                return a;
    }
    return NULL;
}

static ERL_NIF_TERM grow(ErlNifEnv *env, aset_t *s, uint64_t frame_len, uint64_t max_size);

/*
 * arena_grow(Set, FrameLen, MaxSize) -> {ok, ArenaId} |
 *     {error, too_large | arena_full | no_space | closed | eNNN}
 * Makes sure an arena can hold a slice for a frame of FrameLen bytes: creates
 * one within the limit and at most MaxSize bytes (the memory the caller found
 * free: past it the cgroup's OOM killer, not ENOSPC, would answer); dirty IO:
 * the pages are reserved here. When the limit or the arena count is in the way,
 * empty arenas are dropped, largest first, to make room.
 *
 * Callers that found no room at the same moment grow one at a time, and each
 * first looks again: the arena the one before it made usually has room for it
 * too (else a burst of concurrent callers would each make an arena, up to the
 * limit and the arena count, and the last ones would find arena_full).
 */
ERL_NIF_TERM nif_arena_grow(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    aset_t *s;
    uint64_t frame_len, max_size;
    ERL_NIF_TERM err, result;
    arena_t *a;
    uint32_t id = 0;
    (void)argc;
    if (!get_set(env, argv[0], &s))
        return error_tuple(env, ATOM_BADARG);
    if (!get_u64(env, argv[1], &frame_len, &err) || !get_u64(env, argv[2], &max_size, &err))
        return err;
    if (frame_len > MAX_OBJECT)
        return error_tuple(env, ATOM_TOO_LARGE);
    enif_mutex_lock(s->grow_lock);
    enif_mutex_lock(s->lock);
    a = s->closed ? NULL : arena_with_room(s, slice_length_for(frame_len));
    if (a != NULL)
        id = a->id;
    enif_mutex_unlock(s->lock);
    result = a != NULL ? ok_tuple(env, enif_make_uint(env, id)) : grow(env, s, frame_len, max_size);
    enif_mutex_unlock(s->grow_lock);
    return result;
}

static ERL_NIF_TERM grow(ErlNifEnv *env, aset_t *s, uint64_t frame_len, uint64_t max_size)
{
    uint64_t need, size, largest = 0;
    arena_t *a;
    int fd, rc;
    uint8_t *addr;
    uint64_t nonce;
    uint32_t id;
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

int arena_set_load(ErlNifEnv *env, ErlNifResourceFlags flags)
{
    ASET_RT = enif_open_resource_type(env, NULL, "beambridge_arena_set", aset_dtor, flags, NULL);
    ATOM_NO_SPACE = enif_make_atom(env, "no_space");
    ATOM_ARENA_FULL = enif_make_atom(env, "arena_full");
    ATOM_NOT_FOUND = enif_make_atom(env, "not_found");
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
    return ASET_RT != NULL;
}
