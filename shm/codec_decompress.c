/*
 * codec_decompress.c — decompression of a payload in one of the registry's
 * codecs, for a peer that is not trusted (see codecs.c for what is checked
 * before anything is allocated).
 */
#include "codecs.h"

#include <limits.h>
#include <lz4frame.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

/* ------------------------------------------------------------------------ */
/* Decompression                                                            */
/* ------------------------------------------------------------------------ */

/* A ZSTD_BLOCKSIZE_MAX block per 3 input bytes, in 64 bits (input sizes are far below 2^40). */
static uint64_t zstd_max_decoded(size_t in_size)
{
    return ((uint64_t)in_size / 3u) * (uint64_t)ZSTD_BLOCKSIZE_MAX;
}

/*
 * The checks codec_decompress makes before allocating (see the top of the file).
 * Codec must be one of the three atoms and Data a binary (badarg); DecodedLength
 * an integer: negative or not one is badarg, above 2^32 too_large. A header the
 * codec cannot read, a skippable or second frame, or a length the input cannot
 * expand to is bad_compressed_data; a declared size other than DecodedLength is
 * size_mismatch.
 */
static int get_decompress_args(ErlNifEnv *env, const ERL_NIF_TERM argv[], codec_t *codec,
                               ErlNifBinary *in, uint64_t *expected, ERL_NIF_TERM *err)
{
    if (!get_codec(argv[0], codec) || !enif_inspect_binary(env, argv[1], in)) {
        *err = error_tuple(env, ATOM_BADARG);
        return 0;
    }
    if (!get_output_size(env, argv[2], MAX_DECODED, expected, err))
        return 0;
    *err = error_tuple(env, ATOM_BAD_COMPRESSED_DATA_CODEC);
    switch (*codec) {
    case CODEC_LZ4:
        /* The header is read by the decompressor, with the frame (lz4_decompress). */
        return *expected <= (uint64_t)in->size * LZ4_MAX_RATIO;
    case CODEC_ZSTD: {
        unsigned long long declared;
        uint32_t magic;
        if (in->size < 4)
            return 0;
        memcpy(&magic, in->data, 4);
        if (magic != ZSTD_MAGICNUMBER) /* a skippable frame, or not zstd at all */
            return 0;
        declared = ZSTD_getFrameContentSize(in->data, in->size);
        if (declared == ZSTD_CONTENTSIZE_ERROR ||
            ZSTD_findFrameCompressedSize(in->data, in->size) != in->size)
            return 0;
        if (declared != ZSTD_CONTENTSIZE_UNKNOWN && (uint64_t)declared != *expected) {
            *err = error_tuple(env, ATOM_SIZE_MISMATCH);
            return 0;
        }
        return *expected <= zstd_max_decoded(in->size);
    }
    case CODEC_GZIP: {
        const unsigned char *t;
        uint32_t isize;
        if (in->size < GZIP_MIN_SIZE || in->data[0] != 0x1f || in->data[1] != 0x8b ||
            in->data[2] != Z_DEFLATED)
            return 0;
        t = in->data + in->size - 4; /* the ISIZE trailer, now that there is one */
        isize = (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 | (uint32_t)t[3] << 24;
        if (isize != (uint32_t)*expected) {
            *err = error_tuple(env, ATOM_SIZE_MISMATCH);
            return 0;
        }
        return *expected <= (uint64_t)in->size * DEFLATE_MAX_RATIO;
    }
    }
    return 0;
}

/*
 * One LZ4 frame and nothing after it. The frame's header is read first, before
 * the output is allocated: a frame that declares another content size is
 * size_mismatch. Returns 1 when the frame decoded to exactly out->size bytes;
 * otherwise releases *out (when allocated) and sets *err.
 */
static int lz4_decompress(ErlNifEnv *env, const ErlNifBinary *in, uint64_t expected,
                          ErlNifBinary *out, ERL_NIF_TERM *err)
{
    LZ4F_dctx *dctx;
    LZ4F_frameInfo_t info;
    LZ4F_decompressOptions_t opts;
    size_t in_pos, out_pos = 0, hint, src_len, dst_len;
    if (LZ4F_isError(LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION))) {
        *err = error_tuple(env, ATOM_ENOMEM);
        return 0;
    }
    in_pos = in->size;
    hint = LZ4F_getFrameInfo(dctx, &info, in->data, &in_pos);
    if (LZ4F_isError(hint) || info.frameType != LZ4F_frame) {
        LZ4F_freeDecompressionContext(dctx);
        *err = error_tuple(env, ATOM_BAD_COMPRESSED_DATA_CODEC);
        return 0;
    }
    /* contentSize 0: not declared (an empty frame does not declare it). */
    if (info.contentSize != 0 && (uint64_t)info.contentSize != expected) {
        LZ4F_freeDecompressionContext(dctx);
        *err = error_tuple(env, ATOM_SIZE_MISMATCH);
        return 0;
    }
    if (!enif_alloc_binary((size_t)expected, out)) {
        LZ4F_freeDecompressionContext(dctx);
        *err = error_tuple(env, ATOM_ENOMEM);
        return 0;
    }
    memset(&opts, 0, sizeof opts);
    opts.stableDst = 1; /* out never moves: no copy of the last 64 KiB between calls */
    /* hint 0 is the end of the frame (its checksum checked). A call that neither
     * consumes nor writes has no room left in out: the frame is longer than expected. */
    hint = 1;
    while (hint != 0 && in_pos < in->size) {
        src_len = in->size - in_pos;
        dst_len = out->size - out_pos;
        hint = LZ4F_decompress(dctx, dst_len == 0 ? NULL : out->data + out_pos, &dst_len,
                               in->data + in_pos, &src_len, &opts);
        if (LZ4F_isError(hint) || (src_len == 0 && dst_len == 0)) {
            DBG("lz4 decompress: %s\n", LZ4F_isError(hint) ? LZ4F_getErrorName(hint) : "no room");
            hint = 1;
            break;
        }
        in_pos += src_len;
        out_pos += dst_len;
    }
    LZ4F_freeDecompressionContext(dctx);
    if (hint != 0 || in_pos != in->size || (uint64_t)out_pos != expected) {
        enif_release_binary(out);
        *err = error_tuple(env, ATOM_BAD_COMPRESSED_DATA_CODEC);
        return 0;
    }
    return 1;
}

