defmodule Bridge.Arrow.Compression do
  @moduledoc false
  # Body compression of record batches (Message.fbs BodyCompression, method
  # BUFFER): each non-empty buffer is an 8-byte little-endian signed
  # uncompressed length followed by the compressed bytes, or by the bytes as
  # they are when that length is -1. LZ4_FRAME is decoded in Elixir
  # (Bridge.Arrow.LZ4); ZSTD is refused with :unsupported_compression.

  import Bitwise
  import Bridge.Arrow.Errors, only: [fail: 2]

  alias Bridge.Arrow.LZ4

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

      true ->
        fail(:unsupported_compression, field: :compression_codec, value: codec)
    end
  end

  def decompress_buffer(_codec, buf, _opts) do
    fail(:truncated, field: :compressed_buffer, value: byte_size(buf), limit: 8)
  end
end
