/*
 * codecs.c — payload compression (protocol/registry.json "codecs"): an LZ4 frame
 * (liblz4), a Zstandard frame (libzstd) or a gzip member (zlib), in one binary
 * and out into another; decompression is codec_decompress.c. Bridge.Codec is
 * the Elixir side.
 *
 * What a peer sends is not trusted. Decompression gets the length the header
 * declares (decoded_length, at most 2^32) and, before allocating anything:
 *   - reads what the compressed data declares about itself (the LZ4 and zstd
 *     content size, the gzip ISIZE) and refuses a disagreement (size_mismatch);
 *   - refuses a length the codec could not reach from that many input bytes
 *     (its largest possible expansion), so a small payload cannot make us
 *     allocate gigabytes for a length that lies.
 * It then decompresses into exactly decoded_length bytes, never past them, and
 * accepts the result only when the output is exactly that long, the stream
 * ended properly (checksums included) and every input byte was consumed.
 * Anything else is bad_compressed_data. Compression and decompression above
 * DIRTY_THRESHOLD run on dirty CPU schedulers.
 */
#include "codecs.h"

#include <limits.h>
#include <lz4frame.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

static ERL_NIF_TERM ATOM_LZ4_FRAME, ATOM_ZSTD, ATOM_GZIP;
ERL_NIF_TERM ATOM_BAD_COMPRESSED_DATA_CODEC;

void codecs_load(ErlNifEnv *env)
{
    ATOM_LZ4_FRAME = enif_make_atom(env, "lz4_frame");
    ATOM_ZSTD = enif_make_atom(env, "zstd");
    ATOM_GZIP = enif_make_atom(env, "gzip");
    ATOM_BAD_COMPRESSED_DATA_CODEC = enif_make_atom(env, "bad_compressed_data");
}

int get_codec(ERL_NIF_TERM t, codec_t *out)
{
    if (enif_is_identical(t, ATOM_LZ4_FRAME))
        *out = CODEC_LZ4;
    else if (enif_is_identical(t, ATOM_ZSTD))
        *out = CODEC_ZSTD;
    else if (enif_is_identical(t, ATOM_GZIP))
        *out = CODEC_GZIP;
    else
        return 0;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Compression                                                              */
/* ------------------------------------------------------------------------ */

/*
 * Checks codec_compress's arguments: Codec one of the three atoms, Data a
 * binary, Level an integer the codec takes (badarg otherwise). Level 0 is each
 * codec's fast default: LZ4's fast mode, zstd 1, gzip 1.
 */
static int get_compress_args(ErlNifEnv *env, const ERL_NIF_TERM argv[], codec_t *codec,
                             ErlNifBinary *in, int *level)
{
    if (!get_codec(argv[0], codec) || !enif_inspect_binary(env, argv[1], in) ||
        !enif_get_int(env, argv[2], level))
        return 0;
    switch (*codec) {
    case CODEC_LZ4:
        return *level >= 0 && *level <= LZ4F_compressionLevel_max();
    case CODEC_ZSTD:
        if (*level == 0)
            *level = 1;
        return *level >= ZSTD_minCLevel() && *level <= ZSTD_maxCLevel();
    case CODEC_GZIP:
        if (*level == 0)
            *level = 1;
        return *level >= 1 && *level <= 9;
    }
    return 0;
}

/* The smallest LZ4 block size that holds the whole input: the reader allocates
 * buffers of the block size the frame declares, however small the frame. */
static LZ4F_blockSizeID_t lz4_block_size(size_t n)
{
    if (n <= 64u * 1024u)
        return LZ4F_max64KB;
    if (n <= 256u * 1024u)
        return LZ4F_max256KB;
    if (n <= 1024u * 1024u)
        return LZ4F_max1MB;
    return LZ4F_max4MB;
}

/* One LZ4 frame: independent blocks, the content size declared, the content
 * checksum on (a flipped bit anywhere is caught). Returns the bytes written or 0. */
static size_t lz4_compress(const ErlNifBinary *in, ErlNifBinary *out, int level, int *nomem)
{
    LZ4F_preferences_t prefs;
    LZ4F_cctx *cctx;
    size_t pos = 0, n;
    memset(&prefs, 0, sizeof prefs);
    prefs.frameInfo.blockSizeID = lz4_block_size(in->size);
    prefs.frameInfo.blockMode = LZ4F_blockIndependent;
    prefs.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
    prefs.frameInfo.contentSize = (unsigned long long)in->size;
    prefs.compressionLevel = level;
    prefs.autoFlush = 1; /* no staging buffer: blocks go straight to the output */
    if (!enif_alloc_binary(LZ4F_compressFrameBound(in->size, &prefs), out)) {
        *nomem = 1;
        return 0;
    }
    if (LZ4F_isError(LZ4F_createCompressionContext(&cctx, LZ4F_VERSION))) {
        *nomem = 1;
        enif_release_binary(out);
        return 0;
    }
    n = LZ4F_compressBegin(cctx, out->data, out->size, &prefs);
    if (!LZ4F_isError(n)) {
        pos = n;
        n = in->size == 0 ? 0
                          : LZ4F_compressUpdate(cctx, out->data + pos, out->size - pos, in->data,
                                                in->size, NULL);
    }
    if (!LZ4F_isError(n)) {
        pos += n;
        n = LZ4F_compressEnd(cctx, out->data + pos, out->size - pos, NULL);
    }
    LZ4F_freeCompressionContext(cctx);
    if (LZ4F_isError(n)) {
        DBG("lz4 compress: %s\n", LZ4F_getErrorName(n));
        enif_release_binary(out);
        return 0;
    }
    return pos + n;
}

/* One zstd frame with its content size and checksum. */
static size_t zstd_compress(const ErlNifBinary *in, ErlNifBinary *out, int level, int *nomem)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    size_t n;
    if (cctx == NULL) {
        *nomem = 1;
        return 0;
    }
    if (!enif_alloc_binary(ZSTD_compressBound(in->size), out)) {
        ZSTD_freeCCtx(cctx);
        *nomem = 1;
        return 0;
    }
    n = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
    if (!ZSTD_isError(n))
        n = ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
    if (!ZSTD_isError(n))
        n = ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
    if (!ZSTD_isError(n))
        n = ZSTD_compress2(cctx, out->data, out->size, in->data, in->size);
    ZSTD_freeCCtx(cctx);
    if (ZSTD_isError(n)) {
        DBG("zstd compress: %s\n", ZSTD_getErrorName(n));
        enif_release_binary(out);
        return 0;
    }
    return n;
}

