/*
 * watch.c — a resource that tells a process when the BEAM lets go of it
 * (protocol/SPEC.md §8.9). A %Bridge.Ref{} holds one: when the last term that
 * names it is garbage-collected, the destructor sends the worker process that
 * keeps the object {bridge_ref_gone, Session, Ref}, and the worker tells the
 * interpreter to drop it.
 */
#include "nif_common.h"

#include <stdint.h>

typedef struct {
    ErlNifPid to;
    uint64_t session;
    uint64_t ref;
} watch_t;

static ErlNifResourceType *WATCH_RT;
static ERL_NIF_TERM ATOM_GONE;

static void watch_dtor(ErlNifEnv *env, void *obj)
{
    watch_t *w = obj;
    ErlNifEnv *msg_env = enif_alloc_env();
    ERL_NIF_TERM msg;
    if (msg_env == NULL)
        return;
    msg = enif_make_tuple3(msg_env, enif_make_copy(msg_env, ATOM_GONE),
                           enif_make_uint64(msg_env, w->session),
                           enif_make_uint64(msg_env, w->ref));
    /* env is the destructor's callback environment; a dead process drops it */
    (void)enif_send(env, &w->to, msg_env, msg);
    enif_free_env(msg_env);
}

/* watch_new(Pid, Session, Ref) -> Resource */
ERL_NIF_TERM nif_watch_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    watch_t *w;
    ErlNifPid to;
    ErlNifUInt64 session, ref;
    ERL_NIF_TERM term;
    (void)argc;
    if (!enif_get_local_pid(env, argv[0], &to) || !enif_get_uint64(env, argv[1], &session) ||
        !enif_get_uint64(env, argv[2], &ref))
        return enif_make_badarg(env);
    w = enif_alloc_resource(WATCH_RT, sizeof(watch_t));
    if (w == NULL)
        return error_tuple(env, ATOM_ENOMEM);
    w->to = to;
    w->session = session;
    w->ref = ref;
    term = enif_make_resource(env, w);
    enif_release_resource(w);
    return term;
}

int watch_load(ErlNifEnv *env, ErlNifResourceFlags flags)
{
    ATOM_GONE = enif_make_atom(env, "bridge_ref_gone");
    WATCH_RT = enif_open_resource_type(env, NULL, "beambridge_watch", watch_dtor, flags, NULL);
    return WATCH_RT != NULL;
}
