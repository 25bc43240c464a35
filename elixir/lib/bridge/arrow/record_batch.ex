defmodule Bridge.Arrow.RecordBatch do
  @moduledoc false
  # Turns a record batch's field nodes and buffers into arrays (load) and back
  # (unload), in the pre-order of the schema's fields (Arrow columnar format,
  # "Buffer listing for each layout"; Null has no buffers since V5).
  #
  # Load checks everything before it is used: node lengths and null counts,
  # every buffer against the body, buffer sizes against lengths, offsets
  # (non-negative, non-decreasing, within the data or the child), and
  # dictionary indices against the dictionary. Buffers stay sub-binaries of the
  # body.

  import Bitwise
  import Bridge.Arrow.Errors, only: [fail: 2]

  alias Bridge.Arrow.{Array, Compression, Field, Type}

  @type dictionaries :: %{integer() => Array.t()}

  # ------------------------------------------------------------------- loading

  @doc false
  # Loads the arrays of `fields` from a record batch. `dict_ids` lists the
  # dictionary ids of the dictionary fields in pre-order; `dictionaries` maps
  # ids to the current dictionary arrays (nil while loading a dictionary batch).
  @spec load([Field.t()], [integer()], map(), binary(), dictionaries() | nil, keyword()) ::
          [Array.t()]
  def load(fields, dict_ids, batch, body, dictionaries, opts) do
    state = %{
      nodes: structs(batch.nodes),
      buffers: structs(batch.buffers),
      body: body,
      compression: batch.compression,
      dict_ids: dict_ids,
      dictionaries: dictionaries,
      opts: opts
    }

    {arrays, state} =
      Enum.map_reduce(fields, state, fn field, state ->
        {array, state} = load_array(field, state)

        if array.length != batch.length,
          do: fail(:bad_length, field: :node_length, value: array.length, limit: batch.length)

        {array, state}
      end)

    if state.nodes != [],
      do: fail(:extra_nodes, field: :nodes, value: length(state.nodes), limit: 0)

    if state.buffers != [],
      do: fail(:extra_buffers, field: :buffers, value: length(state.buffers), limit: 0)

    arrays
  end

  defp structs(bin), do: for(<<a::little-signed-64, b::little-signed-64 <- bin>>, do: {a, b})

  defp load_array(%Field{type: type, name: name}, state) do
    {{length, nulls}, state} = pop(state, :nodes)
    at = "field #{inspect(name)}"

    if length < 0,
      do: fail(:bad_length, field: :node_length, value: length, limit: ">= 0", at: at)

    # Null arrays have no buffers to bound their length, and nested arrays are
    # not bounded by the batch length.
    max = Keyword.get(state.opts, :max_rows, 1 <<< 32)

    if length > max,
      do:
        fail(:too_many_rows,
          field: :node_length,
          value: length,
          limit: max,
          at: at,
          hint: "raise the :max_rows option if this size is expected"
        )

    if nulls < 0 or nulls > length,
      do: fail(:bad_null_count, field: :null_count, value: nulls, limit: length, at: at)

    array = %Array{type: type, length: length, null_count: nulls}

    case Type.layout(type) do
      :null ->
        {%{array | null_count: length}, state}

      :bitmap ->
        {validity, state} = validity(state, length, nulls, at)
        {data, state} = buffer(state, ceil8(length), :data, at)
        {%{array | validity: validity, data: data}, state}

      :fixed ->
        {validity, state} = validity(state, length, nulls, at)
        {data, state} = buffer(state, length * Type.byte_width(type), :data, at)
        {%{array | validity: validity, data: data}, state}

      :var ->
        {validity, state} = validity(state, length, nulls, at)
        w = Type.offset_width(type)
        {offsets, state} = offsets(state, length, w, at)
        {data, state} = pop_buffer(state)
        last = check_offsets(offsets, w, byte_size(data), at)
        data = binary_part(data, 0, last)
        if type in [:utf8, :large_utf8], do: check_utf8(offsets, w, data, state.opts, at)
        {%{array | validity: validity, offsets: offsets, data: data}, state}

      :list ->
        {validity, state} = validity(state, length, nulls, at)
        w = Type.offset_width(type)
        {offsets, state} = offsets(state, length, w, at)
        {child, state} = load_array(Type.child(type), state)
        check_offsets(offsets, w, child.length, at)
        {%{array | validity: validity, offsets: offsets, children: [child]}, state}

      :dictionary ->
        {validity, state} = validity(state, length, nulls, at)
        {data, state} = buffer(state, length * Type.byte_width(type), :data, at)
        {id, state} = pop(state, :dict_ids)
        dictionary = dictionary(state, id, at)
        array = %{array | validity: validity, data: data, dictionary: dictionary}
        check_indices(array, at)
        {array, state}
    end
  end

  defp dictionary(%{dictionaries: dicts}, id, at) do
    case dicts do
      %{^id => dict} -> dict
      _ -> fail(:missing_dictionary, field: :dictionary_id, value: id, at: at)
    end
  end

  defp pop(state, key) do
    case Map.fetch!(state, key) do
      [item | rest] -> {item, Map.put(state, key, rest)}
      [] -> fail(:missing_node, field: key, value: 0, limit: "one more entry")
    end
  end

  defp ceil8(n), do: (n + 7) >>> 3

  defp validity(state, _length, 0, _at) do
    {_ignored, state} = pop_buffer(state)
    {nil, state}
  end

  defp validity(state, length, _nulls, at), do: buffer(state, ceil8(length), :validity, at)

  # A buffer that must hold at least `need` bytes, trimmed to them.
  defp buffer(state, need, field, at) do
    {buf, state} = pop_buffer(state)

    if byte_size(buf) < need,
      do: fail(:buffer_too_short, field: field, value: byte_size(buf), limit: need, at: at)

    {binary_part(buf, 0, need), state}
  end

  defp offsets(state, length, w, at) do
    {buf, state} = pop_buffer(state)
    need = (length + 1) * w

    cond do
      # An empty array may omit its offsets.
      length == 0 and byte_size(buf) == 0 ->
        {<<0::size(w * 8)>>, state}

      byte_size(buf) < need ->
        fail(:buffer_too_short, field: :offsets, value: byte_size(buf), limit: need, at: at)

      true ->
        {binary_part(buf, 0, need), state}
    end
  end

  defp pop_buffer(state) do
    {{offset, length}, state} = pop(state, :buffers)
    body = state.body

    if offset < 0 or length < 0 or offset + length > byte_size(body),
      do:
        fail(:buffer_out_of_bounds,
          field: :buffer,
          value: {offset, length},
          limit: byte_size(body)
        )

    buf = binary_part(body, offset, length)

    case state.compression do
      nil -> {buf, state}
      codec -> {Compression.decompress_buffer(codec, buf, state.opts), state}
    end
  end

  # Offsets are non-negative and non-decreasing and the last is at most `limit`;
  # returns the last.
  defp check_offsets(offsets, w, limit, at) do
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

  # Strings must be UTF-8: the whole data range at once (fast, in C), and
  # every string boundary must fall between characters.
  defp check_utf8(offsets, w, data, opts, at) do
    if Keyword.get(opts, :validate_utf8, true) do
      bits = w * 8

      case offsets do
        <<first::little-size(bits), _::binary>> ->
          used = binary_part(data, first, byte_size(data) - first)

          unless match?(b when is_binary(b), :unicode.characters_to_binary(used)) and
                   boundaries_ok?(offsets, bits, data),
                 do: fail(:bad_utf8, field: :data, value: :invalid_utf8, at: at)

        _ ->
          :ok
      end
    end
  end

  # A boundary at byte b is inside a character when byte b is a continuation
  # byte (0b10xxxxxx).
  defp boundaries_ok?(<<>>, _bits, _data), do: true

  defp boundaries_ok?(offsets, bits, data) do
    <<o::little-size(bits), rest::binary>> = offsets

    o == byte_size(data) or
      (Bitwise.band(:binary.at(data, o), 0xC0) != 0x80 and boundaries_ok?(rest, bits, data))
  end

  defp check_indices(%Array{dictionary: dict, data: data, validity: validity} = a, at) do
    {s, w} = index_type(a.type)
    max = dict.length

    indices =
      case s do
        :s -> for <<i::little-signed-size(w) <- data>>, do: i
        :u -> for <<i::little-size(w) <- data>>, do: i
      end

    valid = if validity, do: Array.bits(validity, a.length), else: nil

    bad =
      if valid,
        do: Enum.zip(indices, valid) |> Enum.find(fn {i, v} -> v and (i < 0 or i >= max) end),
        else: Enum.find(indices, &(&1 < 0 or &1 >= max))

    if bad != nil,
      do: fail(:bad_dictionary_index, field: :indices, value: bad, limit: max, at: at)
  end

  defp index_type({:dictionary, index, _, _}), do: index

  # ----------------------------------------------------------------- unloading

  @doc false
  # The field nodes and buffers of arrays, in pre-order: {nodes, buffers}.
  @spec unload([Array.t()]) :: {[{integer(), integer()}], [binary()]}
  def unload(arrays) do
    {nodes, buffers} = Enum.reduce(arrays, {[], []}, &unload_array/2)
    {Enum.reverse(nodes), Enum.reverse(buffers)}
  end

  defp unload_array(%Array{} = a, {nodes, buffers}) do
    nodes = [{a.length, a.null_count} | nodes]
    validity = if a.null_count == 0, do: "", else: a.validity || ""

    case Type.layout(a.type) do
      :null -> {nodes, buffers}
      :list -> Enum.reduce(a.children, {nodes, [a.offsets, validity | buffers]}, &unload_array/2)
      :var -> {nodes, [a.data, a.offsets, validity | buffers]}
      _fixed -> {nodes, [a.data, validity | buffers]}
    end
  end

  @doc false
  # Lays buffers out in a message body, each at a 64-byte-aligned offset:
  # {body iodata, body length (a multiple of 64), [{offset, length}]}.
  @spec layout_body([binary()]) :: {iodata(), non_neg_integer(), [{integer(), integer()}]}
  def layout_body(buffers) do
    {io, {len, spans}} =
      Enum.map_reduce(buffers, {0, []}, fn buf, {pos, spans} ->
        size = byte_size(buf)
        padded = size + 63 &&& bnot(63)
        {[buf, <<0::size((padded - size) * 8)>>], {pos + padded, [{pos, size} | spans]}}
      end)

    {io, len, Enum.reverse(spans)}
  end
end
