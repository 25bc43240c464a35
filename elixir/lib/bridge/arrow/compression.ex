defmodule Bridge.Arrow.Compression do
  @moduledoc false
  # Body compression of record batches (Message.fbs BodyCompression, method
  # BUFFER): each non-empty buffer is an 8-byte little-endian signed
  # uncompressed length followed by the compressed bytes, or by the bytes as
  # they are when that length is -1. LZ4_FRAME is decoded in Elixir
  # (Bridge.Arrow.LZ4); ZSTD by libzstd through Bridge.NIF.zstd_decompress/2,
  # into a binary of exactly the declared length (a frame that declares another
  # content size is refused before anything is allocated).

  import Bitwise
  import Bridge.Arrow.Errors, only: [fail: 2]

  alias Bridge.Arrow.LZ4
  alias Bridge.NIF

  @default_max 1 <<< 32

  @doc false
  @spec decompress_buffer(:lz4_frame | :zstd, binary(), keyword()) :: binary()
  def decompress_buffer(_codec, <<>>, _opts), do: <<>>

  def decompress_buffer(_codec, <<-1::little-signed-64, raw::binary>>, _opts), do: raw

  def decompress_buffer(codec, <<length::little-signed-64, _compressed::binary>> = buf, opts) do
    max = Keyword.get(opts, :max_decompressed, @default_max)

    cond do
      length < 0 ->
        fail(:bad_length, field: :uncompressed_length, value: length, limit: ">= 0")

      length > max ->
        fail(:decompressed_too_large,
          field: :uncompressed_length,
          value: length,
          limit: max,
          hint: "raise the :max_decompressed option if this size is expected"
        )

      codec == :lz4_frame ->
        <<_::binary-size(8), frame::binary>> = buf
        out = LZ4.decompress(frame, length)

        if byte_size(out) != length,
          do: fail(:bad_length, field: :uncompressed_length, value: length, limit: byte_size(out))

        out

      codec == :zstd ->
        <<_::binary-size(8), frame::binary>> = buf
        zstd(frame, length)

      true ->
        fail(:unsupported_compression, field: :compression_codec, value: codec)
    end
  end

  def decompress_buffer(_codec, buf, _opts) do
    fail(:truncated, field: :compressed_buffer, value: byte_size(buf), limit: 8)
  end

  defp zstd(frame, length) do
    case NIF.zstd_decompress(frame, length) do
      {:ok, out} ->
        out

      {:error, :too_large} ->
        fail(:decompressed_too_large,
          field: :uncompressed_length,
          value: length,
          limit: 1 <<< 32,
          hint: "zstd buffers are decompressed up to 2^32 bytes"
        )

      {:error, :size_mismatch} ->
        fail(:bad_compressed_data,
          field: :zstd_frame,
          value: :declared_size_mismatch,
          limit: length
        )

      {:error, reason} ->
        fail(:bad_compressed_data, field: :zstd_frame, value: reason, limit: length)
    end
  end
end
