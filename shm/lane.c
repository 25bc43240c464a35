/*
 * lane.c — a worker's lane (protocol/SPEC.md §8.5): one sealed memfd, read and
 * written by the BEAM and one worker, that carries a call and its answer while
 * both sides are polling, so neither has to be woken through the pipe.
 *
 * The BEAM writes a batch of {packet, 4} frames into the call area, stores its
 * length, then the call's sequence number (release). The worker answers with a
 * batch in the answer area and the same number in answer_seq. `awake` (the
 * worker's word) says it is polling; `parked` (the BEAM's) says the BEAM stopped
 * polling for that call and wants a `:lane` frame on the pipe instead. Everything
 * read from the lane is copied out before it is used: the worker can rewrite it at
 * any time, and a bad length is refused, never followed.
 */
#include "objects.h"

#include <sched.h>


/* Byte offsets in the object (registry.json "lane"); words are little-endian u64. */
#define LANE_CALL_SEQ 64u
#define LANE_CALL_LEN 128u
#define LANE_ANSWER_SEQ 192u
#define LANE_ANSWER_LEN 256u
#define LANE_AWAKE 320u
#define LANE_PARKED 384u
#define LANE_CALL_AREA 4096u
#define LANE_AREA_SIZE 65536u
#define LANE_ANSWER_AREA (LANE_CALL_AREA + LANE_AREA_SIZE)
#define LANE_SIZE (LANE_ANSWER_AREA + LANE_AREA_SIZE)
/* A NIF on a normal scheduler should return within about a millisecond. */
#define LANE_MAX_SPIN_US 1000

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

typedef struct {
    table_t obj;  /* the object (objects.h): fd, mapping, id, nonce */
    uint64_t seq; /* the last call sent */
} lane_t;

static ErlNifResourceType *LANE_RT;
static ERL_NIF_TERM ATOM_PENDING, ATOM_NONE, ATOM_ASLEEP;

static void lane_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    object_close(&((lane_t *)obj)->obj);
}

static inline volatile uint64_t *word(lane_t *l, unsigned off)
{
    return (volatile uint64_t *)(l->obj.addr + off);
}

static inline uint64_t load(lane_t *l, unsigned off)
{
    return __atomic_load_n(word(l, off), __ATOMIC_ACQUIRE);
}

static inline void store(lane_t *l, unsigned off, uint64_t v)
{
    __atomic_store_n(word(l, off), v, __ATOMIC_RELEASE);
}

static int get_lane(ErlNifEnv *env, ERL_NIF_TERM t, lane_t **l)
{
    return enif_get_resource(env, t, LANE_RT, (void **)l);
}

/* lane_new() -> {ok, Lane} */
ERL_NIF_TERM nif_lane_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    lane_t *l;
    int rc;
    ERL_NIF_TERM term;
    (void)argc;
    (void)argv;
    l = enif_alloc_resource(LANE_RT, sizeof(lane_t));
    if (l == NULL)
        return error_tuple(env, ATOM_ENOMEM);
    l->seq = 0;
    rc = object_new(&l->obj, LANE_SIZE, KIND_LANE, 0);
    if (rc != 0) {
        enif_release_resource(l);
        return errno_error(env, rc);
    }
    term = enif_make_resource(env, l);
    enif_release_resource(l);
    return ok_tuple(env, term);
}

/* lane_info(Lane) -> {ok, {Id, Fd, Size, Nonce}} */
ERL_NIF_TERM nif_lane_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    lane_t *l;
    (void)argc;
    if (!get_lane(env, argv[0], &l))
        return error_tuple(env, ATOM_BADARG);
    return ok_tuple(env, enif_make_tuple4(env, enif_make_uint(env, l->obj.id),
                                          enif_make_int(env, l->obj.fd),
                                          enif_make_uint64(env, LANE_SIZE),
                                          enif_make_uint64(env, l->obj.nonce)));
}

/* lane_layout() -> #{name => offset}: for the test against registry.json. */
ERL_NIF_TERM nif_lane_layout(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    static const struct {
        const char *name;
        uint64_t value;
    } items[] = {{"call_seq", LANE_CALL_SEQ},       {"call_len", LANE_CALL_LEN},
                 {"answer_seq", LANE_ANSWER_SEQ},   {"answer_len", LANE_ANSWER_LEN},
                 {"awake", LANE_AWAKE},             {"parked", LANE_PARKED},
                 {"call_area", LANE_CALL_AREA},     {"answer_area", LANE_ANSWER_AREA},
                 {"area_size", LANE_AREA_SIZE},     {"size", LANE_SIZE}};
    ERL_NIF_TERM map = enif_make_new_map(env);
    (void)argc;
    (void)argv;
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++)
        enif_make_map_put(env, map, enif_make_string(env, items[i].name, ERL_NIF_LATIN1),
                          enif_make_uint64(env, items[i].value), &map);
    return map;
}

/*
 * lane_send(Lane, Batch) -> {ok, Seq, StillAwake} | asleep | {error, too_large}
 *
 * Publishes Batch (iodata: whole {packet, 4} frames) as call Seq when the worker
 * is awake. StillAwake is the worker's word read again after publishing (with a
 * full fence between): false means it may have gone to sleep without seeing the
 * call, and the caller must ring it with a `:lane` frame on the pipe.
 */
