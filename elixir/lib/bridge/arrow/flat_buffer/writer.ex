defmodule Bridge.Arrow.FlatBuffer.Writer do
  @moduledoc false
  # Builds a FlatBuffers buffer front to back: the root offset, then each table
  # with its vtable just before it, then the objects the table points at. Every
  # uoffset therefore points forward, as the format requires. Scalars are
  # aligned to their size and struct vectors to 8 bytes, absolutely within the
  # buffer, so a verifying reader (Arrow C++ runs the flatbuffers Verifier) accepts
  # the result; the buffer length is a multiple of 8.
  #
  # A table is a list of {slot, kind, value}:
  #   :bool | :u8 | :i16 | :i32 | :i64  an inline scalar
  #   :table                            a sub-table (its own field list)
  #   :string                           a binary
  #   :tables                           a vector of tables (a list of field lists)
  #   :structs                          {bytes, count}: a vector of 8-aligned structs

  import Bitwise

  @type field :: {non_neg_integer(), atom(), term()}

  @doc "The flatbuffer whose root table has these fields."
  @spec build([field()]) :: binary()
  def build(fields) do
    {io, table_pos, end_pos} = table(fields, 4)
    bin = IO.iodata_to_binary([<<table_pos::little-32>>, io])
    bin <> pad(end_pos)
  end

  defp align(pos, n), do: pos + n - 1 &&& bnot(n - 1)
  defp pad(pos), do: <<0::size((align(pos, 8) - pos) * 8)>>
  defp zeros(n), do: <<0::size(n * 8)>>

  defp width(:bool), do: 1
  defp width(:u8), do: 1
  defp width(:i16), do: 2
  defp width(:i32), do: 4
  defp width(:i64), do: 8
  defp width(_offset), do: 4

  # Emits a table starting at `pos` or later; {iodata, table position, end}.
  defp table(fields, pos) do
    fields = Enum.sort_by(fields, &elem(&1, 0))
    slots = if fields == [], do: 0, else: elem(List.last(fields), 0) + 1

    # Inline layout: the soffset at 0, then fields largest first, each aligned
    # to its width; the table itself starts 8-aligned so these are absolute.
    {layout, t_size} =
      fields
      |> Enum.sort_by(fn {slot, kind, _} -> {-width(kind), slot} end)
      |> Enum.map_reduce(4, fn {slot, kind, value}, at ->
        at = align(at, width(kind))
        {{slot, kind, value, at}, at + width(kind)}
      end)

    t_size = align(t_size, 4)
    vt_size = 4 + 2 * slots
    vt_pos = align(pos, 2)
    table_pos = align(vt_pos + vt_size, 8)

    # Children follow the table, in slot order.
    {children, {child_io, end_pos}} =
      layout
      |> Enum.sort_by(&elem(&1, 0))
      |> Enum.map_reduce({[], table_pos + t_size}, fn {slot, kind, value, at}, {io, p} ->
        case child(kind, value, p) do
          nil -> {{slot, kind, value, at, nil}, {io, p}}
          {cio, target, e} -> {{slot, kind, value, at, target}, {[io, cio], e}}
        end
      end)

    offsets = Map.new(children, fn {slot, _, _, at, _} -> {slot, at} end)

    vtable = [
      <<vt_size::little-16, t_size::little-16>>
      | for(s <- 0..(slots - 1)//1, do: <<Map.get(offsets, s, 0)::little-16>>)
    ]

    body =
      children
      |> Enum.sort_by(&elem(&1, 3))
      |> Enum.reduce({[<<table_pos - vt_pos::little-signed-32>>], 4}, fn
        {_slot, kind, value, at, target}, {io, p} ->
          {[io, zeros(at - p), inline(kind, value, table_pos + at, target)], at + width(kind)}
      end)
      |> then(fn {io, p} -> [io, zeros(t_size - p)] end)

    io = [
      zeros(vt_pos - pos),
      vtable,
      zeros(table_pos - vt_pos - vt_size),
      body,
      child_io
    ]

    {io, table_pos, end_pos}
  end

  defp inline(:bool, v, _, _), do: <<if(v, do: 1, else: 0)>>
  defp inline(:u8, v, _, _), do: <<v>>
  defp inline(:i16, v, _, _), do: <<v::little-signed-16>>
  defp inline(:i32, v, _, _), do: <<v::little-signed-32>>
  defp inline(:i64, v, _, _), do: <<v::little-signed-64>>
  defp inline(_offset, _v, at, target), do: <<target - at::little-32>>

  defp child(kind, _value, _pos) when kind in [:bool, :u8, :i16, :i32, :i64], do: nil
  defp child(:table, fields, pos), do: table(fields, pos)

  defp child(:string, bin, pos) do
    p = align(pos, 4)
    io = [zeros(p - pos), <<byte_size(bin)::little-32>>, bin, 0]
    {io, p, p + 4 + byte_size(bin) + 1}
  end

  defp child(:structs, {bytes, count}, pos) do
    p = align(pos, 4)
    p = if rem(p + 4, 8) == 0, do: p, else: p + 4
    {[zeros(p - pos), <<count::little-32>>, bytes], p, p + 4 + byte_size(bytes)}
  end

  defp child(:tables, list, pos) do
    p = align(pos, 4)
    count = length(list)
    slots_end = p + 4 + 4 * count

    {tables, {io, end_pos}} =
      Enum.map_reduce(list, {[], slots_end}, fn fields, {io, at} ->
        {tio, tpos, e} = table(fields, at)
        {tpos, {[io, tio], e}}
      end)

    offs = for {tpos, i} <- Enum.with_index(tables), do: <<tpos - (p + 4 + 4 * i)::little-32>>
    {[zeros(p - pos), <<count::little-32>>, offs, io], p, end_pos}
  end
end
