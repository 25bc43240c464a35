defmodule Bridge.Codec do
  @moduledoc false
  # Data terms across the control channel (SPEC §7.4, §8).
  #
  # Arguments: binaries, Buffers and Tensors at or above the threshold are
  # written into this worker's argument regions and replaced by
  # {:"$bb_region", kind, name, generation}; smaller ones go inline (a plain
  # binary, {:"$bb_buffer", bin}, {:"$bb_tensor", dtype, shape, data}), so the
  # Python type never depends on the size (invariant 7). Tensor.Bundle and
  # Tensor.COO, and tensors of any NumPy dtype/order, use the forms of
  # protocol/formats/tensor.md (Bridge.Tensor.Wire). A %Bridge.Table{} goes as
  # its Arrow IPC stream (Bridge.Arrow.encode): {:"$bb_arrow", stream} inline,
  # or a region of kind :arrow (format arrow_stream, descriptor metadata;
  # protocol/formats/arrow.md "On the call path"). Terms that cannot
  # cross (pids, funs, references, ports, bit-strings, improper lists, atoms
  # starting with "$bb_") are a :bad_call error before anything is sent.
  #
  # Results: region handles are read from the worker's result regions as
  # zero-copy binaries under a reader lease; Arrow streams (inline or region)
  # decode to %Bridge.Table{} whose fixed-width columns are sub-binaries of
  # them; anything else that is not plain data, or a stream that does not
  # decode, is a :bad_frame error.

  require Logger

  alias Bridge.{ArgRegions, Arrow, Buffer, Error, Header, Region, ResultRegions, Table, Tensor}
  alias Bridge.Tensor.{Bundle, COO, Wire}

  @type encode_ctx :: %{regions: ArgRegions.t(), threshold: non_neg_integer(), evicted: list()}

  @spec encode_args(list(), ArgRegions.t(), non_neg_integer()) ::
          {:ok, list(), ArgRegions.t(), [Region.t()]}
          | {:error, Error.t(), ArgRegions.t(), [Region.t()]}
  def encode_args(args, regions, threshold) when is_list(args) do
    ctx = %{regions: regions, threshold: threshold, evicted: []}

    try do
      {term, ctx} = enc_list(args, ctx, [])
      {:ok, term, ctx.regions, ctx.evicted}
    catch
      {:bad_arg, error, ctx} -> {:error, error, ctx.regions, ctx.evicted}
    end
  end

  defp enc(term, ctx) when is_integer(term) or is_float(term), do: {term, ctx}

  defp enc(term, ctx) when is_atom(term) do
    if reserved?(term),
      do: bad_arg(term, ctx, "an atom not starting with $bb_"),
      else: {term, ctx}
  end

  defp enc(term, ctx) when is_binary(term) do
    if byte_size(term) >= ctx.threshold and byte_size(term) > 0,
      do: region(:binary, term, [format: :raw], term, ctx),
      else: {term, ctx}
  end

  defp enc(term, ctx) when is_list(term), do: enc_list(term, ctx, [])

  defp enc(term, ctx) when is_tuple(term) do
    {list, ctx} = enc_list(Tuple.to_list(term), ctx, [])
    {List.to_tuple(list), ctx}
  end

  defp enc(%Buffer{data: data}, ctx) when is_binary(data) do
    if byte_size(data) >= ctx.threshold and byte_size(data) > 0,
      do: region(:buffer, data, [format: :raw], {:"$bb_buffer", data}, ctx),
      else: {{:"$bb_buffer", data}, ctx}
  end

  # Tensors, bundles and COO arrays: protocol/formats/tensor.md. The inline term
  # and the region frame give Python the same value (invariant 7).
  defp enc(%struct{} = value, ctx) when struct in [Tensor, Bundle, COO] do
    case struct.validate(value) do
      :ok ->
        inline = Wire.inline(value)
        size = Wire.payload_size(value)

        if size >= ctx.threshold and size > 0 do
          {payload, frame_opts} = Wire.frame(value)
          region(Wire.kind(value), payload, frame_opts, inline, ctx)
        else
          {inline, ctx}
        end

      {:error, error} ->
        throw({:bad_arg, error, ctx})
    end
  end

  # Tables: an Arrow IPC stream (protocol/formats/arrow.md); Python gets a
  # pyarrow.Table either way (invariant 7).
  defp enc(%Table{} = table, ctx) do
    stream =
      try do
        Arrow.encode(table)
      rescue
        e in Error -> throw({:bad_arg, e, ctx})
        _ -> bad_arg(table, ctx, "a %Bridge.Table{} built with Bridge.Table or Bridge.Arrow")
      end

    inline = {:"$bb_arrow", stream}

    if byte_size(stream) >= ctx.threshold do
      opts = [format: :arrow_stream, metadata: arrow_descriptor(table)]
      region(:arrow, stream, opts, inline, ctx)
    else
      {inline, ctx}
    end
  end

  defp enc(%Buffer{} = b, ctx), do: bad_arg(b, ctx, "a %Bridge.Buffer{} holding a binary")

  defp enc(%{} = map, ctx) do
    {pairs, ctx} =
      Enum.reduce(map, {[], ctx}, fn {k, v}, {acc, ctx} ->
        {k, ctx} = enc(k, ctx)
        {v, ctx} = enc(v, ctx)
        {[{k, v} | acc], ctx}
      end)

    {Map.new(pairs), ctx}
  end

  defp enc(term, ctx), do: bad_arg(term, ctx, "plain data (see Bridge's type mapping)")

  # The frame metadata descriptor of protocol/formats/arrow.md.
  defp arrow_descriptor(%Table{schema: schema, columns: columns, num_rows: n}) do
    fields = for f <- schema.fields, do: {f.name, Arrow.Type.describe(f.type), f.nullable == true}
    fields = if byte_size(:erlang.term_to_binary(fields)) > 65_536, do: nil, else: fields

    batches =
      case columns do
        [] -> if n == 0, do: 0, else: 1
        [chunks | _] -> length(chunks)
      end

    :erlang.term_to_binary(%{
      "version" => 1,
      "num_rows" => n,
      "num_columns" => length(schema.fields),
      "num_batches" => batches,
      "fields" => fields
    })
  end

  defp enc_list([], ctx, acc), do: {Enum.reverse(acc), ctx}

  defp enc_list([h | t], ctx, acc) do
    {h, ctx} = enc(h, ctx)
    enc_list(t, ctx, [h | acc])
  end

  defp enc_list(tail, ctx, _acc), do: bad_arg(tail, ctx, "a proper list")

  defp region(kind, payload, frame_opts, inline, ctx) do
    case ArgRegions.put(ctx.regions, payload, frame_opts) do
      {:ok, {name, generation}, regions, evicted} ->
        {{:"$bb_region", kind, name, generation},
         %{ctx | regions: regions, evicted: evicted ++ ctx.evicted}}

      {:inline, reason, regions, evicted} ->
        Logger.warning(
          "beambridge: #{byte_size(payload)}-byte argument sent inline over the Port, " <>
            "not through a region: #{describe(reason)}"
        )

        {inline, %{ctx | regions: regions, evicted: evicted ++ ctx.evicted}}
    end
  end

  defp describe({:region_limit, need, limit}),
    do: "region_limit #{limit} bytes reached (would need #{need})"

  defp describe(%Error{} = e), do: Exception.message(e)
  defp describe(other), do: inspect(other)

  defp bad_arg(term, ctx, expected) do
    error =
      Error.new(:bad_call, :bad_term,
        field: :args,
        value: term,
        limit: expected,
        message:
          "bad call: bad_term: #{inspect(term, limit: 5)} cannot be sent to Python (expected #{expected})"
      )

    throw({:bad_arg, error, ctx})
  end

  defp reserved?(atom), do: String.starts_with?(Atom.to_string(atom), "$bb_")

  ## Results

  @type decode_ctx :: %{
          cache: ResultRegions.t(),
          owner_prefix: String.t(),
          verify: boolean()
        }

  @doc false
  # `owner_prefix` is "/<shm_prefix>-<worker os pid>-": a result handle must
  # name a region of this worker.
  # The fourth element of the :ok tuple says whether the value holds zero-copy
  # binaries over result regions (each holds a reader lease until collected).
  @spec decode_result(term(), ResultRegions.t(), String.t(), boolean()) ::
          {:ok, term(), ResultRegions.t(), boolean()} | {:error, Error.t(), ResultRegions.t()}
  def decode_result(term, cache, owner_prefix, verify) do
    ctx = %{cache: cache, owner_prefix: owner_prefix, verify: verify, leased?: false}

    try do
      {value, ctx} = dec(term, ctx)
      {:ok, value, ctx.cache, ctx.leased?}
    catch
      {:bad_result, error, ctx} -> {:error, error, ctx.cache}
    end
  end

  defp dec(term, ctx) when is_integer(term) or is_float(term) or is_binary(term), do: {term, ctx}

  defp dec(term, ctx) when is_atom(term) do
    if reserved?(term), do: bad_result(:bad_term, term, ctx), else: {term, ctx}
  end

  defp dec({:"$bb_region", kind, name, generation}, ctx)
       when kind in [:binary, :buffer, :tensor, :tensor_bundle, :sparse_coo, :arrow] and
              is_binary(name) and is_integer(generation) do
    read_region(kind, name, generation, ctx)
  end

  defp dec({:"$bb_tensor", dtype, shape, data}, ctx) when is_binary(data),
    do: tensor_result(Wire.from_legacy(dtype, shape, data), ctx)

  defp dec({:"$bb_tensor", desc, data}, ctx) when is_binary(data),
    do: tensor_result(Wire.from_inline(desc, data), ctx)

  defp dec({:"$bb_tensor_bundle", entries}, ctx),
    do: tensor_result(Wire.from_inline_bundle(entries), ctx)

  defp dec({:"$bb_sparse_coo", shape, entries}, ctx),
    do: tensor_result(Wire.from_inline_coo(shape, entries), ctx)

  defp dec({:"$bb_buffer", data}, ctx) when is_binary(data), do: {data, ctx}

  defp dec({:"$bb_arrow", stream}, ctx) when is_binary(stream),
    do: arrow_result(Arrow.decode(stream), "", ctx)

  defp dec(term, ctx) when is_tuple(term) do
    if tuple_size(term) > 0 and is_atom(elem(term, 0)) and reserved?(elem(term, 0)) do
      bad_result(:bad_term, term, ctx)
    else
      {list, ctx} = dec_list(Tuple.to_list(term), ctx, [])
      {List.to_tuple(list), ctx}
    end
  end

  defp dec(term, ctx) when is_list(term), do: dec_list(term, ctx, [])

  defp dec(%{} = map, ctx) do
    {pairs, ctx} =
      Enum.reduce(map, {[], ctx}, fn {k, v}, {acc, ctx} ->
        {k, ctx} = dec(k, ctx)
        {v, ctx} = dec(v, ctx)
        {[{k, v} | acc], ctx}
      end)

    {Map.new(pairs), ctx}
  end

  defp dec(term, ctx), do: bad_result(:bad_term, term, ctx)

  defp dec_list([], ctx, acc), do: {Enum.reverse(acc), ctx}

  defp dec_list([h | t], ctx, acc) do
    {h, ctx} = dec(h, ctx)
    dec_list(t, ctx, [h | acc])
  end

  defp dec_list(tail, ctx, _acc), do: bad_result(:bad_term, tail, ctx)

  defp read_region(kind, name, generation, ctx) do
    unless String.starts_with?(name, ctx.owner_prefix) do
      bad_result(:bad_name, name, ctx, "a region of this worker (#{ctx.owner_prefix}...)")
    end

    with {:ok, region, cache} <- ResultRegions.attach(ctx.cache, name),
         ctx = %{ctx | cache: cache, leased?: true},
         {:ok, frame} <- Region.read_frame(region, verify: ctx.verify) do
      h = frame.header

      cond do
        h.generation != generation ->
          throw(
            {:bad_result,
             Error.new(:bad_frame, :stale_generation,
               field: :generation,
               value: generation,
               limit: h.generation
             ), ctx}
          )

        kind in [:tensor, :tensor_bundle, :sparse_coo] ->
          tensor_result(Wire.from_frame(kind, frame), ctx)

        kind == :arrow and Header.format_name(h.format) != :arrow_stream ->
          bad_result(:unknown_format, h.format, ctx, "an arrow_stream (2) frame for kind :arrow")

        kind == :arrow ->
          arrow_result(Arrow.decode(frame.payload), frame.metadata, ctx)

        true ->
          {frame.payload, ctx}
      end
    else
      {:error, %Error{} = e, cache} -> throw({:bad_result, e, %{ctx | cache: cache}})
      {:error, %Error{} = e} -> throw({:bad_result, e, ctx})
    end
  end

  # A decoded stream; `metadata` is the region frame's descriptor ("" inline),
  # whose counts must match the stream when present.
  defp arrow_result({:ok, %Table{} = table}, metadata, ctx) do
    case arrow_counts(metadata) do
      :none ->
        {table, ctx}

      {rows, cols} when rows == table.num_rows and cols == length(table.schema.fields) ->
        {table, ctx}

      other ->
        bad_result(
          :bad_metadata,
          other,
          ctx,
          "a descriptor matching the stream " <>
            "(#{table.num_rows} rows x #{length(table.schema.fields)} columns)"
        )
    end
  end

  defp arrow_result({:error, %Error{} = e}, _metadata, ctx) do
    error =
      Error.new(:bad_frame, e.reason,
        field: :result,
        value: e.value,
        limit: e.limit,
        message:
          "bad frame: the worker's Arrow result stream does not decode: " <>
            Exception.message(e)
      )

    throw({:bad_result, error, ctx})
  end

  defp arrow_counts(""), do: :none

  defp arrow_counts(metadata) do
    case :erlang.binary_to_term(metadata, [:safe]) do
      %{"num_rows" => rows, "num_columns" => cols} -> {rows, cols}
      other -> {:not_a_descriptor, other}
    end
  rescue
    ArgumentError -> {:not_etf, byte_size(metadata)}
  end

  defp tensor_result({:ok, value}, ctx), do: {value, ctx}
  defp tensor_result({:error, %Error{} = e}, ctx), do: throw({:bad_result, e, ctx})

  defp bad_result(reason, term, ctx, expected \\ "plain data (SPEC §7.4)") do
    error =
      Error.new(:bad_frame, reason,
        field: :result,
        value: term,
        limit: expected,
        message:
          "bad frame: #{reason}: the worker sent #{inspect(term, limit: 5, printable_limit: 80)} " <>
            "(expected #{expected})"
      )

    throw({:bad_result, error, ctx})
  end
end
