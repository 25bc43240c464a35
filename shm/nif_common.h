/*
 * nif_common.h — what the NIF's C files share: the result helpers, argument
 * readers and the entry points of the transport v2 object files (objects.c,
 * arena_set.c, slices.c, lease_table.c, peer.c, lane.c; see protocol/SPEC.md), whose
 * internals they share through objects.h, and of the payload codecs (codecs.c).
 * Everything here has hidden visibility; only nif_init is exported.
 */
#ifndef BEAMBRIDGE_NIF_COMMON_H
#define BEAMBRIDGE_NIF_COMMON_H

#include <erl_nif.h>
#include <stdint.h>

/* Copies, hashes and decompression above this many bytes run on dirty CPU schedulers. */
#define DIRTY_THRESHOLD (64u * 1024u)

#ifdef DEBUG
#include <stdio.h>
#define DBG(...) fprintf(stderr, "beambridge_nif: " __VA_ARGS__)
#else
#define DBG(...) ((void)0)
#endif

extern ERL_NIF_TERM ATOM_OK, ATOM_ERROR, ATOM_BADARG, ATOM_OUT_OF_BOUNDS, ATOM_ENOMEM,
    ATOM_TRUE, ATOM_FALSE, ATOM_TOO_LARGE, ATOM_SIZE_MISMATCH, ATOM_RELEASED, ATOM_IN_USE,
    ATOM_CLOSED;

ERL_NIF_TERM error_tuple(ErlNifEnv *env, ERL_NIF_TERM reason);
ERL_NIF_TERM ok_tuple(ErlNifEnv *env, ERL_NIF_TERM value);
/* {error, eNAME} for an errno value (enospc, eacces...); unknown values -> errno_<n>. */
ERL_NIF_TERM errno_error(ErlNifEnv *env, int err);
/* A non-negative integer below 2^64: badarg when not an integer, out_of_bounds otherwise. */
int get_u64(ErlNifEnv *env, ERL_NIF_TERM t, uint64_t *out, ERL_NIF_TERM *err);
/* The size of an output to allocate, at most `max` (and SIZE_MAX): badarg when not an
 * integer or negative, too_large when above (a positive bignum included). */
int get_output_size(ErlNifEnv *env, ERL_NIF_TERM t, uint64_t max, uint64_t *out,
                    ERL_NIF_TERM *err);

/* objects.c: opens every resource type and makes every atom of the object files. */
int arena_load(ErlNifEnv *env, void **priv);

#define ARENA_NIF_FUNCS                                                         \
    {"arena_set_new", 2, nif_arena_set_new, 0},                                 \
        {"arena_set_close", 1, nif_arena_set_close, 0},                         \
        {"arena_set_stats", 1, nif_arena_set_stats, 0},                         \
        {"arena_set_trim", 3, nif_arena_set_trim, 0},                           \
        {"arena_grow", 3, nif_arena_grow, ERL_NIF_DIRTY_JOB_IO_BOUND},          \
        {"arena_info", 2, nif_arena_info, 0},                                   \
        {"slice_alloc", 2, nif_slice_alloc, 0},                                 \
        {"slice_info", 1, nif_slice_info, 0},                                   \
        {"slice_write_frame", 5, nif_slice_write_frame, 0},                     \
        {"slice_read", 3, nif_slice_read, 0},                                   \
        {"slice_write", 3, nif_slice_write, 0},                                 \
        {"slice_release", 1, nif_slice_release, 0},                             \
        {"slice_lend", 1, nif_slice_lend, 0},                                   \
        {"slice_return", 1, nif_slice_return, 0},                               \
        {"slice_hold", 1, nif_slice_hold, 0},                                   \
        {"slice_unhold", 1, nif_slice_unhold, 0},                               \
        {"slice_binary", 3, nif_slice_binary, 0},                               \
        {"lease_table_new", 1, nif_lease_table_new, ERL_NIF_DIRTY_JOB_IO_BOUND}, \
        {"lease_table_info", 1, nif_lease_table_info, 0},                       \
        {"lease_table_word", 2, nif_lease_table_word, 0},                       \
        {"peer_open", 6, nif_peer_open, ERL_NIF_DIRTY_JOB_IO_BOUND},            \
        {"peer_info", 1, nif_peer_info, 0},                                     \
        {"peer_close", 1, nif_peer_close, 0},                                   \
        {"peer_lease", 5, nif_peer_lease, 0},                                   \
        {"peer_lease_read", 3, nif_peer_lease_read, 0},                         \
        {"peer_lease_binary", 3, nif_peer_lease_binary, 0},                     \
        {"peer_frame_of", 2, nif_peer_frame_of, 0},                             \
        {"peer_lease_release", 1, nif_peer_lease_release, 0},                   \
        {"fd_count", 0, nif_fd_count, 0},                                       \
        {"lane_new", 0, nif_lane_new, ERL_NIF_DIRTY_JOB_IO_BOUND},              \
        {"lane_info", 1, nif_lane_info, 0},                                     \
        {"lane_layout", 0, nif_lane_layout, 0},                                 \
        {"lane_send", 2, nif_lane_send, 0},                                     \
        {"lane_wait", 3, nif_lane_wait, 0},                                     \
        {"lane_take", 2, nif_lane_take, 0}

/* watch.c: a resource that tells a process when it is garbage-collected. */
int watch_load(ErlNifEnv *env, ErlNifResourceFlags flags);
ERL_NIF_TERM nif_watch_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

/* codecs.c: makes its atoms. */
void codecs_load(ErlNifEnv *env);

#define CODEC_NIF_FUNCS                           \
    {"codec_compress", 3, nif_codec_compress, 0}, \
        {"codec_decompress", 3, nif_codec_decompress, 0}

#define DECLARE_NIF(name) ERL_NIF_TERM name(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
DECLARE_NIF(nif_arena_set_new);
DECLARE_NIF(nif_arena_set_close);
DECLARE_NIF(nif_arena_set_stats);
DECLARE_NIF(nif_arena_set_trim);
DECLARE_NIF(nif_arena_grow);
DECLARE_NIF(nif_arena_info);
DECLARE_NIF(nif_slice_alloc);
DECLARE_NIF(nif_slice_info);
DECLARE_NIF(nif_slice_write_frame);
DECLARE_NIF(nif_slice_read);
DECLARE_NIF(nif_slice_write);
DECLARE_NIF(nif_slice_release);
DECLARE_NIF(nif_slice_lend);
DECLARE_NIF(nif_slice_return);
DECLARE_NIF(nif_slice_hold);
DECLARE_NIF(nif_slice_unhold);
DECLARE_NIF(nif_slice_binary);
DECLARE_NIF(nif_lease_table_new);
DECLARE_NIF(nif_lease_table_info);
DECLARE_NIF(nif_lease_table_word);
DECLARE_NIF(nif_peer_open);
DECLARE_NIF(nif_peer_info);
DECLARE_NIF(nif_peer_close);
DECLARE_NIF(nif_peer_lease);
DECLARE_NIF(nif_peer_lease_read);
DECLARE_NIF(nif_peer_lease_binary);
DECLARE_NIF(nif_peer_frame_of);
DECLARE_NIF(nif_peer_lease_release);
DECLARE_NIF(nif_fd_count);
DECLARE_NIF(nif_lane_new);
DECLARE_NIF(nif_lane_info);
DECLARE_NIF(nif_lane_layout);
DECLARE_NIF(nif_lane_send);
DECLARE_NIF(nif_lane_wait);
DECLARE_NIF(nif_lane_take);
DECLARE_NIF(nif_codec_compress);
DECLARE_NIF(nif_codec_decompress);

#endif
