/*
 * objects.h — what the transport v2 object files share (protocol/SPEC.md): the
 * object layout constants, the arena set, slice and lease table structs, and
 * the functions one file lends another. Internal to shm/: the NIF entry points
 * and arena_load are declared in nif_common.h.
 *
 *   objects.c      sealed memfds, object ids, slice generations; arena_load
 *   arena_set.c    arena sets and their allocator (grow, trim, stats)
 *   slices.c       slices: alloc, frames, holds, lending, zero-copy binaries
 *   lease_table.c  lease tables
 *   peer.c         peers' objects mapped read-only and leases on their slices
 *   lane.c         a worker's lane: calls and answers while both sides poll
 */
#ifndef BEAMBRIDGE_OBJECTS_H
#define BEAMBRIDGE_OBJECTS_H

#include "nif_common.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define OBJ_HEADER 64u
#define OBJ_MAGIC "BBAR"
#define OBJ_LAYOUT 1u
#define MAX_ARENAS 16
#define ALIGN 64u
#define PAGE 4096u
#define MIN_OBJECT PAGE
#define MAX_OBJECT (((uint64_t)1) << 40)
#define FRAME_HEADER 128u
#define MAX_METADATA (1u << 20)  /* SPEC §5.1 */
#define MAX_PROVENANCE 65536u    /* SPEC §5.4 */

enum { KIND_ARENA = 0, KIND_SEALED = 1, KIND_LEASE_TABLE = 2, KIND_LANE = 3 };
enum { HELD_BY_CALLER = 1, HELD_BY_PEER = 2 };

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
    ErlNifMutex *grow_lock; /* one arena_grow at a time (held across object_create) */
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
    int fd;
    uint8_t *addr;
    uint64_t size;
    uint32_t id, entries;
    uint64_t nonce;
} table_t;

static inline void put_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static inline uint64_t round_up(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

/* The length of a slice that holds a frame of frame_len bytes. */
static inline uint64_t slice_length_for(uint64_t frame_len)
{
    return round_up(frame_len < FRAME_HEADER ? FRAME_HEADER : frame_len, ALIGN);
}

/* objects.c */
uint32_t new_object_id(void);
uint64_t new_generation(void);
int object_create(uint64_t size, int kind, uint32_t entries, uint32_t id, int *fd_out,
                  uint8_t **addr_out, uint64_t *nonce_out);
/* A new object of this side in `t` (a lease table, a lane): 0, or an errno value with
 * nothing made (t->fd -1, t->addr NULL). object_close undoes it. */
int object_new(table_t *t, uint64_t size, int kind, uint32_t entries);
void object_close(table_t *t);

/* arena_set.c */
int arena_set_load(ErlNifEnv *env, ErlNifResourceFlags flags);
int get_set(ErlNifEnv *env, ERL_NIF_TERM t, aset_t **s);
int extent_take(arena_t *a, uint64_t len, uint64_t *off);
void slice_free(slice_t *sl);

/* slices.c */
int slices_load(ErlNifEnv *env, ErlNifResourceFlags flags);

/* lease_table.c */
int lease_table_load(ErlNifEnv *env, ErlNifResourceFlags flags);
int get_table(ErlNifEnv *env, ERL_NIF_TERM t, table_t **table);

/* peer.c */
int peer_load(ErlNifEnv *env, ErlNifResourceFlags flags, void **shared);

/* lane.c */
int lane_load(ErlNifEnv *env, ErlNifResourceFlags flags);

#endif
