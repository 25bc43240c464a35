/*
 * peer.c — a peer's objects and leases on their slices (protocol/SPEC.md §2, §4).
 *
 * peer_open maps a peer's object read-only from a read-only descriptor after
 * checking its seals and header; a peer lease is a resource whose zero-copy
 * binaries keep the mapping alive and whose destructor ends the lease by
 * storing the slice's generation into this process's lease table.
 */
#define _GNU_SOURCE
#include "objects.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum { LEASE_ACTIVE = 0, LEASE_HAS_BINARY = 1, LEASE_ENDED = 2 };

typedef struct {
    uint8_t *addr;  /* unmapped once closed and no lease is left, or in the destructor */
    uint64_t size;
    uint32_t id;
    uint32_t owner_pid, owner_fd; /* where the object was opened from (peer_frame_of) */
    int kind;
    int leases;     /* atomic: live leases on its slices */
    int closed;     /* atomic: peer_close was called */
    int live;        /* atomic: leases not ended yet (a result still held) */
    uint64_t leased; /* atomic: bytes of the slices under those leases */
} peer_t;

typedef struct plea {
    peer_t *peer;   /* kept */
    table_t *table; /* kept, or NULL */
    uint64_t off, len, gen;
    uint32_t ticket;
    int state;      /* atomic LEASE_* */
    /* In the list of leases that made binaries (under SEEN_LOCK), so that a binary
     * can be traced back to its frame (peer_frame_of). */
    struct plea *seen_prev, *seen_next;
    int seen;
} plea_t;

/* The leases that made binaries. One list per VM: a library loaded by a code
 * upgrade takes the old one's over (priv_data), since its destructors run on
 * the old library's leases (ERL_NIF_RT_TAKEOVER). */
typedef struct {
    ErlNifMutex *lock;
    plea_t *head;
} seen_t;

static ErlNifResourceType *PEER_RT, *PLEASE_RT;
static seen_t *SEEN;
static ERL_NIF_TERM ATOM_NOT_SEALED, ATOM_SLICE_OUT_OF_BOUNDS, ATOM_NIL;

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
    p->owner_pid = pid;
    p->owner_fd = fdn;
    p->kind = (int)kind;
    p->leases = 0;
    p->closed = 0;
    p->live = 0;
    p->leased = 0;
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

/* peer_info(Peer) -> {ok, {Id, Kind, Size, Leases, LeasedBytes}}: the leases on its
 * slices not ended yet (results still held), and their bytes (Bridge.Metrics' memory) */
ERL_NIF_TERM nif_peer_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    peer_t *p;
    (void)argc;
    if (!enif_get_resource(env, argv[0], PEER_RT, (void **)&p))
        return error_tuple(env, ATOM_BADARG);
    return ok_tuple(
        env, enif_make_tuple5(env, enif_make_uint(env, p->id), enif_make_int(env, p->kind),
                              enif_make_uint64(env, p->size),
                              enif_make_int(env, __atomic_load_n(&p->live, __ATOMIC_SEQ_CST)),
                              enif_make_uint64(env, __atomic_load_n(&p->leased, __ATOMIC_SEQ_CST))));
}

/* Once per lease, as it goes from active or has-binary to ended. */
static void plea_end(plea_t *l)
{
    __atomic_sub_fetch(&l->peer->live, 1, __ATOMIC_SEQ_CST);
    __atomic_sub_fetch(&l->peer->leased, l->len, __ATOMIC_SEQ_CST);
    if (l->table != NULL) {
        uint64_t *word = (uint64_t *)(l->table->addr + OBJ_HEADER + (uint64_t)l->ticket * 8);
        __atomic_store_n(word, l->gen, __ATOMIC_SEQ_CST);
    }
}

static void seen_add(plea_t *l)
{
    enif_mutex_lock(SEEN->lock);
    if (!l->seen) {
        l->seen_prev = NULL;
        l->seen_next = SEEN->head;
        if (SEEN->head != NULL)
            SEEN->head->seen_prev = l;
        SEEN->head = l;
        __atomic_store_n(&l->seen, 1, __ATOMIC_SEQ_CST);
    }
    enif_mutex_unlock(SEEN->lock);
}

/* From the destructor only: nothing else refers to `l` then but a scan holding the lock. */
static void seen_remove(plea_t *l)
{
    if (!__atomic_load_n(&l->seen, __ATOMIC_SEQ_CST))
        return;
    enif_mutex_lock(SEEN->lock);
    if (l->seen_prev != NULL)
        l->seen_prev->seen_next = l->seen_next;
    else
        SEEN->head = l->seen_next;
    if (l->seen_next != NULL)
        l->seen_next->seen_prev = l->seen_prev;
    l->seen = 0;
    enif_mutex_unlock(SEEN->lock);
}

