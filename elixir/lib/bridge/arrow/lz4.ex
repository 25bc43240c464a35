defmodule Bridge.Arrow.LZ4 do
  @moduledoc false
  # Decompression of one LZ4 frame (the LZ4 Frame Format and LZ4 Block Format
  # descriptions, lz4/doc), for Arrow bodies compressed with LZ4_FRAME. Pure
  # Elixir: no NIF. The output never exceeds `max` bytes, so a small hostile
  # frame cannot allocate much; every literal run and match is checked against
  # the input and the output before it is copied. The frame descriptor's
  # checksum byte is verified; block and content checksums are skipped (the
  # frame's own payload checksum, SPEC §5.1, covers the bytes). Dictionaries
  # (DictID) are refused.

  import Bitwise
  import Bridge.Arrow.Errors, only: [fail: 2]

  @magic 0x184D2204

  @doc false
  @spec decompress(binary(), non_neg_integer()) :: binary()
  def decompress(frame, max) do
    case frame do
      <<@magic::little-32, flg, bd, rest::binary>> ->
        descriptor(flg, bd, rest, max)

      _ ->
        bad(:magic, byte_size(frame))
    end
  end

  defp descriptor(flg, bd, rest, max) do
    version = flg >>> 6
    block_checksum = (flg >>> 4 &&& 1) == 1
    content_size = (flg >>> 3 &&& 1) == 1
    content_checksum = (flg >>> 2 &&& 1) == 1
    dict_id = (flg &&& 1) == 1

    if version != 1 or (flg &&& 0b10) != 0 or (bd &&& 0b10001111) != 0 or dict_id,
      do: bad(:frame_descriptor, {flg, bd})

    extra = if content_size, do: 8, else: 0

    case rest do
      <<fields::binary-size(extra), hc, blocks::binary>> ->
        if (xxh32(<<flg, bd>> <> fields) >>> 8 &&& 0xFF) != hc,
          do: bad(:descriptor_checksum, hc)

        out = blocks(blocks, block_checksum, max, <<>>)

        case fields do
          <<size::little-64>> when size != byte_size(out) -> bad(:content_size, size)
          _ -> :ok
        end

        _ = content_checksum
        out

      _ ->
        bad(:frame_descriptor, byte_size(rest))
    end
  end

  defp blocks(<<0::little-32, _content_checksum::binary>>, _bc, _max, out), do: out

  defp blocks(<<word::little-32, rest::binary>>, bc, max, out) do
    raw = word >>> 31
    size = word &&& 0x7FFFFFFF
    check = if bc, do: 4, else: 0

    case rest do
      <<data::binary-size(size), _::binary-size(check), more::binary>> ->
        out =
          if raw == 1 do
            if byte_size(out) + size > max, do: too_large(max)
            out <> data
          else
            sequences(data, out, max)
          end

        blocks(more, bc, max, out)

      _ ->
        bad(:block_size, size)
    end
  end

  defp blocks(rest, _bc, _max, _out), do: bad(:end_mark, byte_size(rest))

  # One block of sequences: token, literals, then (except after the last
  # literals) a 16-bit offset and a match.
  defp sequences(<<>>, out, _max), do: out

  defp sequences(<<token, rest::binary>>, out, max) do
    {lit_len, rest} = run_length(token >>> 4, rest)

    case rest do
      <<literals::binary-size(lit_len), rest::binary>> ->
        out = append(out, literals, max)

        case rest do
          <<>> ->
            out

          <<offset::little-16, rest::binary>> ->
            {match_len, rest} = run_length(token &&& 0x0F, rest)
            out = copy_match(out, offset, match_len + 4, max)
            sequences(rest, out, max)

          _ ->
            bad(:match_offset, byte_size(rest))
        end

      _ ->
        bad(:literal_length, lit_len)
    end
  end

  defp run_length(15, rest), do: more_length(rest, 15)
  defp run_length(n, rest), do: {n, rest}

  defp more_length(<<255, rest::binary>>, acc), do: more_length(rest, acc + 255)
  defp more_length(<<b, rest::binary>>, acc), do: {acc + b, rest}
  defp more_length(<<>>, _acc), do: bad(:length, :truncated)

  defp append(out, bytes, max) do
    if byte_size(out) + byte_size(bytes) > max, do: too_large(max)
    out <> bytes
  end

  defp copy_match(out, offset, len, max) do
    size = byte_size(out)
    if offset == 0 or offset > size, do: bad(:match_offset, offset)
    if size + len > max, do: too_large(max)

    if offset >= len do
      out <> binary_part(out, size - offset, len)
    else
      # An overlapping match repeats the last `offset` bytes.
      pattern = binary_part(out, size - offset, offset)
      out <> binary_part(:binary.copy(pattern, div(len, offset) + 1), 0, len)
    end
  end

  defp bad(what, value) do
    fail(:bad_compressed_data, field: :lz4_frame, value: {what, value})
  end

  defp too_large(max) do
    fail(:bad_compressed_data, field: :lz4_frame, value: :longer_than_declared, limit: max)
  end

  # XXH32 with seed 0 of fewer than 16 bytes (a frame descriptor is at most 14).
  @p1 0x9E3779B1
  @p2 0x85EBCA77
  @p3 0xC2B2AE3D
  @p4 0x27D4EB2F
  @p5 0x165667B1
  @mask 0xFFFFFFFF

  @doc false
  @spec xxh32(binary()) :: non_neg_integer()
  def xxh32(bytes) when byte_size(bytes) < 16 do
    h = @p5 + byte_size(bytes) &&& @mask
    h = words(bytes, h)
    h = bxor(h, h >>> 15) * @p2 &&& @mask
    h = bxor(h, h >>> 13) * @p3 &&& @mask
    bxor(h, h >>> 16)
  end

  defp words(<<lane::little-32, rest::binary>>, h),
    do: words(rest, rotl(h + lane * @p3 &&& @mask, 17) * @p4 &&& @mask)

  defp words(<<b, rest::binary>>, h),
    do: words(rest, rotl(h + b * @p5 &&& @mask, 11) * @p1 &&& @mask)

  defp words(<<>>, h), do: h

  defp rotl(x, r), do: (x <<< r ||| x >>> (32 - r)) &&& @mask
end
