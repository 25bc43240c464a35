/*
 * codecs.h — what the two halves of the payload codecs share: codecs.c
 * (compression, and the atoms) and codec_decompress.c (decompression).
 */
#ifndef BEAMBRIDGE_CODECS_H
#define BEAMBRIDGE_CODECS_H

#include "nif_common.h"

#include <stddef.h>
#include <stdint.h>

/* codec_decompress never makes a binary larger than this (max_decoded_length's default). */
#define MAX_DECODED (((uint64_t)1) << 32)
/* The most bytes one input byte can expand to: an LZ4 sequence gives at most 255
 * (a length byte adds 255), deflate at most 1032 (258 bytes in 2 bits). A zstd
 * block is at least 3 bytes and decodes to at most ZSTD_BLOCKSIZE_MAX. */
#define LZ4_MAX_RATIO 255u
#define DEFLATE_MAX_RATIO 1032u
/* The gzip member we write: 10 bytes of header, 8 of trailer (CRC32, ISIZE). */
#define GZIP_MIN_SIZE 18u
#define GZIP_WINDOW_BITS (15 + 16)

typedef enum { CODEC_LZ4, CODEC_ZSTD, CODEC_GZIP } codec_t;

extern ERL_NIF_TERM ATOM_BAD_COMPRESSED_DATA_CODEC;

/* The codec an atom names (lz4_frame, zstd, gzip); 0 for any other term. */
int get_codec(ERL_NIF_TERM t, codec_t *out);

static inline size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

#endif