ERL_NIF_TERM nif_lane_send(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    lane_t *l;
    ErlNifBinary batch;
    uint64_t seq;
    int awake;
    (void)argc;
    if (!get_lane(env, argv[0], &l) || !enif_inspect_iolist_as_binary(env, argv[1], &batch))
        return error_tuple(env, ATOM_BADARG);
    if (batch.size > LANE_AREA_SIZE)
        return error_tuple(env, ATOM_TOO_LARGE);
    if (load(l, LANE_AWAKE) == 0)
        return ATOM_ASLEEP;
    seq = ++l->seq;
    store(l, LANE_PARKED, 0);
    memcpy(l->obj.addr + LANE_CALL_AREA, batch.data, batch.size);
    store(l, LANE_CALL_LEN, batch.size);
    store(l, LANE_CALL_SEQ, seq);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    awake = load(l, LANE_AWAKE) != 0;
    return enif_make_tuple3(env, ATOM_OK, enif_make_uint64(env, seq),
                            awake ? ATOM_TRUE : ATOM_FALSE);
}

/* The answer to `seq` copied out, 1; 0 when there is none yet; -1 when its length is bad. */
static int take(ErlNifEnv *env, lane_t *l, uint64_t seq, ERL_NIF_TERM *out)
{
    uint64_t len;
    unsigned char *data;
    if (load(l, LANE_ANSWER_SEQ) != seq)
        return 0;
    len = load(l, LANE_ANSWER_LEN);
    if (len > LANE_AREA_SIZE)
        return -1;
    data = enif_make_new_binary(env, (size_t)len, out);
    memcpy(data, l->obj.addr + LANE_ANSWER_AREA, (size_t)len);
    return 1;
}

static ERL_NIF_TERM taken(ErlNifEnv *env, int rc, ERL_NIF_TERM bin, ERL_NIF_TERM otherwise)
{
    if (rc > 0)
        return ok_tuple(env, bin);
    return rc < 0 ? error_tuple(env, ATOM_TOO_LARGE) : otherwise;
}

static int get_seq(ErlNifEnv *env, ERL_NIF_TERM t, lane_t *l, uint64_t *seq)
{
    ErlNifUInt64 v;
    if (!enif_get_uint64(env, t, &v) || v == 0 || v > l->seq)
        return 0;
    *seq = v;
    return 1;
}

/*
 * lane_wait(Lane, Seq, SpinUs) -> {ok, Batch} | pending | {error, too_large}
 *
 * Polls for the answer to call Seq for up to SpinUs microseconds (at most
 * LANE_MAX_SPIN_US). When none came it parks: stores Seq in `parked`, fences, and
 * looks once more, so an answer published meanwhile is not missed; a worker that
 * answers later sees `parked` and rings with a `:lane` frame.
 */
ERL_NIF_TERM nif_lane_wait(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    lane_t *l;
    uint64_t seq;
    unsigned spin_us;
    ErlNifTime start, now;
    ERL_NIF_TERM bin;
    int rc, percent;
    unsigned n = 0;
    (void)argc;
    if (!get_lane(env, argv[0], &l) || !get_seq(env, argv[1], l, &seq) ||
        !enif_get_uint(env, argv[2], &spin_us))
        return error_tuple(env, ATOM_BADARG);
    if (spin_us > LANE_MAX_SPIN_US)
        spin_us = LANE_MAX_SPIN_US;
    start = enif_monotonic_time(ERL_NIF_USEC);
    now = start;
    while ((rc = take(env, l, seq, &bin)) == 0) {
        if ((++n & 31u) == 0) {
            now = enif_monotonic_time(ERL_NIF_USEC);
            if (now - start >= (ErlNifTime)spin_us)
                break;
            /* the worker may share this CPU: let it run */
            sched_yield();
        }
        cpu_relax();
    }
    percent = (int)((now - start) / 10);
    if (percent > 0)
        enif_consume_timeslice(env, percent > 100 ? 100 : percent);
    if (rc != 0)
        return taken(env, rc, bin, ATOM_PENDING);
    store(l, LANE_PARKED, seq);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    rc = take(env, l, seq, &bin);
    return taken(env, rc, bin, ATOM_PENDING);
}

/* lane_take(Lane, Seq) -> {ok, Batch} | none | {error, too_large}: no waiting. */
ERL_NIF_TERM nif_lane_take(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    lane_t *l;
    uint64_t seq;
    ERL_NIF_TERM bin;
    int rc;
    (void)argc;
    if (!get_lane(env, argv[0], &l) || !get_seq(env, argv[1], l, &seq))
        return error_tuple(env, ATOM_BADARG);
    rc = take(env, l, seq, &bin);
    return taken(env, rc, bin, ATOM_NONE);
}

int lane_load(ErlNifEnv *env, ErlNifResourceFlags flags)
{
    ATOM_PENDING = enif_make_atom(env, "pending");
    ATOM_NONE = enif_make_atom(env, "none");
    ATOM_ASLEEP = enif_make_atom(env, "asleep");
    LANE_RT = enif_open_resource_type(env, NULL, "beambridge_lane", lane_dtor, flags, NULL);
    return LANE_RT != NULL;
}
