defmodule Bridge.Arrow.FlatBuffer.Reader do
  @moduledoc false
  # Reads FlatBuffers tables (https://flatbuffers.dev, "binary format") with
  # every offset checked against the buffer before it is followed.
  #
  # A table is {buf, pos, vtable_pos, vtable_size, table_size}. Fields are read
  # by vtable slot (the field's index in the .fbs declaration; a union takes two
  # slots, its type byte first). Any bad offset throws :bad_flatbuffer naming the
  # field, so a caller only sees a typed error. Offsets are unsigned 32-bit or
  # signed 32-bit, so no sum here can wrap: Elixir integers are unbounded and
  # every sum is compared with byte_size(buf) before use.

  import Bridge.Arrow.Errors, only: [fail: 2]

  @type t ::
          {binary(), non_neg_integer(), non_neg_integer(), non_neg_integer(), non_neg_integer()}

  @doc "The root table of a flatbuffer."
  @spec root(binary(), atom()) :: t()
  def root(buf, field) do
    case buf do
      <<off::little-32, _::binary>> -> table_at(buf, off, field)
      _ -> fail(:bad_flatbuffer, field: field, value: byte_size(buf), limit: 4)
    end
  end

  defp table_at(buf, pos, field) do
    size = byte_size(buf)
    if pos + 4 > size, do: bad(field, pos, size)
    <<_::binary-size(pos), soff::little-signed-32, _::binary>> = buf
    vt = pos - soff
    if vt < 0 or vt + 4 > size, do: bad(field, vt, size)
    <<_::binary-size(vt), vt_size::little-16, t_size::little-16, _::binary>> = buf

    if vt_size < 4 or rem(vt_size, 2) != 0 or vt + vt_size > size or t_size < 4 or
         pos + t_size > size,
       do: bad(field, vt, size)

    {buf, pos, vt, vt_size, t_size}
  end

  # The field offset within the table for a slot, or nil when absent.
  defp slot_offset({buf, _pos, vt, vt_size, t_size}, slot, width, field) do
    entry = 4 + 2 * slot

    if entry + 2 > vt_size do
      nil
    else
      <<_::binary-size(vt + entry), fo::little-16, _::binary>> = buf

      cond do
        fo == 0 -> nil
        fo < 4 or fo + width > t_size -> bad(field, fo, t_size)
        true -> fo
      end
    end
  end

  @doc "A scalar field: :bool, :u8, :i8, :i16, :i32 or :i64, or `default` when absent."
  @spec scalar(t(), non_neg_integer(), atom(), term(), atom()) :: term()
  def scalar({buf, pos, _, _, _} = t, slot, type, default, field) do
    width = width(type)

    case slot_offset(t, slot, width, field) do
      nil ->
        default

      fo ->
        <<_::binary-size(pos + fo), raw::binary-size(width), _::binary>> = buf
        decode_scalar(type, raw)
    end
  end

  defp width(:bool), do: 1
  defp width(:u8), do: 1
  defp width(:i8), do: 1
  defp width(:i16), do: 2
  defp width(:i32), do: 4
  defp width(:i64), do: 8

  defp decode_scalar(:bool, <<b>>), do: b != 0
  defp decode_scalar(:u8, <<b>>), do: b
  defp decode_scalar(:i8, <<b::signed>>), do: b
  defp decode_scalar(:i16, <<v::little-signed-16>>), do: v
  defp decode_scalar(:i32, <<v::little-signed-32>>), do: v
  defp decode_scalar(:i64, <<v::little-signed-64>>), do: v

  # Follows the uoffset stored in a slot; the absolute position of its target.
  defp follow({buf, pos, _, _, _} = t, slot, field) do
    case slot_offset(t, slot, 4, field) do
      nil ->
        nil

      fo ->
        at = pos + fo
        <<_::binary-size(at), off::little-32, _::binary>> = buf
        target = at + off
        if target + 4 > byte_size(buf), do: bad(field, target, byte_size(buf))
        target
    end
  end

  @doc "A sub-table field, or nil when absent."
  @spec table(t(), non_neg_integer(), atom()) :: t() | nil
  def table({buf, _, _, _, _} = t, slot, field) do
    case follow(t, slot, field) do
      nil -> nil
      target -> table_at(buf, target, field)
    end
  end

  @doc "A string field (its bytes, a sub-binary of the buffer), or nil when absent."
  @spec string(t(), non_neg_integer(), atom()) :: binary() | nil
  def string({buf, _, _, _, _} = t, slot, field) do
    case follow(t, slot, field) do
      nil ->
        nil

      target ->
        <<_::binary-size(target), len::little-32, _::binary>> = buf
        if target + 4 + len > byte_size(buf), do: bad(field, len, byte_size(buf) - target - 4)
        binary_part(buf, target + 4, len)
    end
  end

  @doc """
  A vector of structs or scalars of `elem_size` bytes: the raw element bytes
  (a sub-binary), or nil when absent.
  """
  @spec vector_bytes(t(), non_neg_integer(), pos_integer(), atom()) :: binary() | nil
  def vector_bytes({buf, _, _, _, _} = t, slot, elem_size, field) do
    case follow(t, slot, field) do
      nil ->
        nil

      target ->
        <<_::binary-size(target), count::little-32, _::binary>> = buf
        bytes = count * elem_size
        if target + 4 + bytes > byte_size(buf), do: bad(field, count, byte_size(buf))
        binary_part(buf, target + 4, bytes)
    end
  end

  @doc "A vector of tables, or [] when absent."
  @spec tables(t(), non_neg_integer(), atom()) :: [t()]
  def tables({buf, _, _, _, _} = t, slot, field) do
    case follow(t, slot, field) do
      nil ->
        []

      target ->
        <<_::binary-size(target), count::little-32, _::binary>> = buf
        start = target + 4
        if start + 4 * count > byte_size(buf), do: bad(field, count, byte_size(buf))

        for i <- 0..(count - 1)//1 do
          at = start + 4 * i
          <<_::binary-size(at), off::little-32, _::binary>> = buf
          table_at(buf, at + off, field)
        end
    end
  end

  defp bad(field, value, limit) do
    fail(:bad_flatbuffer, field: field, value: value, limit: limit)
  end
end