static void plea_dtor(ErlNifEnv *env, void *obj)
{
    plea_t *l = (plea_t *)obj;
    (void)env;
    if (l->peer == NULL)
        return;
    seen_remove(l);
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
        if (!get_table(env, argv[3], &t) ||
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
    __atomic_add_fetch(&p->live, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&p->leased, len, __ATOMIC_SEQ_CST);
    l->gen = gen;
    l->ticket = ticket;
    l->state = LEASE_ACTIVE;
    l->seen = 0;
    l->seen_prev = l->seen_next = NULL;
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
    if (__atomic_compare_exchange_n(&l->state, &expected, LEASE_HAS_BINARY, 0,
                                    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        seen_add(l);
    else if (expected != LEASE_HAS_BINARY)
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

/*
 * peer_frame_of(Binary, Whole) -> {ok, {Copy, SliceLength, At, OwnerPid, OwnerFd, SliceOffset}} | none
 * When Binary's bytes lie in a slice of a peer's object that a live lease made
 * binaries of: a private copy of the start of that slice, the slice's length,
 * where Binary starts in it, and where the object was opened from. The copy
 * holds the header, metadata and provenance block as the header's lengths say
 * (Whole false: nothing of the payload is read), or the frame up to its
 * payload's end (Whole true); at most the slice either way. It is unchecked:
 * the caller validates it (SPEC §6, §5.4).
 */
static ERL_NIF_TERM frame_of_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary bin, head;
    plea_t *found = NULL;
    uint8_t *start = NULL;
    uint64_t want;
    ERL_NIF_TERM out;
    int whole = enif_is_identical(argv[1], ATOM_TRUE);
    (void)argc;
    if (!enif_inspect_binary(env, argv[0], &bin))
        return error_tuple(env, ATOM_BADARG);
    enif_mutex_lock(SEEN->lock);
    for (plea_t *l = SEEN->head; l != NULL; l = l->seen_next) {
        uint8_t *addr = __atomic_load_n(&l->peer->addr, __ATOMIC_SEQ_CST);
        uint8_t *end;
        if (addr == NULL)
            continue;
        start = addr + l->off;
        end = start + l->len;
        if (bin.data < start || bin.data > end || (bin.data == end && bin.size > 0))
            continue;
        /* kept while it is copied from, outside the lock: its mapping stays */
        enif_keep_resource(l);
        found = l;
        break;
    }
    enif_mutex_unlock(SEEN->lock);
    if (found == NULL)
        return enif_make_atom(env, "none");
    want = FRAME_HEADER;
    if (whole && found->len >= FRAME_HEADER) {
        /* the peer may change these meanwhile: they only bound the copy */
        uint64_t off = get64(start + 40), len = get64(start + 48);
        want = off > found->len || len > found->len - off ? found->len : off + len;
    } else if (found->len >= FRAME_HEADER) {
        uint64_t meta = get32(start + 36);
        uint64_t prov = get16(start + 6) == 0 ? 0 : get32(start + 88);
        want += (meta > MAX_METADATA ? MAX_METADATA : meta) +
                (prov > MAX_PROVENANCE ? MAX_PROVENANCE : prov);
    }
    if (want > found->len)
        want = found->len;
    if (!enif_alloc_binary((size_t)want, &head)) {
        enif_release_resource(found);
        return error_tuple(env, ATOM_ENOMEM);
    }
    memcpy(head.data, start, (size_t)want);
    out = ok_tuple(env, enif_make_tuple6(env, enif_make_binary(env, &head),
                                         enif_make_uint64(env, found->len),
                                         enif_make_uint64(env, (uint64_t)(bin.data - start)),
                                         enif_make_uint(env, found->peer->owner_pid),
                                         enif_make_uint(env, found->peer->owner_fd),
                                         enif_make_uint64(env, found->off)));
    enif_release_resource(found);
    return out;
}

ERL_NIF_TERM nif_peer_frame_of(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    if (enif_is_identical(argv[1], ATOM_TRUE)) /* a whole payload: not on a normal scheduler */
        return enif_schedule_nif(env, "peer_frame_of_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 frame_of_impl, argc, argv);
    return frame_of_impl(env, argc, argv);
}

int peer_load(ErlNifEnv *env, ErlNifResourceFlags flags, void **shared)
{
    if (*shared != NULL) {
        SEEN = (seen_t *)*shared; /* a code upgrade: the old library's list */
    } else {
        SEEN = enif_alloc(sizeof *SEEN);
        if (SEEN == NULL || (SEEN->lock = enif_mutex_create("beambridge_seen_leases")) == NULL)
            return 0;
        SEEN->head = NULL;
        *shared = SEEN;
    }
    PEER_RT = enif_open_resource_type(env, NULL, "beambridge_peer", peer_dtor, flags, NULL);
    PLEASE_RT =
        enif_open_resource_type(env, NULL, "beambridge_peer_lease", plea_dtor, flags, NULL);
    ATOM_NOT_SEALED = enif_make_atom(env, "not_sealed");
    ATOM_SLICE_OUT_OF_BOUNDS = enif_make_atom(env, "slice_out_of_bounds");
    ATOM_NIL = enif_make_atom(env, "nil");
    return PEER_RT != NULL && PLEASE_RT != NULL;
}
