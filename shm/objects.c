/*
 * objects.c — transport v2 shared objects (protocol/SPEC.md §1): a sealed memfd
 * with its header written, the per-process counters for object ids and slice
 * generations, fd_count, and arena_load, which opens the resource types and
 * makes the atoms of every object file (see objects.h for the list).
 */
#define _GNU_SOURCE
#include "objects.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

/* One counter per OS process for object ids and one for slice generations (spec §1.1, §3). */
static uint32_t next_object_id = 0;
static uint64_t next_generation = 0;

uint32_t new_object_id(void)
{
    return __atomic_add_fetch(&next_object_id, 1u, __ATOMIC_SEQ_CST);
}

uint64_t new_generation(void)
{
    return __atomic_add_fetch(&next_generation, 1u, __ATOMIC_SEQ_CST);
}

static uint64_t random_u64(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
        v = ((uint64_t)getpid() << 32) ^ (uint64_t)enif_monotonic_time(ERL_NIF_NSEC);
    return v;
}

/*
 * A new sealed memfd of `size` bytes with its header written, mapped read-write.
 * Returns 0 or an errno value.
 */
int object_create(uint64_t size, int kind, uint32_t entries, uint32_t id, int *fd_out,
                  uint8_t **addr_out, uint64_t *nonce_out)
{
    int fd, rc, saved;
    void *addr;
    uint8_t *h;
    uint64_t nonce = random_u64();

    /* a lane is named apart: it is no arena, and /proc/<pid>/maps tells them apart */
    fd = memfd_create(kind == KIND_LANE ? "beambridge-lane" : "beambridge",
                      MFD_CLOEXEC | MFD_ALLOW_SEALING);
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

int object_new(table_t *t, uint64_t size, int kind, uint32_t entries)
{
    int rc;
    memset(t, 0, sizeof *t);
    t->size = size;
    t->entries = entries;
    t->id = new_object_id();
    rc = object_create(size, kind, entries, t->id, &t->fd, &t->addr, &t->nonce);
    if (rc != 0) {
        t->fd = -1;
        t->addr = NULL;
    }
    return rc;
}

void object_close(table_t *t)
{
    if (t->addr != NULL)
        munmap(t->addr, (size_t)t->size);
    if (t->fd >= 0)
        close(t->fd);
    t->addr = NULL;
    t->fd = -1;
}

int arena_load(ErlNifEnv *env, void **priv)
{
    ErlNifResourceFlags flags = ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER;
    int ok = arena_set_load(env, flags);
    ok &= slices_load(env, flags);
    ok &= lease_table_load(env, flags);
    ok &= peer_load(env, flags, priv);
    ok &= lane_load(env, flags);
    return ok;
}
