defmodule Bridge.Arrow.Checks do
  @moduledoc false
  # The checks Bridge.Arrow.RecordBatch runs on an array's buffers before
  # anything reads them: offsets, UTF-8, dictionary indices, views, list
  # views, union type codes and offsets, run ends. Each fails with a typed
  # :arrow error naming the field (`at`).

  import Bitwise
  import Bridge.Arrow.Errors, only: [fail: 2]

  alias Bridge.Arrow.Array

  @doc false
  # `:max_rows` (default 2^32) bounds every count of values a stream makes:
  # the batches' rows together, an array's length, a dictionary with its
  # deltas, the sizes of a list view.
  @spec rows!(integer(), keyword(), atom(), String.t() | nil) :: :ok
  def rows!(count, opts, field, at \\ nil) do
    max = Keyword.get(opts, :max_rows, 1 <<< 32)

    if count > max,
      do:
        fail(:too_many_rows,
          field: field,
          value: count,
          limit: max,
          at: at,
          hint: "raise the :max_rows option if this size is expected"
        )

    :ok
  end

  @doc false
  # Offsets are non-negative and non-decreasing and the last is at most
  # `limit`; returns the last.
  @spec offsets(binary(), 4 | 8, non_neg_integer(), String.t()) :: non_neg_integer()
  def offsets(offsets, w, limit, at) do
    bits = w * 8
    <<first::little-signed-size(bits), rest::binary>> = offsets
    if first < 0, do: fail(:bad_offsets, field: :offsets, value: first, limit: ">= 0", at: at)
    last = monotonic(rest, bits, first, at)
    if last > limit, do: fail(:bad_offsets, field: :offsets, value: last, limit: limit, at: at)
    last
  end

  defp monotonic(<<>>, _bits, prev, _at), do: prev

  defp monotonic(bin, bits, prev, at) do
    <<next::little-signed-size(bits), rest::binary>> = bin

    if next < prev,
      do: fail(:bad_offsets, field: :offsets, value: next, limit: ">= #{prev}", at: at)

    monotonic(rest, bits, next, at)
  end

  @doc false
  # Strings must be UTF-8: the whole data range at once (fast, in C), and
  # every string boundary must fall between characters.
  @spec utf8(binary(), 4 | 8, binary(), String.t()) :: :ok
  def utf8(offsets, w, data, at) do
    bits = w * 8

    case offsets do
      <<first::little-size(bits), _::binary>> ->
        used = binary_part(data, first, byte_size(data) - first)

        unless match?(b when is_binary(b), :unicode.characters_to_binary(used)) and
                 boundaries_ok?(offsets, bits, data),
               do: fail(:bad_utf8, field: :data, value: :invalid_utf8, at: at)

        :ok

      _ ->
        :ok
    end
  end

  # A boundary at byte b is inside a character when byte b is a continuation
  # byte (0b10xxxxxx).
  defp boundaries_ok?(<<>>, _bits, _data), do: true

  defp boundaries_ok?(offsets, bits, data) do
    <<o::little-size(bits), rest::binary>> = offsets

    o == byte_size(data) or
      (band(:binary.at(data, o), 0xC0) != 0x80 and boundaries_ok?(rest, bits, data))
  end

  @doc false
  # The indices of valid slots lie inside the dictionary.
  @spec indices(Array.t(), String.t()) :: :ok
  def indices(%Array{type: {:dictionary, {s, w}, _, _}, dictionary: dict} = a, at) do
    max = dict.length + Enum.sum(Enum.map(dict.deltas, & &1.length))

    indices =
      case s do
        :s -> for <<i::little-signed-size(w) <- a.data>>, do: i
        :u -> for <<i::little-size(w) <- a.data>>, do: i
      end

    bad =
      case a.validity do
        nil ->
          Enum.find(indices, &(&1 < 0 or &1 >= max))

        v ->
          Enum.zip(indices, Array.bits(v, a.length))
          |> Enum.find(fn {i, valid} -> valid and (i < 0 or i >= max) end)
      end

    if bad != nil,
      do: fail(:bad_dictionary_index, field: :indices, value: bad, limit: max, at: at)

    :ok
  end

  @doc false
  # Each valid view of a binary_view/utf8_view array: a length, then either
  # the bytes inline (length <= 12) or a prefix, a data buffer index and an
  # offset whose range lies inside that buffer. UTF-8 is checked per string.
  @spec views(Array.t(), boolean(), String.t()) :: :ok
  def views(%Array{data: views, variadic: buffers, length: n} = a, utf8?, at) do
    valid = if a.validity, do: Array.bits(a.validity, n), else: List.duplicate(true, n)
    buffers = List.to_tuple(buffers)
    each_view(views, valid, buffers, utf8?, at)
  end

  defp each_view(<<>>, [], _buffers, _utf8?, _at), do: :ok

  defp each_view(<<_::binary-16, rest::binary>>, [false | valid], buffers, utf8?, at),
    do: each_view(rest, valid, buffers, utf8?, at)

  defp each_view(<<view::binary-16, rest::binary>>, [true | valid], buffers, utf8?, at) do
    bytes = view_bytes(view, buffers, at)

    if utf8? and not String.valid?(bytes),
      do: fail(:bad_utf8, field: :views, value: bytes, at: at)

    each_view(rest, valid, buffers, utf8?, at)
  end

  @doc false
  # The bytes one view stands for (a sub-binary); the view must be in bounds.
  @spec view_bytes(binary(), tuple(), String.t()) :: binary()
  def view_bytes(<<len::little-signed-32, inline::binary-12>>, _buffers, _at)
      when len >= 0 and len <= 12,
      do: binary_part(inline, 0, len)

  def view_bytes(
        <<len::little-signed-32, _::binary-4, i::little-signed-32, off::little-signed-32>>,
        bufs,
        at
      ) do
    cond do
      len < 0 ->
        fail(:bad_view, field: :length, value: len, limit: ">= 0", at: at)

      i < 0 or i >= tuple_size(bufs) ->
        fail(:bad_view, field: :buffer_index, value: i, limit: tuple_size(bufs), at: at)

      off < 0 or off + len > byte_size(elem(bufs, i)) ->
        fail(:bad_view, field: :offset, value: {off, len}, limit: byte_size(elem(bufs, i)), at: at)

      true ->
        binary_part(elem(bufs, i), off, len)
    end
  end

  @doc false
  # Every slot of a list view, null or not: 0 <= offset and
  # 0 <= offset + size <= the child's length, size >= 0. List views may
  # overlap, so their values may be many more than the child's: the sizes
  # together count against :max_rows, as any array's length does.
  @spec list_view(binary(), binary(), 4 | 8, non_neg_integer(), keyword(), String.t()) :: :ok
  def list_view(offsets, sizes, w, limit, opts, at) do
    bits = w * 8

    total =
      Enum.zip(
        for(<<o::little-signed-size(bits) <- offsets>>, do: o),
        for(<<s::little-signed-size(bits) <- sizes>>, do: s)
      )
      |> Enum.reduce(0, fn {o, s}, total ->
        if o < 0 or s < 0 or o + s > limit,
          do: fail(:bad_offsets, field: :list_view, value: {o, s}, limit: limit, at: at)

        total + s
      end)

    rows!(total, opts, :list_view_sizes, at)
  end

  @doc false
  # Union type codes are declared ones; a dense union's offsets point inside
  # the child of their slot's code.
  @spec union(Array.t(), [integer()], String.t()) :: :ok
  def union(%Array{type: {:union, mode, _, codes}, data: types} = a, lengths, at) do
    child_of = codes |> Enum.with_index() |> Map.new()
    type_codes = for <<c::signed-8 <- types>>, do: c

    children =
      Enum.map(type_codes, fn c ->
        case child_of do
          %{^c => i} -> i
          _ -> fail(:bad_union, field: :type_ids, value: c, limit: inspect(codes), at: at)
        end
      end)

    if mode == :dense do
      lengths = List.to_tuple(lengths)
      offsets = for <<o::little-signed-32 <- a.offsets>>, do: o

      Enum.zip(children, offsets)
      |> Enum.each(fn {i, o} ->
        if o < 0 or o >= elem(lengths, i),
          do: fail(:bad_union, field: :offsets, value: o, limit: elem(lengths, i), at: at)
      end)
    end

    :ok
  end

  @doc false
  # Run ends are positive and strictly increasing, and the last one reaches
  # the array's length.
  @spec run_ends(Array.t(), non_neg_integer(), String.t()) :: :ok
  def run_ends(%Array{type: {:s, w}, data: data, null_count: 0}, length, at) do
    ends = for <<e::little-signed-size(w) <- data>>, do: e

    last =
      Enum.reduce(ends, 0, fn e, prev ->
        if e <= prev,
          do: fail(:bad_run_ends, field: :run_ends, value: e, limit: "> #{prev}", at: at)

        e
      end)

    if last < length,
      do: fail(:bad_run_ends, field: :run_ends, value: last, limit: ">= #{length}", at: at)

    :ok
  end

  def run_ends(%Array{null_count: n}, _length, at),
    do: fail(:bad_run_ends, field: :null_count, value: n, limit: 0, at: at)
end
