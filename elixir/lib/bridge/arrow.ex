defmodule Bridge.Arrow do
  @moduledoc """
  An Arrow IPC *stream* reader and writer in Elixir (protocol/formats/arrow.md): a Schema
  message, dictionary batches, record batches and the end-of-stream marker,
  each message framed as `0xFFFFFFFF`, a 32-bit metadata length, the Message
  flatbuffer and the body.

  `encode/2` writes every message at a 64-byte-aligned stream offset and every
  buffer at a 64-byte-aligned body offset, so a stream placed in a slice's
  payload (itself 64-byte aligned) has all its buffers 64-byte aligned in
  memory. `decode/2` reads any stream of the supported types written by
  Arrow ≥ 0.15 (and the older framing without the continuation marker); it
  checks every length and offset against the input before use and returns a
  typed error for anything malformed or unsupported. Bodies compressed with
  LZ4_FRAME are decompressed in Elixir, bodies compressed with ZSTD by
  libzstd in the NIF (`Bridge.NIF.zstd_decompress/2`). Decoded fixed-width
  buffers are sub-binaries of the input: no copy is made until values are
  asked for (`Bridge.Table.to_rows/2`).

  Types are listed in `Bridge.Arrow.Type`.

  ## Examples

      iex> table = Bridge.Table.from_columns!(id: [1, 2, 3], name: ["a", nil, "ç"])
      iex> stream = Bridge.Arrow.encode(table)
      iex> {:ok, back} = Bridge.Arrow.decode(stream)
      iex> Bridge.Table.to_columns(back)
      %{"id" => [1, 2, 3], "name" => ["a", nil, "ç"]}
      iex> {:error, e} = Bridge.Arrow.decode(binary_part(stream, 0, 100))
      iex> {e.kind, e.reason}
      {:arrow, :truncated}
  """

  import Bitwise

  alias Bridge.Arrow.{Array, Builder, Errors, Field, Metadata, RecordBatch, Schema, Values}
  alias Bridge.{Error, Table}

  @continuation <<0xFFFFFFFF::32>>
  @eos <<0xFFFFFFFF::32, 0::32>>

  @doc """
  Encodes a table as an Arrow IPC stream: one record batch per chunk of the
  table's columns (a table built from terms has one), preceded by the
  dictionaries of dictionary-typed columns whenever they change.

  Raises `Bridge.Error` (kind `:bad_call`) only for a hand-built
  `%Bridge.Table{}` whose columns do not agree with its schema.

  ## Examples

      iex> stream = Bridge.Arrow.encode(Bridge.Table.from_columns!(x: [true]))
      iex> binary_part(stream, byte_size(stream) - 8, 8)
      <<255, 255, 255, 255, 0, 0, 0, 0>>
  """
  @spec encode(Table.t()) :: binary()
  def encode(%Table{} = table) do
    check_table!(table)
    {schema_io, pos} = frame(Metadata.schema_message(table.schema), [], 0, 0)

    {batches_io, _pos, _dicts} =
      table
      |> batches()
      |> Enum.reduce({[], pos, %{}}, fn {length, arrays}, {io, pos, dicts} ->
        {dict_io, pos, dicts} = dictionary_messages(arrays, pos, dicts)
        {nodes, buffers} = RecordBatch.unload(arrays)
        {body, body_len, spans} = RecordBatch.layout_body(buffers)
        meta = Metadata.record_batch_message(length, nodes, spans, body_len)
        {batch_io, pos} = frame(meta, body, body_len, pos)
        {[io, dict_io, batch_io], pos, dicts}
      end)

    IO.iodata_to_binary([schema_io, batches_io, @eos])
  end

  defp batches(%Table{columns: [], num_rows: 0}), do: []
  defp batches(%Table{columns: [], num_rows: n}), do: [{n, []}]

  defp batches(%Table{columns: columns}) do
    columns
    |> Enum.zip()
    |> Enum.map(fn chunk -> {hd(Tuple.to_list(chunk)).length, Tuple.to_list(chunk)} end)
  end

  defp check_table!(%Table{schema: %Schema{fields: fields}, columns: columns, num_rows: n}) do
    chunk_lengths = Enum.map(columns, fn chunks -> Enum.map(chunks, & &1.length) end)

    ok =
      length(fields) == length(columns) and
        Enum.all?(Enum.zip(fields, columns), fn {f, chunks} ->
          Enum.all?(chunks, &(&1.type == f.type))
        end) and
        Enum.uniq(chunk_lengths) |> length() <= 1 and
        (columns == [] or Enum.sum(hd(chunk_lengths)) == n)

    unless ok do
      raise Errors.value(:bad_table,
              field: :columns,
              value: chunk_lengths,
              hint: "build tables with Bridge.Table.from_rows/2 or from_columns/2"
            )
    end
  end

  # Dictionary batches for the dictionary arrays among `arrays` (pre-order, as
  # Metadata numbers them), emitted when an id's dictionary differs from the
  # last one written.
  defp dictionary_messages(arrays, pos, dicts) do
    {dict_arrays, _} = collect_dictionaries(arrays, {[], 0})

    Enum.reduce(Enum.reverse(dict_arrays), {[], pos, dicts}, fn {id, dict}, {io, pos, dicts} ->
      if Map.get(dicts, id) == dict do
        {io, pos, dicts}
      else
        {nodes, buffers} = RecordBatch.unload([dict])
        {body, body_len, spans} = RecordBatch.layout_body(buffers)
        meta = Metadata.dictionary_batch_message(id, dict.length, nodes, spans, false, body_len)
        {msg_io, pos} = frame(meta, body, body_len, pos)
        {[io, msg_io], pos, Map.put(dicts, id, dict)}
      end
    end)
  end

  defp collect_dictionaries(arrays, acc) do
    Enum.reduce(arrays, acc, fn
      %Array{dictionary: %Array{} = d}, {found, id} -> {[{id, d} | found], id + 1}
      %Array{children: children}, acc -> collect_dictionaries(children, acc)
    end)
  end

  # One framed message starting at stream offset `pos`, padded so that the
  # body (and so the next message) starts 64-byte aligned.
  defp frame(meta, body, body_len, pos) do
    meta_len = (pos + 8 + byte_size(meta) + 63 &&& bnot(63)) - pos - 8
    padding = <<0::size((meta_len - byte_size(meta)) * 8)>>
    io = [@continuation, <<meta_len::little-32>>, meta, padding, body]
    {io, pos + 8 + meta_len + body_len}
  end

  @doc false
  # The metadata of a frame of format arrow_stream holding `table`: the descriptor of
  # protocol/formats/arrow.md.
  @spec frame_descriptor(Table.t()) :: binary()
  def frame_descriptor(%Table{schema: schema, columns: columns, num_rows: n}) do
    fields =
      for f <- schema.fields, do: {f.name, Bridge.Arrow.Type.describe(f.type), f.nullable == true}

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

  @doc """
  Decodes an Arrow IPC stream into a `Bridge.Table`.

  The stream ends at the end-of-stream marker; bytes after it are ignored.

  Options:

    * `:require_eos` — refuse a stream that ends without the end-of-stream
      marker, even on a message boundary (default `true`)
    * `:validate_utf8` — check that utf8 columns hold valid UTF-8 split at
      character boundaries (default `true`)
    * `:max_rows` — the most rows accepted over all batches, and the longest
      array, nested ones included (default 2^32)
    * `:max_fields` — the most schema fields, nested ones included (default 100_000)
    * `:max_decompressed` — the largest decompressed buffer (default 2^32 bytes)

  Errors are `%Bridge.Error{kind: :arrow}` with reasons such as `:truncated`,
  `:bad_flatbuffer`, `:bad_length`, `:buffer_out_of_bounds`,
  `:buffer_too_short`, `:bad_offsets`, `:bad_utf8`, `:missing_schema`,
  `:unsupported_type` and `:unsupported_compression`.

  ## Examples

      iex> {:error, e} = Bridge.Arrow.decode(<<1, 2, 3>>)
      iex> e.reason
      :truncated
  """
  @spec decode(binary(), keyword()) :: {:ok, Table.t()} | {:error, Error.t()}
  def decode(stream, opts \\ [])

  def decode(stream, opts) when is_binary(stream) and is_list(opts) do
    Errors.catching(fn ->
      state = %{
        schema: nil,
        dict_ids: [],
        dict_fields: %{},
        dictionaries: %{},
        batches: [],
        rows: 0,
        opts: opts
      }

      state = read_messages(stream, 0, state)

      case state.schema do
        nil -> Errors.fail(:missing_schema, field: :stream, value: byte_size(stream))
        schema -> {:ok, table(schema, Enum.reverse(state.batches), state.rows)}
      end
    end)
  end

  def decode(stream, _opts) do
    {:error, Errors.value(:wrong_type, field: :stream, value: stream, limit: "a binary")}
  end

  @doc "Like `decode/2`, raising `Bridge.Error`."
  @spec decode!(binary(), keyword()) :: Table.t()
  def decode!(stream, opts \\ []) do
    case decode(stream, opts) do
      {:ok, table} -> table
      {:error, error} -> raise error
    end
  end

  defp table(%Schema{fields: fields} = schema, batches, rows) do
    columns =
      case batches do
        [] -> Enum.map(fields, fn _ -> [] end)
        _ -> batches |> Enum.zip() |> Enum.map(&Tuple.to_list/1)
      end

    columns = if fields == [], do: [], else: columns
    %Table{schema: schema, columns: columns, num_rows: rows}
  end

  defp read_messages(stream, pos, state) do
    case stream do
      <<_::binary-size(pos)>> ->
        if Keyword.get(state.opts, :require_eos, true),
          do:
            Errors.fail(:truncated,
              field: :end_of_stream,
              value: pos,
              hint: "the stream ends without its end-of-stream marker; it was cut short"
            ),
          else: state

      <<_::binary-size(pos), @eos, _::binary>> ->
        state

      <<_::binary-size(pos), @continuation, len::little-signed-32, _::binary>> ->
        read_message(stream, pos + 8, len, state)

      <<_::binary-size(pos), @continuation, _::binary>> ->
        Errors.fail(:truncated, field: :message_length, value: byte_size(stream) - pos, limit: 8)

      # Arrow < 0.15 framing: the length without the continuation marker.
      <<_::binary-size(pos), 0::32, _::binary>> ->
        state

      <<_::binary-size(pos), len::little-signed-32, _::binary>> ->
        read_message(stream, pos + 4, len, state)

      _ ->
        Errors.fail(:truncated, field: :message_length, value: byte_size(stream) - pos, limit: 4)
    end
  end

  defp read_message(stream, start, len, state) do
    size = byte_size(stream)
    if len < 0, do: Errors.fail(:bad_length, field: :metadata_length, value: len, limit: ">= 0")

    if start + len > size,
      do: Errors.fail(:truncated, field: :metadata_length, value: len, limit: size - start)

    {message, body_len} = Metadata.read_message(binary_part(stream, start, len), state.opts)
    body_start = start + len

    if body_start + body_len > size,
      do: Errors.fail(:truncated, field: :body_length, value: body_len, limit: size - body_start)

    body = binary_part(stream, body_start, body_len)
    state = handle(message, body, state)
    read_messages(stream, body_start + body_len, state)
  end

  defp handle({:schema, schema, dict_ids}, _body, %{schema: nil} = state) do
    dict_fields = dictionary_fields(schema.fields, dict_ids)
    %{state | schema: schema, dict_ids: dict_ids, dict_fields: dict_fields}
  end

  defp handle({:schema, _, _}, _body, _state) do
    Errors.fail(:unexpected_message, field: :header_type, value: :schema, limit: "one Schema")
  end

  defp handle(_message, _body, %{schema: nil}) do
    Errors.fail(:missing_schema, field: :header_type, value: :batch, limit: "Schema first")
  end

  defp handle({:record_batch, batch}, body, state) do
    rows = state.rows + batch.length
    max = Keyword.get(state.opts, :max_rows, 1 <<< 32)

    if rows > max,
      do:
        Errors.fail(:too_many_rows,
          field: :length,
          value: rows,
          limit: max,
          hint: "raise the :max_rows option if this size is expected"
        )

    arrays =
      RecordBatch.load(
        state.schema.fields,
        state.dict_ids,
        batch,
        body,
        state.dictionaries,
        state.opts
      )

    %{state | batches: [arrays | state.batches], rows: rows}
  end

  defp handle({:dictionary_batch, id, batch, delta}, body, state) do
    field =
      case state.dict_fields do
        %{^id => field} -> field
        _ -> Errors.fail(:unknown_dictionary, field: :dictionary_id, value: id)
      end

    [dict] = RecordBatch.load([field], [], batch, body, %{}, state.opts)

    dict =
      case state.dictionaries do
        %{^id => old} when delta -> concat(old, dict, field)
        _ -> dict
      end

    %{state | dictionaries: Map.put(state.dictionaries, id, dict)}
  end

  # id => a field of the dictionary's value type. `ids` are the dictionary
  # ids in pre-order, as Metadata reads and writes them; fields may share an id
  # only if they share the value type.
  defp dictionary_fields(fields, ids) do
    fields
    |> dictionary_values([])
    |> Enum.reverse()
    |> Enum.zip(ids)
    |> Enum.reduce(%{}, fn {field, id}, acc ->
      case acc do
        %{^id => %Field{type: type}} when type != field.type ->
          Errors.fail(:bad_dictionary, field: :dictionary_id, value: id, limit: "one value type")

        _ ->
          Map.put(acc, id, field)
      end
    end)
  end

  defp dictionary_values(fields, acc) do
    Enum.reduce(fields, acc, fn
      %Field{type: {:dictionary, _index, value, _}}, acc ->
        [Field.new("", value) | acc]

      %Field{type: {kind, child}}, acc when kind in [:list, :large_list] ->
        dictionary_values([child], acc)

      _, acc ->
        acc
    end)
  end

  # A delta dictionary batch appends to the dictionary: rebuild the values.
  defp concat(old, new, field) do
    values = Values.to_list(old, temporal: :integer) ++ Values.to_list(new, temporal: :integer)
    Builder.build(values, %{field | nullable: true}, "dictionary")
  end
end
