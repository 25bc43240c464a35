defmodule Bridge.Decoder do
  @moduledoc false
  # A result term as the caller's value, in the calling process
  # (protocol/SPEC.md §9, §10).
  #
  # Handles {:"$bb_slice", kind, index} name entry `index` of the answer's
  # slices, which the worker's process has already turned into `resolved`: a
  # lease on a worker slice ({:lease, lease, length, generation}: the frame is
  # read in place, payloads are zero-copy binaries that hold the lease until they
  # are collected; values rebuilt as terms copy their payload and end the lease at
  # once) or a binary over one of this node's own slices ({:binary, bin}, a
  # result that is a view of an argument). Arrow streams decode to
  # %Bridge.Table{} whose fixed-width columns are sub-binaries of them; packed
  # lists, records and custom payloads become the list, the maps or the struct.
  # Anything else that is not plain data, or a stream that does not decode, is a
  # :bad_frame error (the worker broke the protocol); records that do not rebuild
  # and custom payloads without a usable serializer are :bad_call errors (the frame
  # was well formed).
  #
  # The handle kinds, the frame format each reads, the kinds whose values are
  # copied out of the frame and the records layouts are the tables of
  # protocol/registry.json (Bridge.Registry).

  alias Bridge.{Arrow, Error, Format, FormatStats, Header, Peer, Registry, Serializer, Table}
  alias Bridge.Tensor.Wire

  # what a result's compressed slices may decompress to in all, by default (2^32)
  @max_decoded 4_294_967_296
  @u64 18_446_744_073_709_551_616

  @type decode_ctx :: %{resolved: tuple(), verify: boolean(), tally: map(), pieces: map()}

  # handle kind => the name of the frame format it reads
  @kinds Registry.handle_kinds()
  @format_codes Registry.formats()
  @copied Registry.copied_kinds()
  @stats_forms Registry.stats_forms()
  @layouts Registry.records_layouts()
  @layout_names Map.new(@layouts, &{Atom.to_string(&1), &1})

  @doc false
  # `resolved` holds one entry per slice of the answer (see the moduledoc);
  # `pieces` the lists that came in pieces before it (Bridge.Call.Pieces).
  # `checks`: whether payload checksums are verified, or [verify: boolean,
  # max_decoded: bytes, worker: pid], the most its compressed slices may
  # decompress to in all (default @max_decoded: a worker's arenas hold
  # compressed bytes, so without it a few kilobytes could ask for terabytes),
  # and the worker told when a %Bridge.Ref{} read here is garbage-collected.
  @spec decode_result(term(), tuple(), boolean() | keyword(), Bridge.Call.Pieces.t()) ::
          {:ok, term()} | {:error, Error.t()}
  def decode_result(term, resolved, checks, pieces \\ %{}) do
    {verify, max_decoded} =
      if is_boolean(checks),
        do: {checks, @max_decoded},
        else:
          {Keyword.get(checks, :verify, false), Keyword.get(checks, :max_decoded, @max_decoded)}

    ctx = %{
      resolved: resolved,
      verify: verify,
      tally: %{},
      pieces: pieces,
      decoded_left: max_decoded,
      # the worker that keeps the objects of refs in the result, and the
      # call's session: the only one they may name (SPEC §8.9)
      worker: if(is_list(checks), do: Keyword.get(checks, :worker)),
      session: if(is_list(checks), do: Keyword.get(checks, :session))
    }

    try do
      {value, ctx} = dec(term, ctx)
      FormatStats.flush(ctx.tally)
      {:ok, value}
    catch
      {:bad_result, error, ctx} ->
        FormatStats.flush(ctx.tally)
        {:error, error}
    end
  end

  # Inline terms whose payload (last element) may come in chunks (SPEC §8.6).
  @chunkable Bridge.Stream.chunkable_tags()

  defp dec(term, ctx) when is_integer(term) or is_float(term) or is_binary(term), do: {term, ctx}

  defp dec(term, ctx) when is_atom(term) do
    if reserved?(term), do: bad_result(:bad_term, term, ctx), else: {term, ctx}
  end

  defp dec({:"$bb_slice", kind, index}, ctx)
       when is_map_key(@kinds, kind) and is_integer(index) and index >= 0 do
    if index < tuple_size(ctx.resolved),
      do: read_slice(kind, elem(ctx.resolved, index), ctx),
      else:
        bad_result(:bad_term, {kind, index}, ctx, "a handle naming one of the answer's slices")
  end

  # SPEC §8.6: a binary whose chunks came as a stream before the answer; the
  # worker's relay put them, joined, last in `resolved` as {:chunks, %{sid => bin}}.
  defp dec({:"$bb_chunked", kind, sid, size}, ctx) when kind in [:binary, :buffer] do
    bin = chunked!({:"$bb_chunked", :binary, sid, size}, ctx)
    tally = FormatStats.decided(ctx.tally, :from_python, :raw, :chunked, byte_size(bin), nil)
    {bin, %{ctx | tally: tally}}
  end

  # SPEC §8.6, "Pieces": a long list whose pieces came before the answer, each
  # decoded as it came.
  defp dec({:"$bb_pieces", sid, count} = t, ctx) do
    case Bridge.Call.Pieces.list(ctx.pieces, sid, count) do
      {:ok, list} ->
        {list, ctx}

      :error ->
        bad_result(:bad_term, t, ctx, "a list of #{inspect(count)} values that came in pieces")
    end
  end

  # An inline tensor, table, packed list, records or custom payload that came in
  # chunks: decoded as if it had not.
  defp dec(t, ctx)
       when is_tuple(t) and tuple_size(t) in 2..4 and elem(t, 0) in @chunkable and
              is_tuple(elem(t, tuple_size(t) - 1)) and
              elem(elem(t, tuple_size(t) - 1), 0) == :"$bb_chunked" do
    last = tuple_size(t) - 1
    bin = chunked!(elem(t, last), ctx)
    form = form(elem(t, 0))
    tally = FormatStats.decided(ctx.tally, :from_python, form, :chunked, byte_size(bin), nil)
    dec(put_elem(t, last, bin), %{ctx | tally: tally})
  end

  # protocol/formats/ssz.md: a value of a typed schema.
  defp dec({:"$bb_schema", name, version, data}, ctx)
       when is_binary(name) and is_binary(version) and is_binary(data) do
    case Bridge.Schema.read_value(name, version, data) do
      {:ok, value} -> {value, ctx}
      {:error, error} -> throw({:bad_result, error, ctx})
    end
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

  # SPEC §10.1: a number list packed as a 1-D array.
  defp dec({:"$bb_packed", dtype, data} = t, ctx) do
    ctx = received(ctx, :packed, if(is_binary(data), do: byte_size(data), else: 0))

    case Format.unpack(dtype, data) do
      {:ok, list} -> {list, ctx}
      {:error, why} -> bad_result(:bad_term, t, ctx, "a packed number list (#{why})")
    end
  end

  # SPEC §10.1: a record list or a column map as an Arrow stream.
  defp dec({:"$bb_records", layout, stream}, ctx)
       when layout in @layouts and is_binary(stream) do
    ctx = received(ctx, :records, byte_size(stream))

    case Format.decode_records(layout, stream) do
      {:ok, value, _table} -> {value, ctx}
      {:error, error} -> throw({:bad_result, error, ctx})
    end
  end

  # protocol/formats/ssz.md, Batches: a list of values of one typed schema.
  defp dec({:"$bb_schema_list", name, version, data}, ctx)
       when is_binary(name) and is_binary(version) and is_binary(data) do
    schema_list(name, version, data, received(ctx, :schema, byte_size(data)))
  end

  # protocol/formats/custom.md: a value of a registered type.
  defp dec({:"$bb_custom", name, version, data}, ctx)
       when is_binary(name) and is_integer(version) and is_binary(data) do
    ctx = received(ctx, :custom, byte_size(data))
    custom_result(name, version, data, ctx)
  end

  # An object the worker keeps for a session (SPEC §8.9).
  defp dec({:"$bb_ref", session, ref}, %{session: session} = ctx)
       when is_integer(session) and is_integer(ref) and ref > 0 and ref < @u64,
       do: {Bridge.Ref.new(session, ref, ctx.worker), ctx}

  defp dec({:"$bb_ref", _, _} = term, ctx),
    do: bad_result(:bad_term, term, ctx, "a ref of the call's own session")

  # A pid this node gave out (SPEC §9): its MAC must be this node's.
  defp dec({:"$bb_pid", etf, mac} = term, ctx) do
    case Bridge.Pids.from_wire(etf, mac) do
      {:ok, pid} -> {pid, ctx}
      :error -> bad_result(:bad_term, term, ctx, "a pid this node gave out, with its MAC")
    end
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

  # A view of one of this node's own slices (an argument the handler returned).
  defp read_slice(:binary, {:binary, bin}, ctx),
    do: {bin, received(ctx, :raw_slice, byte_size(bin))}

  defp read_slice(kind, {:binary, _bin}, ctx),
    do: bad_result(:bad_term, kind, ctx, "kind binary for a view of an argument")

  # A lease on a worker slice: the frame must have the format its kind reads
  # (SPEC §9); copied kinds end the lease as soon as the value is built.
  defp read_slice(kind, {:lease, lease, length, generation}, ctx) do
    copy? = kind in @copied

    case Peer.read_frame(lease, length, generation, verify: ctx.verify, copy: copy?) do
      {:ok, %{header: %{format: code}} = frame} ->
        ctx = received(ctx, Map.fetch!(@stats_forms, kind), frame.header.payload_length)
        {frame, ctx} = decompressed(frame, ctx)
        format = Map.fetch!(@kinds, kind)

        if code == Map.fetch!(@format_codes, format),
          do: frame_value(kind, frame, ctx),
          else:
            bad_result(
              :unknown_format,
              code,
              ctx,
              "#{article(format)} #{format} (#{@format_codes[format]}) frame for kind #{inspect(kind)}"
            )

      {:error, %Error{} = e} ->
        throw({:bad_result, e, ctx})
    end
  end

  # A compressed payload (SPEC §5.1 `codec`, §15.3) is decompressed before its
  # format reads it; the header validation bounded decoded_length already.
  # A result decompresses to at most ctx.decoded_left bytes in all.
  defp decompressed(%{header: %{codec: 0}} = frame, ctx), do: {frame, ctx}

  defp decompressed(%{header: h} = frame, ctx) do
    codec = Header.codec_name(h.codec)

    case Bridge.Codec.decompress(codec, frame.payload, h.decoded_length, ctx.decoded_left) do
      {:ok, bin} ->
        header = %{h | codec: 0, payload_length: byte_size(bin)}
        left = ctx.decoded_left - byte_size(bin)
        {%{frame | payload: bin, header: header}, %{ctx | decoded_left: left}}

      {:error, error} ->
        throw({:bad_result, error, ctx})
    end
  end

  defp article(format), do: if(String.first("#{format}") in ~w(a e i o u), do: "an", else: "a")

  defp frame_value(kind, frame, ctx) when kind in [:tensor, :tensor_bundle, :sparse_coo],
    do: tensor_result(Wire.from_frame(kind, frame), ctx)

  defp frame_value(:arrow, frame, ctx),
    do: arrow_result(Arrow.decode(frame.payload), frame.metadata, ctx)

  defp frame_value(:packed, frame, ctx) do
    case Format.unpack_frame(frame) do
      {:ok, list} -> {list, ctx}
      {:error, why} -> bad_result(:bad_term, :packed, ctx, "a packed number list frame (#{why})")
    end
  end

  defp frame_value(:records, frame, ctx), do: records_slice(frame, ctx)
  defp frame_value(:custom, frame, ctx), do: custom_slice(frame, ctx)

  defp frame_value(:schema_list, %{header: h} = frame, ctx) do
    case Bridge.Schema.Batch.frame_schema(frame.metadata, h.schema_id, h.schema_version) do
      {:ok, {name, version}} ->
        schema_list(name, version, frame.payload, ctx)

      :error ->
        bad_result(
          :bad_metadata,
          {h.schema_id, h.schema_version},
          ctx,
          "metadata {name, version} agreeing with schema_id = xxh3_64(name) and " <>
            "schema_version = major * 65536 + minor"
        )
    end
  end

  defp frame_value(kind, frame, ctx) when kind in [:binary, :buffer], do: {frame.payload, ctx}

  # A kind the registry names that this reader does not implement.
  defp frame_value(kind, _frame, ctx),
    do: bad_result(:bad_term, kind, ctx, "a handle kind this reader implements")

  # The frame's metadata says the layout and the counts (SPEC §10.1); a
  # metadata that disagrees with the stream is a malformed frame.
  defp records_slice(frame, ctx) do
    with {:ok, %{"layout" => layout, "num_rows" => rows, "num_columns" => cols}}
         when is_map_key(@layout_names, layout) <- Format.safe_term(frame.metadata) do
      case Format.decode_records(Map.fetch!(@layout_names, layout), frame.payload) do
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
  defp custom_slice(%{header: h} = frame, ctx) do
    if h.codec != 0,
      do: bad_result(:unknown_format, h.format, ctx, "an uncompressed frame for kind :custom")

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

  defp schema_list(name, version, data, ctx) do
    case Bridge.Schema.Versions.read_list(name, version, data) do
      {:ok, values} -> {values, ctx}
      {:error, error} -> throw({:bad_result, error, ctx})
    end
  end

  defp custom_result(name, version, data, ctx) do
    case Serializer.decode_payload(name, version, data) do
      {:ok, value} -> {value, ctx}
      {:error, error} -> throw({:bad_result, error, ctx})
    end
  end

  defp received(ctx, form, bytes),
    do: %{ctx | tally: FormatStats.decided(ctx.tally, :from_python, form, :received, bytes, nil)}

  # A decoded stream; `metadata` is the slice frame's descriptor ("" inline),
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

  # A stream that does not decode inside a well-formed frame (a type Bridge.Arrow
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

  defp bad_result(reason, term, ctx, expected \\ "plain data (SPEC §9)") do
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

  defp reserved?(atom), do: String.starts_with?(Atom.to_string(atom), "$bb_")

  defp chunked!({:"$bb_chunked", :binary, sid, size} = t, ctx) do
    last = if tuple_size(ctx.resolved) > 0, do: elem(ctx.resolved, tuple_size(ctx.resolved) - 1)

    case last do
      {:chunks, %{^sid => bin}} when byte_size(bin) == size -> bin
      _ -> bad_result(:bad_term, t, ctx, "a chunked binary whose chunks all came")
    end
  end

  defp chunked!(t, ctx), do: bad_result(:bad_term, t, ctx, "a chunked binary")

  defp form(:"$bb_tensor"), do: :tensor
  defp form(:"$bb_arrow"), do: :arrow
  defp form(:"$bb_packed"), do: :packed
  defp form(:"$bb_records"), do: :records
  defp form(:"$bb_custom"), do: :custom
  defp form(:"$bb_schema"), do: :custom
  defp form(:"$bb_schema_list"), do: :schema
end
