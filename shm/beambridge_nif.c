/*
 * beambridge_nif.c — the part of beambridge that needs C: the result helpers
 * shared with the object files, signals to worker processes, xxh3_64, zstd
 * decompression of Arrow body buffers (bounded by the size the stream declares,
 * invariant 5), and the function table. Shared memory (arenas, slices, leases,
 * peers) is in objects.c, arena_set.c, slices.c, lease_table.c and peer.c
 * (objects.h), payload compression (lz4_frame, zstd, gzip) in codecs.c; header
 * parsing and policy live in Elixir (Bridge.Header, Bridge.Arena, Bridge.Peer,
 * Bridge.Codec); see protocol/SPEC.md.
 *
 * Safety rules kept throughout:
 *   - every argument is checked; user-reachable input never raises badarg and
 *     never leads to an access outside the memory it names;
 *   - destructors never block;
 *   - hashes and decompression above DIRTY_THRESHOLD run on dirty CPU schedulers.
 */
#define _GNU_SOURCE
#include "nif_common.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#define MAX_NAME_LEN 255u
/* zstd_decompress never makes a binary larger than this (Arrow's max_decompressed default). */
#define MAX_DECOMPRESSED (((uint64_t)1) << 32)

ERL_NIF_TERM ATOM_OK, ATOM_ERROR, ATOM_BADARG, ATOM_OUT_OF_BOUNDS, ATOM_CLOSED, ATOM_IN_USE,
    ATOM_RELEASED, ATOM_ENOMEM, ATOM_TRUE, ATOM_FALSE, ATOM_TOO_LARGE, ATOM_SIZE_MISMATCH;
static ERL_NIF_TERM ATOM_BAD_NAME, ATOM_BAD_COMPRESSED_DATA;

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

int get_output_size(ErlNifEnv *env, ERL_NIF_TERM t, uint64_t max, uint64_t *out,
                    ERL_NIF_TERM *err)
{
    ErlNifUInt64 v;
    if (!enif_get_uint64(env, t, &v)) {
        /* Not an integer, or a negative one: badarg. A positive bignum: too_large. */
        int positive = enif_term_type(env, t) == ERL_NIF_TERM_TYPE_INTEGER &&
                       enif_compare(t, enif_make_int(env, 0)) > 0;
        *err = error_tuple(env, positive ? ATOM_TOO_LARGE : ATOM_BADARG);
        return 0;
    }
    if ((uint64_t)v > max || (uint64_t)v > (uint64_t)SIZE_MAX) {
        *err = error_tuple(env, ATOM_TOO_LARGE);
        return 0;
    }
    *out = (uint64_t)v;
    return 1;
}

/* The name nif_unlink takes: "/" then 1..254 bytes without "/" or NUL, not "." or ".."
 * (badarg when not a binary, bad_name otherwise). */
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

/* ------------------------------------------------------------------------ */
/* Processes and names                                                      */
/* ------------------------------------------------------------------------ */

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

/* binary_address(Binary) -> {ok, Address}: where a binary's bytes live (for tests). */
static ERL_NIF_TERM nif_binary_address(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary bin;
    (void)argc;
    if (!enif_inspect_binary(env, argv[0], &bin))
        return error_tuple(env, ATOM_BADARG);
    return ok_tuple(env, enif_make_uint64(env, (ErlNifUInt64)(uintptr_t)bin.data));
}

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
    else if (strcmp(sig_name, "usr1") == 0)
        sig = SIGUSR1; /* cancel the call in flight (SPEC §8.7) */
    else
        return error_tuple(env, ATOM_BADARG);
    if (kill((pid_t)pid, sig) != 0)
        return errno_error(env, errno);
    return ATOM_OK;
}

/* euid() -> {ok, Uid}: Bridge.Reaper only removes names owned by this uid. */
static ERL_NIF_TERM nif_euid(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    (void)argv;
    return ok_tuple(env, enif_make_uint(env, (unsigned)geteuid()));
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
    unsigned long long declared;
    size_t first;
    if (!enif_inspect_binary(env, argv[0], in)) {
        *err = error_tuple(env, ATOM_BADARG);
        return 0;
    }
    if (!get_output_size(env, argv[1], MAX_DECOMPRESSED, expected, err))
        return 0;
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
/* Load                                                                     */
/* ------------------------------------------------------------------------ */

static int init(ErlNifEnv *env, void **priv)
{
    ATOM_OK = enif_make_atom(env, "ok");
    ATOM_ERROR = enif_make_atom(env, "error");
    ATOM_BADARG = enif_make_atom(env, "badarg");
    ATOM_OUT_OF_BOUNDS = enif_make_atom(env, "out_of_bounds");
    ATOM_CLOSED = enif_make_atom(env, "closed");
    ATOM_BAD_NAME = enif_make_atom(env, "bad_name");
    ATOM_IN_USE = enif_make_atom(env, "in_use");
    ATOM_RELEASED = enif_make_atom(env, "released");
    ATOM_ENOMEM = enif_make_atom(env, "enomem");
    ATOM_TRUE = enif_make_atom(env, "true");
    ATOM_FALSE = enif_make_atom(env, "false");
    ATOM_TOO_LARGE = enif_make_atom(env, "too_large");
    ATOM_SIZE_MISMATCH = enif_make_atom(env, "size_mismatch");
    ATOM_BAD_COMPRESSED_DATA = enif_make_atom(env, "bad_compressed_data");
    codecs_load(env);
    if (!watch_load(env, ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER))
        return 1;
    return arena_load(env, priv) ? 0 : 1;
}

static int load(ErlNifEnv *env, void **priv, ERL_NIF_TERM info)
{
    (void)info;
    *priv = NULL;
    return init(env, priv);
}

static int upgrade(ErlNifEnv *env, void **priv, void **old_priv, ERL_NIF_TERM info)
{
    (void)info;
    *priv = *old_priv; /* state shared by every loaded copy of the library (peer.c) */
    return init(env, priv);
}

static ErlNifFunc nif_funcs[] = {
    {"unlink", 1, nif_unlink, 0},
    {"euid", 0, nif_euid, 0},
    {"kill", 2, nif_kill, 0},
    {"binary_address", 1, nif_binary_address, 0},
    {"xxh3_64", 1, nif_xxh3_64, 0},
    {"zstd_decompress", 2, nif_zstd_decompress, 0},
    {"watch_new", 3, nif_watch_new, 0},
    CODEC_NIF_FUNCS,
    ARENA_NIF_FUNCS,
};

ERL_NIF_INIT(Elixir.Bridge.NIF, nif_funcs, load, NULL, upgrade, NULL)
