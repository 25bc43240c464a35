defmodule Bridge.Tensor.Wire do
  @moduledoc false
  # Tensors, bundles and COO arrays on the wire (protocol/formats/tensor.md):
  # inline data terms and tensor frames (format 1) with their schema ids.
  #
  #   schema 1, version 1: %{"dtype","shape","order"}  one tensor
  #   schema 2, version 1: %{"tensors" => [entry]}     a bundle
  #   schema 3, version 1: %{"shape", "tensors"}       a COO array (indices, values)
  #
  # An entry is %{"name", "dtype", "shape", "order", "offset"}; tensor i starts
  # at the first multiple of 64 at or after the end of tensor i - 1.

  alias Bridge.{Error, Tensor}
  alias Bridge.Tensor.{Bundle, COO, Dtype}

  @align 64
  @single 1
  @bundle 2
  @coo 3
  @version 1

  ## Encoding

  # Order as NumPy records it: an array contiguous both ways is "C".
  @spec order(Tensor.t()) :: :c | :f
  def order(%Tensor{order: :f, shape: shape}) do
    dims = Tuple.to_list(shape)
    if Enum.count(dims, &(&1 > 1)) <= 1 or Enum.product(dims) == 0, do: :c, else: :f
  end

  def order(%Tensor{}), do: :c

  def descriptor(%Tensor{} = t) do
    %{
      "dtype" => Dtype.to_descr(t.dtype),
      "shape" => Tuple.to_list(t.shape),
      "order" => if(order(t) == :f, do: "F", else: "C")
    }
  end

  # The inline data term.
  @spec inline(Tensor.t() | Bundle.t() | COO.t()) :: tuple()
  def inline(%Tensor{} = t), do: {:"$bb_tensor", descriptor(t), t.data}

  def inline(%Bundle{tensors: tensors}),
    do:
      {:"$bb_tensor_bundle", for({name, t} <- sorted(tensors), do: {name, descriptor(t), t.data})}

  def inline(%COO{} = c) do
    {:"$bb_sparse_coo", Tuple.to_list(c.shape),
     [
       {"indices", descriptor(c.indices), c.indices.data},
       {"values", descriptor(c.values), c.values.data}
     ]}
  end

  # The slice handle kind of a value.
  def kind(%Tensor{}), do: :tensor
  def kind(%Bundle{}), do: :tensor_bundle
  def kind(%COO{}), do: :sparse_coo

  # Payload bytes (before any frame is built, for the threshold).
  def payload_size(%Tensor{data: data}), do: byte_size(data)
  def payload_size(%Bundle{tensors: m}), do: layout_end(Enum.map(sorted(m), &elem(&1, 1)))
  def payload_size(%COO{indices: i, values: v}), do: layout_end([i, v])

  # {payload, frame options} of the tensor frame holding the value.
  @spec frame(Tensor.t() | Bundle.t() | COO.t()) :: {iodata(), keyword()}
  def frame(%Tensor{} = t) do
    meta = :erlang.term_to_binary(descriptor(t))
    {t.data, format: :tensor, metadata: meta, schema_id: @single, schema_version: @version}
  end

  def frame(%Bundle{tensors: tensors}) do
    {entries, payload} = entries(sorted(tensors))
    meta = :erlang.term_to_binary(%{"tensors" => entries})
    {payload, format: :tensor, metadata: meta, schema_id: @bundle, schema_version: @version}
  end

  def frame(%COO{} = c) do
    {entries, payload} = entries([{"indices", c.indices}, {"values", c.values}])
    meta = :erlang.term_to_binary(%{"shape" => Tuple.to_list(c.shape), "tensors" => entries})
    {payload, format: :tensor, metadata: meta, schema_id: @coo, schema_version: @version}
  end

  defp sorted(map), do: Enum.sort_by(map, &elem(&1, 0))

  defp entries(named) do
    {entries, iodata, _end} =
      Enum.reduce(named, {[], [], 0}, fn {name, t}, {entries, io, at} ->
        offset = align(at)
        entry = Map.merge(descriptor(t), %{"name" => name, "offset" => offset})
        pad = :binary.copy(<<0>>, offset - at)
        {[entry | entries], [io, pad, t.data], offset + byte_size(t.data)}
      end)

    # iodata: Arena.put/3 copies each tensor into the slice as it is
    {Enum.reverse(entries), iodata}
  end

  defp layout_end(tensors) do
    Enum.reduce(tensors, 0, fn t, at -> align(at) + byte_size(t.data) end)
  end

  defp align(n), do: div(n + @align - 1, @align) * @align

  ## Decoding (results from Python): every failure is {:error, %Error{kind: :bad_frame}}

  # {:"$bb_tensor", descriptor, data}
  def from_inline(desc, data) when is_map(desc) and is_binary(data), do: from_desc(desc, data)
  def from_inline(desc, _data), do: {:error, bad(:descriptor, desc, "a descriptor map")}

  def from_inline_bundle(entries) do
    with {:ok, named} <- inline_entries(entries), do: bundle(named)
  end

  def from_inline_coo(shape, entries) do
    with {:ok, named} <- inline_entries(entries), do: coo(shape, named)
  end

  defp inline_entries(entries) when is_list(entries) do
    Enum.reduce_while(entries, {:ok, []}, fn
      {name, desc, data}, {:ok, acc} when is_binary(name) and is_binary(data) ->
        case from_inline(desc, data) do
          {:ok, t} -> {:cont, {:ok, [{name, t} | acc]}}
          error -> {:halt, error}
        end

      other, _ ->
        {:halt, {:error, bad(:tensors, other, "{name, descriptor, data}")}}
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end

  defp inline_entries(other), do: {:error, bad(:tensors, other, "a list of entries")}

  # The value of a tensor frame read for a handle of `kind`.
  @spec from_frame(atom(), Bridge.Frame.t()) :: {:ok, term()} | {:error, Error.t()}
  def from_frame(kind, %Bridge.Frame{header: h, metadata: metadata, payload: payload}) do
    with :ok <- check(h.format == 1, :format, h.format, "format 1 (tensor)"),
         :ok <- check(h.codec == 0, :codec, h.codec, "an uncompressed tensor frame"),
         {:ok, meta} <- safe(metadata) do
      case {kind, h.schema_id, h.schema_version} do
        {:tensor, @single, @version} ->
          from_desc(meta, payload)

        {:tensor_bundle, @bundle, @version} ->
          with {:ok, named} <- region_entries(meta, payload), do: bundle(named)

        {:sparse_coo, @coo, @version} ->
          with {:ok, named} <- region_entries(meta, payload),
               do: coo(is_map(meta) && meta["shape"], named)

        {_, id, version} ->
          {:error,
           bad(
             :schema_id,
             {id, version},
             "#{kind}: a schema and version this reader knows " <>
               "(protocol/formats/tensor.md); upgrade beambridge"
           )}
      end
    end
  end

  defp region_entries(%{"tensors" => entries}, payload) when is_list(entries) do
    Enum.reduce_while(entries, {:ok, [], 0}, fn entry, {:ok, acc, at} ->
      with true <- is_map(entry) || {:error, bad(:tensors, entry, "an entry map")},
           name = entry["name"],
           true <- is_binary(name) || {:error, bad(:name, name, "a binary")},
           offset = align(at),
           true <- entry["offset"] === offset || {:error, bad(:offset, entry["offset"], offset)},
           {:ok, dtype, shape, order} <- parse(entry),
           n = Dtype.itemsize(dtype) * Enum.product(Tuple.to_list(shape)),
           true <-
             offset + n <= byte_size(payload) || {:error, bad(:shape, shape, byte_size(payload))},
           {:ok, t} <- new(binary_part(payload, offset, n), dtype, shape, order) do
        {:cont, {:ok, [{name, t} | acc], offset + n}}
      else
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, acc, at} when at == byte_size(payload) -> {:ok, Enum.reverse(acc)}
      {:ok, _, at} -> {:error, bad(:payload_length, byte_size(payload), at)}
      error -> error
    end
  end

  defp region_entries(meta, _payload),
    do: {:error, bad(:metadata, meta, ~s(%{"tensors" => [entry]}))}

  defp bundle(named) do
    names = Enum.map(named, &elem(&1, 0))

    if length(Enum.uniq(names)) != length(names),
      do: {:error, bad(:name, names, "unique names")},
      else: frame_error(Bundle.new(Map.new(named)))
  end

  defp coo(shape, [{"indices", i}, {"values", v}]) when is_list(shape) do
    if Dtype.valid_dims?(shape),
      do: frame_error(COO.new(i, v, List.to_tuple(shape))),
      else: {:error, bad(:shape, shape, "a list of non-negative integers")}
  end

  defp coo(shape, named),
    do:
      {:error,
       bad(:tensors, {shape, Enum.map(named, &elem(&1, 0))}, ~s(shape, ["indices", "values"]))}

  defp from_desc(desc, data) do
    with {:ok, dtype, shape, order} <- parse(desc), do: new(data, dtype, shape, order)
  end

  defp parse(%{"dtype" => descr, "shape" => shape} = desc) do
    with {:ok, dtype} <- frame_error(Dtype.from_descr(descr)),
         true <-
           Dtype.valid_dims?(shape) ||
             {:error, bad(:shape, shape, "a list of non-negative integers")},
         {:ok, order} <- parse_order(Map.get(desc, "order", "C")) do
      {:ok, dtype, List.to_tuple(shape), order}
    end
  end

  defp parse(desc), do: {:error, bad(:descriptor, desc, ~s(%{"dtype", "shape", "order"}))}

  defp parse_order("C"), do: {:ok, :c}
  defp parse_order("F"), do: {:ok, :f}
  defp parse_order(other), do: {:error, bad(:order, other, ~s("C" or "F"))}

  defp new(data, dtype, shape, order),
    do: frame_error(Tensor.new(data, dtype, shape, order: order))

  defp safe(metadata) do
    {:ok, :erlang.binary_to_term(metadata, [:safe])}
  rescue
    ArgumentError -> {:error, bad(:metadata, metadata, "ETF (protocol/formats/tensor.md)")}
  end

  defp check(true, _field, _value, _limit), do: :ok
  defp check(false, field, value, limit), do: {:error, bad(field, value, limit)}

  defp frame_error({:error, %Error{} = e}), do: {:error, %{e | kind: :bad_frame}}
  defp frame_error(ok), do: ok

  defp bad(field, value, limit) do
    Error.new(:bad_frame, :bad_tensor,
      field: field,
      value: value,
      limit: limit,
      message:
        "bad frame: bad_tensor: field #{field} is #{inspect(value, limit: 8, printable_limit: 80)}, " <>
          "expected #{if is_binary(limit), do: limit, else: inspect(limit)}"
    )
  end
end