/* One zstd frame that covers the whole input (checked in get_decompress_args). */
static int zstd_decompress(ErlNifEnv *env, const ErlNifBinary *in, uint64_t expected,
                           ErlNifBinary *out, ERL_NIF_TERM *err)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    size_t n;
    if (dctx == NULL || !enif_alloc_binary((size_t)expected, out)) {
        ZSTD_freeDCtx(dctx); /* accepts NULL */
        *err = error_tuple(env, ATOM_ENOMEM);
        return 0;
    }
    /* The output buffer is exactly expected bytes: zstd stops (dstSize_tooSmall)
     * rather than write past it, whatever the frame says. */
    n = ZSTD_decompressDCtx(dctx, out->data, out->size, in->data, in->size);
    ZSTD_freeDCtx(dctx);
    if (ZSTD_isError(n) || (uint64_t)n != expected) {
        DBG("zstd decompress: %s\n", ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short output");
        enif_release_binary(out);
        *err = error_tuple(env, ATOM_BAD_COMPRESSED_DATA_CODEC);
        return 0;
    }
    return 1;
}

/* One gzip member and nothing after it; zlib checks the CRC32 and ISIZE. Input
 * and output go to zlib in pieces of at most UINT_MAX bytes. */
static int gzip_decompress(ErlNifEnv *env, const ErlNifBinary *in, uint64_t expected,
                           ErlNifBinary *out, ERL_NIF_TERM *err)
{
    z_stream zs;
    size_t in_pos = 0, out_pos = 0;
    int ret;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, GZIP_WINDOW_BITS) != Z_OK) {
        *err = error_tuple(env, ATOM_ENOMEM);
        return 0;
    }
    if (!enif_alloc_binary((size_t)expected, out)) {
        inflateEnd(&zs);
        *err = error_tuple(env, ATOM_ENOMEM);
        return 0;
    }
    do {
        size_t in_len = min_size(in->size - in_pos, UINT_MAX);
        size_t out_len = min_size(out->size - out_pos, UINT_MAX);
        zs.next_in = in->data + in_pos;
        zs.avail_in = (uInt)in_len;
        zs.next_out = out->data + out_pos;
        zs.avail_out = (uInt)out_len;
        ret = inflate(&zs, Z_NO_FLUSH);
        in_pos += in_len - zs.avail_in;
        out_pos += out_len - zs.avail_out;
        /* Z_BUF_ERROR: out of input (truncated) or out of room (too long). */
    } while (ret == Z_OK);
    inflateEnd(&zs);
    if (ret != Z_STREAM_END || in_pos != in->size || (uint64_t)out_pos != expected) {
        DBG("gzip decompress: %d\n", ret);
        enif_release_binary(out);
        *err = error_tuple(env, ret == Z_MEM_ERROR ? ATOM_ENOMEM : ATOM_BAD_COMPRESSED_DATA_CODEC);
        return 0;
    }
    return 1;
}

static ERL_NIF_TERM codec_decompress_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary in, out;
    codec_t codec;
    uint64_t expected;
    ERL_NIF_TERM err;
    int ok = 0;
    (void)argc;
    if (!get_decompress_args(env, argv, &codec, &in, &expected, &err))
        return err;
    switch (codec) {
    case CODEC_LZ4:
        ok = lz4_decompress(env, &in, expected, &out, &err);
        break;
    case CODEC_ZSTD:
        ok = zstd_decompress(env, &in, expected, &out, &err);
        break;
    case CODEC_GZIP:
        ok = gzip_decompress(env, &in, expected, &out, &err);
        break;
    }
    return ok ? ok_tuple(env, enif_make_binary(env, &out)) : err;
}

/*
 * codec_decompress(Codec, Data, DecodedLength) -> {ok, Binary} | {error, Reason}
 * Decompresses one frame of Codec that is the whole of Data into a new binary of
 * exactly DecodedLength bytes. Reasons: badarg (unknown codec, not a binary, not
 * an integer or negative), too_large (above 2^32), size_mismatch (the data
 * declares another length; checked before allocating), bad_compressed_data
 * (corrupt, truncated, trailing bytes, output of another length), enomem.
 */
ERL_NIF_TERM nif_codec_decompress(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary in;
    codec_t codec;
    uint64_t expected;
    ERL_NIF_TERM err;
    if (!get_decompress_args(env, argv, &codec, &in, &expected, &err))
        return err;
    if (in.size > DIRTY_THRESHOLD || expected > DIRTY_THRESHOLD)
        return enif_schedule_nif(env, "codec_decompress_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 codec_decompress_impl, argc, argv);
    return codec_decompress_impl(env, argc, argv);
}
