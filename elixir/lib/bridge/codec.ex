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
  # protocol/formats/arrow.md "On the call path"). Format selection (SPEC
  # §8.1, Bridge.Format) under the call's policy: number lists go packed
  # ({:"$bb_packed", dtype, data} or a region of kind :packed holding a
  # schema-0 tensor frame), record lists and column maps as records
  # ({:"$bb_records", layout, stream} or a region of kind :records); structs
  # with a Bridge.Serializer go as {:"$bb_custom", name, version, data} or a
  # region of kind :custom (protocol/formats/custom.md); other structs as
  # their map. Terms that cannot cross (pids, funs, references, ports,
  # bit-strings, improper lists, atoms starting with "$bb_") are a :bad_call
  # error before anything is sent. Every decision is counted
  # (Bridge.format_stats/0) once per call.
  #
  # Results: region handles are read from the worker's result regions as
  # zero-copy binaries under a reader lease; Arrow streams (inline or region)
  # decode to %Bridge.Table{} whose fixed-width columns are sub-binaries of
  # them; packed lists, records and custom payloads become the list, the
  # maps or the struct. Anything else that is not plain data, or a stream
  # that does not decode, is a :bad_frame error (the worker is restarted);
  # records that do not rebuild and custom payloads without a usable
  # serializer are :bad_call errors (the frame was well formed: the worker is
  # kept).

  require Logger

  alias Bridge.{
    ArgRegions,
    Arrow,
    Buffer,
    Error,
    Format,
    Header,
    Region,
    ResultRegions,
    Serializer,
    Table,
    Tensor
  }

  alias Bridge.Tensor.{Bundle, COO, Wire}

  @type encode_ctx :: %{
          regions: ArgRegions.t(),
          threshold: non_neg_integer(),
          evicted: list(),
          policy: Format.policy(),
          tally: map(),
          raw: non_neg_integer(),
          raw_bytes: non_neg_integer(),
          short: non_neg_integer(),
          short_bytes: non_neg_integer()
        }

  @builtin [Tensor, Bundle, COO, Table, Buffer]

  @doc false
  # Options: `format:` — the policy of SPEC §8.1 (default :auto).
  @spec encode_args(list(), ArgRegions.t(), non_neg_integer(), keyword()) ::
          {:ok, list(), ArgRegions.t(), [Region.t()]}
          | {:error, Error.t(), ArgRegions.t(), [Region.t()]}
  def encode_args(args, regions, threshold, opts \\ []) when is_list(args) do
    ctx = %{
      regions: regions,
      threshold: threshold,
      evicted: [],
      policy: Keyword.get(opts, :format, :auto),
      tally: %{},
      # inline binaries, the most frequent decision, counted apart (cheaper)
      raw: 0,
      raw_bytes: 0,
      short: 0,
      short_bytes: 0
    }

    try do
      {term, ctx} = enc_list(args, ctx, [])

      ctx.tally
      |> add({:to_python, :raw, :below_threshold}, ctx.raw, ctx.raw_bytes)
      |> add({:to_python, :etf, :below_min}, ctx.short, ctx.short_bytes)
      |> Format.flush()

      {:ok, term, ctx.regions, ctx.evicted}
    catch
      {:bad_arg, error, ctx} -> {:error, error, ctx.regions, ctx.evicted}
    end
  end

  defp add(tally, _key, 0, _bytes), do: tally

  defp add(tally, key, n, bytes),
    do: Map.update(tally, key, {n, bytes}, fn {c, b} -> {c + n, b + bytes} end)

  defp enc(term, ctx) when is_integer(term) or is_float(term), do: {term, ctx}

  defp enc(term, ctx) when is_atom(term) do
    if reserved?(term),
      do: bad_arg(term, ctx, "an atom not starting with $bb_"),
      else: {term, ctx}
  end

  defp enc(term, ctx) when is_binary(term) do
    size = byte_size(term)

    if size >= ctx.threshold and size > 0,
      do: region(:binary, term, [format: :raw], term, ctx, {:raw, :threshold, "a binary"}),
      else: {term, %{ctx | raw: ctx.raw + 1, raw_bytes: ctx.raw_bytes + size}}
  end

  # Lists: number lists may go packed, record lists as records (SPEC §8.1).
  defp enc(term, ctx) when is_list(term) do
    case Format.select_list(term, ctx.policy) do
      :none ->
        enc_list(term, ctx, [])

      {:etf, :below_min, :number_list, _n} ->
        # Plain numbers: nothing inside needs encoding. Short lists are many:
        # counted apart, like inline binaries.
        {term,
         %{ctx | short: ctx.short + 1, short_bytes: ctx.short_bytes + :erlang.external_size(term)}}

      {:etf, reason, :number_list, n} ->
        {term, note(ctx, :etf, reason, :erlang.external_size(term), {:number_list, n})}

      {:etf, reason, what, cells} ->
        ctx = note(ctx, :etf, reason, :erlang.external_size(term), {what, cells})
        enc_list(term, ctx, [])

      decision ->
        selected(decision, ctx)
    end
  end

  defp enc(term, ctx) when is_tuple(term) do
    {list, ctx} = enc_list(Tuple.to_list(term), ctx, [])
    {List.to_tuple(list), ctx}
  end

  defp enc(%Buffer{data: data}, ctx) when is_binary(data) do
    frame = fn -> {:buffer, data, [format: :raw]} end
    what = {:buffer, "a buffer"}
    place({:"$bb_buffer", data}, byte_size(data), ctx, what, :below_threshold, frame)
  end

  # Tensors, bundles and COO arrays: protocol/formats/tensor.md. The inline term
  # and the region frame give Python the same value (invariant 7).
  defp enc(%struct{} = value, ctx) when struct in [Tensor, Bundle, COO] do
    case struct.validate(value) do
      :ok ->
        size = Wire.payload_size(value)

        place(Wire.inline(value), size, ctx, {:tensor, {:struct, struct}}, :below_threshold, fn ->
          {payload, frame_opts} = Wire.frame(value)
          {Wire.kind(value), payload, frame_opts}
        end)

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

    place(inline, byte_size(stream), ctx, {:arrow, {:struct, Table}}, :below_threshold, fn ->
      {:arrow, stream, [format: :arrow_stream, metadata: arrow_descriptor(table)]}
    end)
  end

  defp enc(%Buffer{} = b, ctx), do: bad_arg(b, ctx, "a %Bridge.Buffer{} holding a binary")

  # Structs of registered custom types: protocol/formats/custom.md. Other
  # structs, and those whose encode fails, go as their plain map (ETF).
  defp enc(%struct{} = value, ctx) when struct not in @builtin do
    case Serializer.encode_struct(value) do
      {:ok, entry, data} ->
        inline = {:"$bb_custom", entry.name, entry.version, data}
        what = {:custom, entry.name}

        place(inline, byte_size(data), ctx, {:custom, what}, :below_threshold, fn ->
          opts = [
            format: :custom,
            schema_id: entry.schema_id,
            schema_version: entry.version,
            metadata: :erlang.term_to_binary({entry.name, entry.version})
          ]

          {:custom, data, opts}
        end)

      {:fallback, _entry, _why} ->
        ctx = note(ctx, :etf, :encode_failed, :erlang.external_size(value), {:struct, struct})
        enc_map(value, ctx)

      :none ->
        enc_map(value, ctx)
    end
  end

  # Maps: a column map may go as records (SPEC §8.1).
  defp enc(%{} = map, ctx) do
    case Format.select_map(map, ctx.policy) do
      :none ->
        enc_map(map, ctx)

      {:etf, reason, what, cells} ->
        enc_map(map, note(ctx, :etf, reason, :erlang.external_size(map), {what, cells}))

      decision ->
        selected(decision, ctx)
    end
  end

  defp enc(term, ctx), do: bad_arg(term, ctx, "plain data (see Bridge's type mapping)")

  # Works for structs too (their plain map, __struct__ included).
  defp enc_map(map, ctx) do
    {pairs, ctx} =
      map
      |> :maps.to_list()
      |> Enum.reduce({[], ctx}, fn {k, v}, {acc, ctx} ->
        {k, ctx} = enc(k, ctx)
        {v, ctx} = enc(v, ctx)
        {[{k, v} | acc], ctx}
      end)

    {:maps.from_list(pairs), ctx}
  end

  defp selected({:packed, reason, dtype, data, n}, ctx) do
    inline = {:"$bb_packed", dtype, data}

    place(inline, byte_size(data), ctx, {:packed, {:number_list, n}}, reason, fn ->
      opts = [
        format: :tensor,
        schema_id: 0,
        schema_version: 0,
        metadata: :erlang.term_to_binary({dtype, [n]})
      ]

      {:packed, data, opts}
    end)
  end

  defp selected({:records, reason, layout, stream, rows, cols}, ctx) do
    inline = {:"$bb_records", layout, stream}

    place(
      inline,
      byte_size(stream),
      ctx,
      {:records, {:records, layout, rows, cols}},
      reason,
      fn ->
        meta = %{"layout" => Atom.to_string(layout), "num_rows" => rows, "num_columns" => cols}
        {:records, stream, [format: :arrow_stream, metadata: :erlang.term_to_binary(meta)]}
      end
    )
  end

  defp selected({:error, %Error{} = error}, ctx), do: throw({:bad_arg, error, ctx})

  # A value of `size` payload bytes: `inline` below the threshold (counted with
  # `reason`), else a region handle; `frame` gives {handle kind, payload, frame
  # options} and runs only then (building a bundle's payload or a descriptor costs).
  # A region is counted `reason` for the forms the policy chose (packed, records),
  # `:threshold` for the others, whose form only the threshold decides.
  defp place(inline, size, ctx, {form, what}, reason, frame) do
    if size >= ctx.threshold and size > 0 do
      {kind, payload, opts} = frame.()
      region_reason = if reason == :below_threshold, do: :threshold, else: reason
      region(kind, payload, opts, inline, ctx, {form, region_reason, what})
    else
      {inline, note(ctx, form, reason, size, what)}
    end
  end

  defp note(ctx, form, reason, bytes, what),
    do: %{ctx | tally: Format.decided(ctx.tally, :to_python, form, reason, bytes, what)}

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

  # `{form, reason, what}`: the decision to count — `form` in a region
  # (form_region, reason), or inline (form, :region_limit) when no region could
  # take the payload.
  defp region(kind, payload, frame_opts, inline, ctx, {form, reason, what}) do
    size = IO.iodata_length(payload)

    case ArgRegions.put(ctx.regions, payload, frame_opts) do
      {:ok, {name, generation}, regions, evicted} ->
        ctx = %{ctx | regions: regions, evicted: evicted ++ ctx.evicted}

        {{:"$bb_region", kind, name, generation},
         note(ctx, region_form(form), reason, size, what)}

      {:inline, why, regions, evicted} ->
        Logger.warning(
          "beambridge: #{size}-byte argument sent inline over the Port, " <>
            "not through a region: #{describe(why)}"
        )

        ctx = %{ctx | regions: regions, evicted: evicted ++ ctx.evicted}
        {inline, note(ctx, form, :region_limit, size, what)}
    end
  end

  defp region_form(:raw), do: :raw_region
  defp region_form(:buffer), do: :buffer_region
  defp region_form(:tensor), do: :tensor_region
  defp region_form(:arrow), do: :arrow_region
  defp region_form(:packed), do: :packed_region
  defp region_form(:records), do: :records_region
  defp region_form(:custom), do: :custom_region

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
          verify: boolean(),
          leased?: boolean(),
          tally: map()
        }

  @region_kinds [
    :binary,
    :buffer,
    :tensor,
    :tensor_bundle,
    :sparse_coo,
    :arrow,
    :packed,
    :records,
    :custom
  ]

  @doc false
  # `owner_prefix` is "/<shm_prefix>-<worker os pid>-": a result handle must
  # name a region of this worker.
  # The fourth element of the :ok tuple says whether the value holds zero-copy
  # binaries over result regions (each holds a reader lease until collected).
  # Errors of kind :bad_call (records that do not rebuild, custom types without
  # a serializer, ...) come from well-formed frames: the worker is kept. Any
  # other error means the worker broke the protocol.
  @spec decode_result(term(), ResultRegions.t(), String.t(), boolean()) ::
          {:ok, term(), ResultRegions.t(), boolean()} | {:error, Error.t(), ResultRegions.t()}
  def decode_result(term, cache, owner_prefix, verify) do
    ctx = %{cache: cache, owner_prefix: owner_prefix, verify: verify, leased?: false, tally: %{}}

    try do
      {value, ctx} = dec(term, ctx)
      Format.flush(ctx.tally)
      {:ok, value, ctx.cache, ctx.leased?}
    catch
      {:bad_result, error, ctx} ->
        Format.flush(ctx.tally)
        {:error, error, ctx.cache}
    end
  end

  defp dec(term, ctx) when is_integer(term) or is_float(term) or is_binary(term), do: {term, ctx}

  defp dec(term, ctx) when is_atom(term) do
    if reserved?(term), do: bad_result(:bad_term, term, ctx), else: {term, ctx}
  end

  defp dec({:"$bb_region", kind, name, generation}, ctx)
       when kind in @region_kinds and is_binary(name) and is_integer(generation) do
    read_region(kind, name, generation, ctx)
  end

  defp dec({:"$bb_tensor", dtype, shape, data}, ctx) when is_binary(data) do
    ctx = received(ctx, :tensor, byte_size(data))
    tensor_result(Wire.from_legacy(dtype, shape, data), ctx)
  end

  defp dec({:"$bb_tensor", desc, data}, ctx) when is_binary(data) do
    ctx = received(ctx, :tensor, byte_size(data))
    tensor_result(Wire.from_inline(desc, data), ctx)
  end

  defp dec({:"$bb_tensor_bundle", entries}, ctx) do
    ctx = received(ctx, :tensor, 0)
    tensor_result(Wire.from_inline_bundle(entries), ctx)
  end

  defp dec({:"$bb_sparse_coo", shape, entries}, ctx) do
    ctx = received(ctx, :tensor, 0)
    tensor_result(Wire.from_inline_coo(shape, entries), ctx)
  end

  defp dec({:"$bb_buffer", data}, ctx) when is_binary(data),
    do: {data, received(ctx, :buffer, byte_size(data))}

  defp dec({:"$bb_arrow", stream}, ctx) when is_binary(stream) do
    ctx = received(ctx, :arrow, byte_size(stream))
    arrow_result(Arrow.decode(stream), "", ctx)
  end

  # SPEC §8.1: a number list packed as a 1-D array.
  defp dec({:"$bb_packed", dtype, data} = t, ctx) do
    ctx = received(ctx, :packed, if(is_binary(data), do: byte_size(data), else: 0))

    case Format.unpack(dtype, data) do
      {:ok, list} -> {list, ctx}
      {:error, why} -> bad_result(:bad_term, t, ctx, "a packed number list (#{why})")
    end
  end

  # SPEC §8.1: a record list or a column map as an Arrow stream.
  defp dec({:"$bb_records", layout, stream}, ctx)
       when layout in [:rows, :columns] and is_binary(stream) do
    ctx = received(ctx, :records, byte_size(stream))

    case Format.decode_records(layout, stream) do
      {:ok, value, _table} -> {value, ctx}
      {:error, error} -> throw({:bad_result, error, ctx})
    end
  end

  # protocol/formats/custom.md: a value of a registered type.
  defp dec({:"$bb_custom", name, version, data}, ctx)
       when is_binary(name) and is_integer(version) and is_binary(data) do
    ctx = received(ctx, :custom, byte_size(data))
    custom_result(name, version, data, ctx)
  end

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

      ctx = received(ctx, region_kind_form(kind), h.payload_length)

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

        kind in [:arrow, :records] and Header.format_name(h.format) != :arrow_stream ->
          bad_result(
            :unknown_format,
            h.format,
            ctx,
            "an arrow_stream (2) frame for kind #{inspect(kind)}"
          )

        kind == :arrow ->
          arrow_result(Arrow.decode(frame.payload), frame.metadata, ctx)

        kind == :packed ->
          case Format.unpack_frame(frame) do
            {:ok, list} ->
              {list, ctx}

            {:error, why} ->
              bad_result(:bad_term, {kind, name}, ctx, "a packed number list frame (#{why})")
          end

        kind == :records ->
          records_region(frame, ctx)

        kind == :custom ->
          custom_region(frame, ctx)

        true ->
          {frame.payload, ctx}
      end
    else
      {:error, %Error{} = e, cache} -> throw({:bad_result, e, %{ctx | cache: cache}})
      {:error, %Error{} = e} -> throw({:bad_result, e, ctx})
    end
  end

  # The frame's metadata says the layout and the counts (SPEC §8.1); a
  # metadata that disagrees with the stream is a malformed frame.
  defp records_region(frame, ctx) do
    with {:ok, %{"layout" => layout, "num_rows" => rows, "num_columns" => cols}}
         when layout in ["rows", "columns"] <- Format.safe_term(frame.metadata) do
      case Format.decode_records(String.to_existing_atom(layout), frame.payload) do
        {:ok, value, table} ->
          if rows == table.num_rows and cols == length(table.schema.fields),
            do: {value, ctx},
            else:
              bad_result(
                :bad_metadata,
                {rows, cols},
                ctx,
                "counts matching the stream (#{table.num_rows} rows x " <>
                  "#{length(table.schema.fields)} columns)"
              )

        {:error, error} ->
          throw({:bad_result, error, ctx})
      end
    else
      other ->
        bad_result(
          :bad_metadata,
          other,
          ctx,
          ~s(%{"layout" => "rows" | "columns", "num_rows" => n, "num_columns" => c})
        )
    end
  end

  # protocol/formats/custom.md: format custom, metadata {name, version} agreeing
  # with schema_id = xxh3_64(name) and schema_version.
  defp custom_region(%{header: h} = frame, ctx) do
    if Header.format_name(h.format) != :custom or h.codec != 0,
      do: bad_result(:unknown_format, h.format, ctx, "a custom (4) frame for kind :custom")

    with {:ok, {name, version}} when is_binary(name) and is_integer(version) <-
           Format.safe_term(frame.metadata),
         {:ok, id} <- Bridge.NIF.xxh3_64(name),
         true <- id == h.schema_id and version == h.schema_version do
      custom_result(name, version, frame.payload, ctx)
    else
      _ ->
        bad_result(
          :bad_metadata,
          {h.schema_id, h.schema_version},
          ctx,
          "metadata {name, version} agreeing with schema_id = xxh3_64(name) and schema_version"
        )
    end
  end

  defp custom_result(name, version, data, ctx) do
    case Serializer.decode_payload(name, version, data) do
      {:ok, value} -> {value, ctx}
      {:error, error} -> throw({:bad_result, error, ctx})
    end
  end

  defp region_kind_form(:binary), do: :raw_region
  defp region_kind_form(kind) when kind in [:tensor_bundle, :sparse_coo], do: :tensor_region
  defp region_kind_form(kind), do: region_form(kind)

  defp received(ctx, form, bytes),
    do: %{ctx | tally: Format.decided(ctx.tally, :from_python, form, :received, bytes, nil)}

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

  # A stream that does not decode inside a well-formed frame (a type this codec
  # does not read, a stream a handler forged) is the call's error; the worker is
  # kept, as for records and custom types.
  defp arrow_result({:error, %Error{} = e}, _metadata, ctx) do
    error =
      Error.new(:bad_call, e.reason,
        field: :result,
        value: e.value,
        limit: e.limit,
        message:
          "bad call: the worker's Arrow result stream does not decode: " <>
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
