defmodule Bridge.Arrow.RecordBatch do
  @moduledoc false
  # Turns a record batch's field nodes and buffers into arrays (load) and back
  # (unload), in the pre-order of the schema's fields (Arrow columnar format,
  # "Buffer listing for each layout"; Null has no buffers since V5, unions no
  # validity bitmap).
  #
  # Load checks everything before it is used (Bridge.Arrow.Checks): node
  # lengths and null counts, every buffer against the body, buffer sizes
  # against lengths, offsets, views, union codes, run ends, children long
  # enough for their parent, and dictionary indices against the dictionary.
  # Buffers stay sub-binaries of the body.

  import Bitwise
  import Bridge.Arrow.Errors, only: [fail: 2]

  alias Bridge.Arrow.{Array, Checks, Compression, Field, Type}

  @type dictionaries :: %{integer() => Array.t()}

  @v4 3

  # ------------------------------------------------------------------- loading

  @doc false
  # Loads the arrays of `fields` from a record batch. `dict_ids` lists the
  # dictionary ids of the dictionary fields in pre-order; `dictionaries` maps
  # ids to the current dictionary arrays.
  @spec load([Field.t()], [integer()], map(), binary(), dictionaries(), keyword()) ::
          [Array.t()]
  def load(fields, dict_ids, batch, body, dictionaries, opts) do
    state = %{
      nodes: structs(batch.nodes),
      buffers: structs(batch.buffers),
      variadic: Map.get(batch, :variadic, []),
      version: Map.get(batch, :version, 4),
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

    for key <- [:nodes, :buffers, :variadic], state[key] != [] do
      fail(:"extra_#{key}", field: key, value: length(state[key]), limit: 0)
    end

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
    Checks.rows!(length, state.opts, :node_length, at)

    if nulls < 0 or nulls > length,
      do: fail(:bad_null_count, field: :null_count, value: nulls, limit: length, at: at)

    array = %Array{type: type, length: length, null_count: nulls}
    load_layout(Type.layout(type), array, at, state)
  end

  defp load_layout(:null, array, _at, state), do: {%{array | null_count: array.length}, state}

  defp load_layout(:bitmap, array, at, state) do
    {validity, state} = validity(state, array, at)
    {data, state} = buffer(state, ceil8(array.length), :data, at)
    {%{array | validity: validity, data: data}, state}
  end

  defp load_layout(:fixed, array, at, state) do
    {validity, state} = validity(state, array, at)
    {data, state} = buffer(state, array.length * Type.byte_width(array.type), :data, at)
    {%{array | validity: validity, data: data}, state}
  end

  defp load_layout(:var, %Array{type: type} = array, at, state) do
    {validity, state} = validity(state, array, at)
    w = Type.offset_width(type)
    {offsets, state} = offsets(state, array.length, w, at)
    {data, state} = pop_buffer(state)
    last = Checks.offsets(offsets, w, byte_size(data), at)
    data = binary_part(data, 0, last)
    if Type.utf8?(type) and utf8?(state), do: Checks.utf8(offsets, w, data, at)
    {%{array | validity: validity, offsets: offsets, data: data}, state}
  end

  defp load_layout(:view, array, at, state) do
    {validity, state} = validity(state, array, at)
    {views, state} = buffer(state, array.length * 16, :views, at)
    {count, state} = pop(state, :variadic)

    if count < 0 or count > length(state.buffers),
      do:
        fail(:bad_length,
          field: :variadic_buffer_counts,
          value: count,
          limit: "0..#{length(state.buffers)} (the buffers left)",
          at: at
        )

    {buffers, state} =
      Enum.map_reduce(List.duplicate(nil, count), state, fn _, s -> pop_buffer(s) end)

    array = %{array | validity: validity, data: views, variadic: buffers}
    Checks.views(array, Type.utf8?(array.type) and utf8?(state), at)
    {array, state}
  end

  defp load_layout(:list, array, at, state) do
    {validity, state} = validity(state, array, at)
    w = Type.offset_width(array.type)
    {offsets, state} = offsets(state, array.length, w, at)
    {child, state} = load_array(Type.child(array.type), state)
    Checks.offsets(offsets, w, child.length, at)
    {%{array | validity: validity, offsets: offsets, children: [child]}, state}
  end

  defp load_layout(:list_view, array, at, state) do
    {validity, state} = validity(state, array, at)
    w = Type.offset_width(array.type)
    {offsets, state} = buffer(state, array.length * w, :offsets, at)
    {sizes, state} = buffer(state, array.length * w, :sizes, at)
    {child, state} = load_array(Type.child(array.type), state)
    Checks.list_view(offsets, sizes, w, child.length, state.opts, at)
    array = %{array | validity: validity, offsets: offsets, sizes: sizes, children: [child]}
    {array, state}
  end

  defp load_layout(:fixed_list, %Array{type: {_, _, size}} = array, at, state) do
    {validity, state} = validity(state, array, at)
    {children, state} = children(array, state, array.length * size, at)
    {%{array | validity: validity, children: children}, state}
  end

  defp load_layout(:struct, array, at, state) do
    {validity, state} = validity(state, array, at)
    {children, state} = children(array, state, array.length, at)
    {%{array | validity: validity, children: children}, state}
  end

  defp load_layout(:union, %Array{type: {:union, mode, _, _}} = array, at, state) do
    state =
      cond do
        state.version > @v4 -> state
        array.null_count == 0 -> elem(pop_buffer(state), 1)
        true -> fail(:unsupported_type, field: :union_validity, value: :v4_nulls, at: at)
      end

    {types, state} = buffer(state, array.length, :type_ids, at)

    {offsets, state} =
      if mode == :dense, do: buffer(state, array.length * 4, :offsets, at), else: {nil, state}

    need = if mode == :sparse, do: array.length, else: 0
    {children, state} = children(array, state, need, at)
    array = %{array | null_count: 0, data: types, offsets: offsets, children: children}
    Checks.union(array, Enum.map(children, & &1.length), at)
    {array, state}
  end

  defp load_layout(:run_end_encoded, array, at, state) do
    if array.null_count != 0,
      do: fail(:bad_null_count, field: :null_count, value: array.null_count, limit: 0, at: at)

    {[run_ends, values] = children, state} = children(array, state, 0, at)

    if values.length < run_ends.length,
      do: fail(:bad_length, field: :values, value: values.length, limit: run_ends.length, at: at)

    if run_ends.length == 0 and array.length > 0,
      do: fail(:bad_run_ends, field: :run_ends, value: 0, limit: ">= 1", at: at)

    Checks.run_ends(run_ends, array.length, at)
    {%{array | children: children}, state}
  end

  defp load_layout(:dictionary, array, at, state) do
    {validity, state} = validity(state, array, at)
    {data, state} = buffer(state, array.length * Type.byte_width(array.type), :data, at)
    {id, state} = pop(state, :dict_ids)
    dictionary = dictionary(state, id, at)
    array = %{array | validity: validity, data: data, dictionary: dictionary}
    Checks.indices(array, at)
    {array, state}
  end

  # The child arrays of a nested array, each at least `need` long.
  defp children(%Array{type: type}, state, need, at) do
    Enum.map_reduce(Type.children(type), state, fn field, state ->
      {child, state} = load_array(field, state)

      if child.length < need,
        do: fail(:bad_length, field: :child_length, value: child.length, limit: need, at: at)

      {child, state}
    end)
  end

  defp dictionary(%{dictionaries: dicts}, id, at) do
    case dicts do
      %{^id => dict} -> dict
      _ -> fail(:missing_dictionary, field: :dictionary_id, value: id, at: at)
    end
  end

  defp utf8?(state), do: Keyword.get(state.opts, :validate_utf8, true)

  defp pop(state, key) do
    case Map.fetch!(state, key) do
      [item | rest] -> {item, Map.put(state, key, rest)}
      [] -> fail(:missing_node, field: key, value: 0, limit: "one more entry")
    end
  end

  defp ceil8(n), do: (n + 7) >>> 3

  defp validity(state, %Array{null_count: 0}, _at) do
    {_ignored, state} = pop_buffer(state)
    {nil, state}
  end

  defp validity(state, %Array{length: length}, at),
    do: buffer(state, ceil8(length), :validity, at)

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

  # ----------------------------------------------------------------- unloading

  @doc false
  # The field nodes, buffers and variadic buffer counts of arrays, in
  # pre-order: {nodes, buffers, counts}.
  @spec unload([Array.t()]) :: {[{integer(), integer()}], [binary()], [non_neg_integer()]}
  def unload(arrays) do
    {nodes, buffers, counts} = Enum.reduce(arrays, {[], [], []}, &unload_array/2)
    {Enum.reverse(nodes), Enum.reverse(buffers), Enum.reverse(counts)}
  end

  defp unload_array(%Array{} = a, {nodes, buffers, counts}) do
    nodes = [{a.length, a.null_count} | nodes]
    validity = if a.null_count == 0, do: "", else: a.validity || ""

    own =
      case Type.layout(a.type) do
        :null -> []
        :var -> [validity, a.offsets, a.data]
        :view -> [validity, a.data | a.variadic]
        :list -> [validity, a.offsets]
        :list_view -> [validity, a.offsets, a.sizes]
        layout when layout in [:fixed_list, :struct] -> [validity]
        :union -> if a.offsets, do: [a.data, a.offsets], else: [a.data]
        :run_end_encoded -> []
        _fixed -> [validity, a.data]
      end

    counts = if Type.layout(a.type) == :view, do: [length(a.variadic) | counts], else: counts
    acc = {nodes, Enum.reverse(own, buffers), counts}
    Enum.reduce(a.children, acc, &unload_array/2)
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