/* One gzip member (no name, no time). zlib counts in 32-bit units: the input
 * and the output are handed over in pieces of at most UINT_MAX bytes. */
static size_t gzip_compress(const ErlNifBinary *in, ErlNifBinary *out, int level, int *nomem)
{
    z_stream zs;
    size_t in_pos = 0, out_pos = 0;
    int ret;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, level, Z_DEFLATED, GZIP_WINDOW_BITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        *nomem = 1;
        return 0;
    }
    if (!enif_alloc_binary((size_t)deflateBound(&zs, (uLong)in->size), out)) {
        deflateEnd(&zs);
        *nomem = 1;
        return 0;
    }
    do {
        size_t in_len = min_size(in->size - in_pos, UINT_MAX);
        size_t out_len = min_size(out->size - out_pos, UINT_MAX);
        zs.next_in = in->data + in_pos;
        zs.avail_in = (uInt)in_len;
        zs.next_out = out->data + out_pos;
        zs.avail_out = (uInt)out_len;
        ret = deflate(&zs, in_pos + in_len == in->size ? Z_FINISH : Z_NO_FLUSH);
        in_pos += in_len - zs.avail_in;
        out_pos += out_len - zs.avail_out;
        /* Z_BUF_ERROR: no progress possible, which deflateBound rules out. */
    } while (ret == Z_OK);
    deflateEnd(&zs);
    if (ret != Z_STREAM_END) {
        DBG("gzip compress: %d\n", ret);
        enif_release_binary(out);
        return 0;
    }
    return out_pos;
}

static ERL_NIF_TERM codec_compress_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary in, out;
    codec_t codec;
    int level, nomem = 0;
    size_t n = 0;
    (void)argc;
    if (!get_compress_args(env, argv, &codec, &in, &level))
        return error_tuple(env, ATOM_BADARG);
    switch (codec) {
    case CODEC_LZ4:
        n = lz4_compress(&in, &out, level, &nomem);
        break;
    case CODEC_ZSTD:
        n = zstd_compress(&in, &out, level, &nomem);
        break;
    case CODEC_GZIP:
        n = gzip_compress(&in, &out, level, &nomem);
        break;
    }
    if (nomem)
        return error_tuple(env, ATOM_ENOMEM);
    /* Every codec writes at least its header: 0 is a failure (out is released). */
    if (n == 0)
        return error_tuple(env, ATOM_BADARG);
    if (n < out.size && !enif_realloc_binary(&out, n)) {
        enif_release_binary(&out);
        return error_tuple(env, ATOM_ENOMEM);
    }
    return ok_tuple(env, enif_make_binary(env, &out));
}

/*
 * codec_compress(Codec, Data, Level) -> {ok, Binary} | {error, Reason}
 * Compresses Data (a binary) as one frame of Codec (lz4_frame, zstd or gzip)
 * into a binary of exactly the compressed size. Level 0 is the codec's fast
 * default; otherwise lz4_frame takes 1..12, zstd its own range (negative: faster),
 * gzip 1..9. Reasons: badarg (unknown codec, not a binary, a level out of
 * range), enomem.
 */
ERL_NIF_TERM nif_codec_compress(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary in;
    codec_t codec;
    int level;
    if (!get_compress_args(env, argv, &codec, &in, &level))
        return error_tuple(env, ATOM_BADARG);
    if (in.size > DIRTY_THRESHOLD)
        return enif_schedule_nif(env, "codec_compress_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 codec_compress_impl, argc, argv);
    return codec_compress_impl(env, argc, argv);
}
