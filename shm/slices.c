/*
 * slices.c — slices of an arena set (protocol/SPEC.md §3): allocation, frames
 * written into them, reads and writes, lending to the peer and zero-copy
 * binaries.
 *
 * A slice is freed when its holds drop to zero:
 *   - the allocating process's hold (slice_release, or the slice resource's
 *     destructor),
 *   - the peer's lease (slice_lend .. slice_return),
 *   - short holds (slice_hold .. slice_unhold),
 *   - every zero-copy binary made with slice_binary (a pin resource each, so
 *     a stale reference to the slice resource in some process heap never keeps
 *     the slice allocated).
 * Its range then goes back to its arena (slice_free, arena_set.c).
 */
#include "objects.h"

#include <string.h>
#include <xxhash.h>

#define HASH_CHUNK (64u * 1024u)

typedef struct {
    slice_t *slice; /* kept; holds one hold on it */
} pin_t;

static ErlNifResourceType *SLICE_RT, *PIN_RT;
static ERL_NIF_TERM ATOM_NO_ROOM, ATOM_BAD_FRAME;

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

static int get_slice(ErlNifEnv *env, ERL_NIF_TERM t, slice_t **sl)
{
    return enif_get_resource(env, t, SLICE_RT, (void **)sl) && (*sl)->set != NULL;
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
    sl->gen = new_generation();
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

int slices_load(ErlNifEnv *env, ErlNifResourceFlags flags)
{
    SLICE_RT = enif_open_resource_type(env, NULL, "beambridge_slice", slice_dtor, flags, NULL);
    PIN_RT = enif_open_resource_type(env, NULL, "beambridge_slice_pin", pin_dtor, flags, NULL);
    ATOM_NO_ROOM = enif_make_atom(env, "no_room");
    ATOM_BAD_FRAME = enif_make_atom(env, "bad_frame");
    return SLICE_RT != NULL && PIN_RT != NULL;
}
