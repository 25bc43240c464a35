defmodule Bridge.Encoder do
  @moduledoc false
  # A call's arguments as a data term, in the calling process
  # (protocol/SPEC.md §9, §10).
  #
  # Binaries, Buffers, tensors, tables, packed lists, records and custom-type
  # payloads at or above the threshold are written straight into a slice of the
  # bridge's arenas (Bridge.Arena, through the NIF) and replaced by
  # {:"$bb_slice", kind, index}; `index` names the slice in the call's `slices`
  # list. Smaller ones go inline (a plain binary, {:"$bb_buffer", bin},
  # {:"$bb_tensor", descriptor, data}, ...), so the Python type never depends on
  # the size (invariant 7). Tensors, bundles and COO arrays use
  # protocol/formats/tensor.md (Bridge.Tensor.Wire); a %Bridge.Table{} goes as its
  # Arrow IPC stream; number lists, record lists and column maps follow the call's
  # format policy (SPEC §10.1, Bridge.Format); structs with a Bridge.Serializer go
  # as custom payloads (protocol/formats/custom.md), other structs as their map.
  # Terms that cannot cross (pids, funs, references, ports, bit-strings, improper
  # lists, atoms starting with "$bb_") are a :bad_call error before anything is
  # sent. Every decision is counted (Bridge.format_stats/0) once per call.
  #
  # A list of 131,072 schema values or more goes as a stream of pieces (SPEC §8.6),
  # written while the worker reads the pieces before, so the two sides overlap.
  #
  # Limits: a value whose frame can never fit the arenas (:arena_limit) is sent
  # inline when it fits a control frame, else refused at once (:too_large, naming
  # :arena_limit) before anything of it is copied; a value that fits but finds the
  # arenas full now goes inline (counted as :arena_full). Each fallback is logged,
  # at most once a second per cause.
  #
  # The slices belong to the calling process: it releases them when the call is
  # over (Bridge.Arena.release/1), whatever the outcome.

  alias Bridge.{
    Arena,
    Arrow,
    Buffer,
    Error,
    Format,
    FormatStats,
    Registry,
    Serializer,
    Table,
    Tensor
  }

  alias Bridge.Encoder.Chunked
  alias Bridge.Provenance.Arguments
  alias Bridge.Schema.Batch.Piece
  alias Bridge.Tensor.{Bundle, COO, Wire}

  # A list of twice @piece schema values or more goes as pieces of at most @piece
  # values (fewer when they are large, Bridge.Schema.Batch.pieces/5), @piece_window of
  # them at most written ahead of the worker's reading (SPEC §8.6, "Pieces").
  @piece 65_536
  @piece_window 4

  @type encode_ctx :: %{
          streams: [{pos_integer(), Bridge.Stream.t()}] | nil,
          arena: Arena.t(),
          threshold: non_neg_integer(),
          slices: [Arena.Slice.t()],
          count: non_neg_integer(),
          inline: non_neg_integer(),
          policy: Format.policy(),
          nested: boolean(),
          provenance: Arguments.t(),
          tally: map(),
          raw: non_neg_integer(),
          raw_bytes: non_neg_integer(),
          short: non_neg_integer(),
          short_bytes: non_neg_integer()
        }

  @builtin [Tensor, Bundle, COO, Table, Buffer]

  # Handle kind => the form a value in a slice of that kind is counted under
  # (protocol/registry.json).
  @slice_forms Registry.stats_forms()

  @doc false
  # Returns the argument term and the slices its handles name, in index order.
  # On error the slices written so far are released. Options: `format:` — the
  # policy of SPEC §10.1 (default :auto).
  @spec encode_args(list(), Arena.t(), non_neg_integer(), keyword()) ::
          {:ok, list(), [Arena.Slice.t()]} | {:error, Error.t()}
  def encode_args(args, arena, threshold, opts \\ []) when is_list(args) do
    with {:ok, term, slices, []} <- encode_call(args, arena, threshold, opts),
         do: {:ok, term, slices}
  end

  @doc false
  # As encode_args/4, and with `streams: true` a %Bridge.Stream{} among the
  # arguments becomes {:"$bb_stream", sid} (SPEC §8.6): returns the streams as
  # [{sid, stream}] in sid order. Without it a stream is a :bad_call error.
  @spec encode_call(list(), Arena.t(), non_neg_integer(), keyword()) ::
          {:ok, list(), [Arena.Slice.t()], [{pos_integer(), Bridge.Stream.t()}]}
          | {:error, Error.t()}
  def encode_call(args, arena, threshold, opts) when is_list(args) do
    ctx = %{
      streams: if(Keyword.get(opts, :streams, false), do: [], else: nil),
      arena: arena,
      threshold: threshold,
      slices: [],
      count: 0,
      inline: 0,
      policy: Keyword.get(opts, :format, :auto),
      # struct and list columns in the records form: protocol 2.6 (Bridge.Format)
      nested: Keyword.get(opts, :nested_records, true),
      # a codec for slice payloads, when the call asks for one (SPEC §15.3)
      compress: Keyword.get(opts, :compress),
      # the call's session: its refs may be passed (SPEC §8.9)
      session: Keyword.get(opts, :session),
      provenance: Keyword.get_lazy(opts, :provenance, &Arguments.default/0),
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
      |> FormatStats.flush()

      {:ok, term, Enum.reverse(ctx.slices), Enum.reverse(ctx.streams || [])}
    catch
      {:bad_arg, error, ctx} ->
        Enum.each(ctx.slices, &Arena.release/1)
        {:error, error}
    end
  end

  @doc false
  # The `slices` list of a call envelope (protocol/SPEC.md §8.3).
  @spec entries([Arena.Slice.t()]) :: [tuple()]
  def entries(slices),
    do: for(s <- slices, do: {s.arena_id, s.offset, s.length, s.generation})

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
      do: slice(:binary, term, [format: :raw], term, ctx, {:raw, :threshold, "a binary"}),
      else: {term, %{ctx | raw: ctx.raw + 1, raw_bytes: ctx.raw_bytes + size}}
  end

  # A list of structs of one schema module: one SSZ list (formats/ssz.md, Batches).
  defp enc([%module{} | _] = term, ctx) do
    if function_exported?(module, :__bb_encode__, 2) and all_of?(term, module),
      do: schema_list(module, term, ctx),
      else: enc_list_value(term, ctx)
  end

  defp enc(term, ctx) when is_list(term), do: enc_list_value(term, ctx)

  defp enc(term, ctx) when is_tuple(term) do
    {list, ctx} = enc_list(Tuple.to_list(term), ctx, [])
    {List.to_tuple(list), ctx}
  end

  # A stream argument (SPEC §8.6): the caller feeds it while the handler runs.
  defp enc(%Bridge.Stream{} = stream, %{streams: streams} = ctx) when is_list(streams) do
    sid = length(streams) + 1
    {{:"$bb_stream", sid}, %{ctx | streams: [{sid, stream} | streams]}}
  end

  defp enc(%Bridge.Stream{} = stream, ctx),
    do: bad_arg(stream, ctx, "a Bridge.Stream only as an argument of a call, not inside one")

  defp enc(%Piece{module: module, data: data, count: n}, ctx),
    do: schema_data(module, data, n, ctx)

  defp enc(%Buffer{data: data}, ctx) when is_binary(data) do
    frame = fn -> {:buffer, data, [format: :raw]} end
    what = {:buffer, "a buffer"}
    place({:"$bb_buffer", data}, byte_size(data), ctx, what, :below_threshold, frame)
  end

  # Tensors, bundles and COO arrays: protocol/formats/tensor.md. The inline term
  # and the slice frame give Python the same value (invariant 7).
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
      {:arrow, stream, [format: :arrow_stream, metadata: Arrow.frame_descriptor(table)]}
    end)
  end

  defp enc(%Buffer{} = b, ctx), do: bad_arg(b, ctx, "a %Bridge.Buffer{} holding a binary")

  # An object the worker keeps, for a call of its session only (SPEC §8.9).
  defp enc(%Bridge.Ref{session: session, id: id}, %{session: session} = ctx),
    do: {{:"$bb_ref", session, id}, ctx}

  defp enc(%Bridge.Ref{} = ref, ctx) do
    error =
      Error.new(:bad_call, :no_session,
        field: :args,
        value: ref,
        message:
          "bad call: no_session: #{inspect(ref)} names an object kept for session " <>
            "#{ref.session}; pass it only to calls of that session (session: the " <>
            "%Bridge.Session{}), while it lasts"
      )

    throw({:bad_arg, error, ctx})
  end

  # Structs of registered custom types: protocol/formats/custom.md. Other
  # structs, and those whose encode fails, go as their plain map (ETF).
  # A result handle stands for the value it keeps (SPEC §15.5): read where it is
  # kept when that is here, else fetched from its node, never through the caller.
  defp enc(%Bridge.Handle{} = handle, ctx) do
    case Bridge.Handle.fetch(handle) do
      {:ok, value} -> enc(value, ctx)
      {:error, error} -> throw({:bad_arg, error, ctx})
    end
  end

  defp enc(%struct{} = value, ctx) when struct not in @builtin do
    if function_exported?(struct, :__bb_encode__, 2),
      do: schema_value(struct, value, ctx),
      else: custom_value(value, ctx)
  end

  # Maps: a column map may go as records (SPEC §10.1).
  defp enc(%{} = map, ctx) do
    case Format.select_map(map, ctx.policy, nested: ctx.nested) do
      :none ->
        enc_map(map, ctx)

      {:etf, reason, what, cells} ->
        enc_map(map, note(ctx, :etf, reason, :erlang.external_size(map), {what, cells}))

      decision ->
        selected(decision, ctx)
    end
  end

  # A pid goes with this node's MAC: Python can send to it, not forge one.
  defp enc(pid, ctx) when is_pid(pid), do: {Bridge.Pids.wire(pid), ctx}

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
  # `reason`), else a slice handle; `frame` gives {handle kind, payload, frame
  # options} and runs only then (building a bundle's payload or a descriptor costs).
  # A slice is counted `reason` for the forms the policy chose (packed, records),
  # `:threshold` for the others, whose form only the threshold decides.
  defp place(inline, size, ctx, {form, what}, reason, frame) do
    if size >= ctx.threshold and size > 0 do
      {kind, payload, opts} = frame.()
      slice_reason = if reason == :below_threshold, do: :threshold, else: reason
      slice(kind, payload, opts, inline, ctx, {form, slice_reason, what})
    else
      {inline, note(ctx, form, reason, size, what)}
    end
  end

  @doc false
  # The encoding `ctx` with one more decision counted (Bridge.format_stats/0).
  @spec note(map(), atom(), atom(), non_neg_integer(), term()) :: map()
  def note(ctx, form, reason, bytes, what),
    do: %{ctx | tally: FormatStats.decided(ctx.tally, :to_python, form, reason, bytes, what)}

  defp enc_list([], ctx, acc), do: {Enum.reverse(acc), ctx}

  defp enc_list([h | t], ctx, acc) do
    {h, ctx} = enc(h, ctx)
    enc_list(t, ctx, [h | acc])
  end

  defp enc_list(tail, ctx, _acc), do: bad_arg(tail, ctx, "a proper list")

  # `{form, reason, what}`: the decision to count — in a slice (the stats form
  # of handle kind `kind`, reason), or inline (form, :too_large | :arena_full) when no
  # slice could take the payload but a control frame can.
  defp slice(kind, payload, frame_opts, inline, ctx, {form, reason, what}) do
    # the slice may hold it compressed (SPEC §15.3); every fallback takes it as it is
    {stored, frame_opts} = Bridge.Codec.frame_payload(ctx.compress, payload, frame_opts)
    size = IO.iodata_length(stored)
    {block, provenance} = Arguments.block(ctx.provenance, payload)
    ctx = %{ctx | provenance: provenance}
    metadata = Keyword.get(frame_opts, :metadata, "")
    frame_opts = [checksum: ctx.arena.checksum, provenance: block] ++ frame_opts

    result =
      if Arena.fits?(ctx.arena.limit, size, byte_size(metadata) + byte_size(block)),
        do: Bridge.Call.Timed.put(ctx.arena, stored, frame_opts),
        else: {:error, Arena.too_large(ctx.arena, size)}

    case result do
      {:ok, s} ->
        handle = {:"$bb_slice", kind, ctx.count}
        ctx = %{ctx | slices: [s | ctx.slices], count: ctx.count + 1}
        {handle, note(ctx, Map.fetch!(@slice_forms, kind), reason, size, what)}

      {:error, %Error{reason: cause} = error}
      when cause in [:too_large, :arena_full, :no_space] ->
        raw = IO.iodata_length(payload)

        if Chunked.chunks?(kind, inline, raw, ctx),
          do: Chunked.send_chunks(kind, payload, inline, ctx, {form, what}, error),
          else: Chunked.send_inline(inline, raw, ctx, {form, what}, error)

      {:error, %Error{} = error} ->
        throw({:bad_arg, error, ctx})
    end
  end

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

  # A proper list of structs of `module` (an improper one is refused as any is).
  defp all_of?([%module{} | rest], module), do: all_of?(rest, module)
  defp all_of?(rest, _module), do: rest == []

  defp reserved?(atom), do: String.starts_with?(Atom.to_string(atom), "$bb_")

  # A typed schema (Bridge.Schema, protocol/formats/ssz.md): its SSZ bytes, inline.
  defp schema_value(module, value, ctx) do
    case Bridge.Schema.to_ssz(value) do
      {:ok, bin} ->
        {{:"$bb_schema", module.__schema__(:name), module.__schema__(:version), bin}, ctx}

      {:error, error} ->
        throw({:bad_arg, error, ctx})
    end
  end

  # Lists: number lists may go packed, record lists as records (SPEC §10.1).
  defp enc_list_value(term, ctx) do
    case Format.select_list(term, ctx.policy, nested: ctx.nested) do
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

  # A long list goes as a stream of pieces when the call can have streams (SPEC §8.6,
  # "Pieces"), each piece written as the worker reads the one before; else at once.
  defp schema_list(module, values, ctx) do
    n = length(values)

    if is_list(ctx.streams) and n >= 2 * @piece do
      sid = length(ctx.streams) + 1
      pieces = Bridge.Schema.Batch.pieces(module, values, n, @piece)
      stream = %{Bridge.Stream.from(pieces, window: @piece_window) | fails_call: true}
      {{:"$bb_pieces", sid, n}, %{ctx | streams: [{sid, stream} | ctx.streams]}}
    else
      case Bridge.Schema.Batch.piece(module, values, n, 0) do
        {:ok, data, []} -> schema_data(module, data, n, ctx)
        {:error, error} -> throw({:bad_arg, error, ctx})
      end
    end
  end

  defp schema_data(module, data, n, ctx) do
    {name, version} = {module.__schema__(:name), module.__schema__(:version)}
    inline = {:"$bb_schema_list", name, version, data}
    what = {:schema, "a list of #{n} #{name}"}
    frame = fn -> {:schema_list, data, Bridge.Schema.Batch.frame_options(name, version)} end
    place(inline, byte_size(data), ctx, what, :below_threshold, frame)
  end

  defp custom_value(value, ctx) do
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
        ctx =
          note(
            ctx,
            :etf,
            :encode_failed,
            :erlang.external_size(value),
            {:struct, value.__struct__}
          )

        enc_map(value, ctx)

      :none ->
        enc_map(value, ctx)
    end
  end
end
