/*
 * lease_table.c — lease tables (protocol/SPEC.md §4): a sealed memfd of one
 * 64-bit word per ticket that this side owns and the peer reads. When a lease
 * on a peer's slice ends, peer.c stores the slice's generation into the
 * lease's word.
 */
#include "objects.h"

#include <string.h>

#define MAX_TICKETS (1u << 20)

static ErlNifResourceType *TABLE_RT;

int get_table(ErlNifEnv *env, ERL_NIF_TERM t, table_t **table)
{
    return enif_get_resource(env, t, TABLE_RT, (void **)table);
}

static void table_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    object_close((table_t *)obj);
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
    rc = object_new(t, round_up(OBJ_HEADER + (uint64_t)entries * 8, PAGE), KIND_LEASE_TABLE,
                    entries);
    if (rc != 0) {
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

int lease_table_load(ErlNifEnv *env, ErlNifResourceFlags flags)
{
    TABLE_RT = enif_open_resource_type(env, NULL, "beambridge_lease_table", table_dtor, flags,
                                       NULL);
    return TABLE_RT != NULL;
}
