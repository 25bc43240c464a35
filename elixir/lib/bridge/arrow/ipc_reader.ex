defmodule Bridge.Arrow.IPCReader do
  @moduledoc false
  # Arrow IPC messages to a Bridge.Table: the stream format (messages until
  # the end-of-stream marker) and the file format (the magic `ARROW1`, then
  # the messages its Footer points at: the schema, the dictionary batches and
  # the record batches in the Footer's order). Errors are thrown
  # (Bridge.Arrow.Errors) and caught by Bridge.Arrow.decode/2.

  alias Bridge.Arrow.{Array, Checks, Errors, Field, Metadata, RecordBatch, Schema}
  alias Bridge.Table

  @continuation <<0xFFFFFFFF::32>>
  @eos <<0xFFFFFFFF::32, 0::32>>
  @magic "ARROW1"

  @doc false
  @spec read(binary(), keyword()) :: Table.t()
  def read(bin, opts) do
    state = %{
      schema: nil,
      dict_ids: [],
      dict_fields: %{},
      dictionaries: %{},
      batches: [],
      rows: 0,
      file?: false,
      opts: opts
    }

    state =
      case bin do
        <<@magic, _::binary>> -> read_file(bin, %{state | file?: true})
        _ -> read_messages(bin, 0, state)
      end

    case state.schema do
      nil -> Errors.fail(:missing_schema, field: :stream, value: byte_size(bin))
      schema -> table(schema, Enum.reverse(state.batches), state.rows)
    end
  end

  # ------------------------------------------------------------- file format

  # ARROW1, two bytes of padding, the messages, the Footer, its int32 length,
  # ARROW1. Only what the Footer names is read, in its order.
  defp read_file(bin, state) do
    size = byte_size(bin)

    footer_len =
      case bin do
        <<_::binary-size(size - 10), len::little-signed-32, @magic>> when size >= 18 ->
          len

        _ ->
          Errors.fail(:truncated,
            field: :file_trailer,
            value: size,
            hint: "an Arrow IPC file ends with its footer length and ARROW1; it was cut short"
          )
      end

    footer_start = size - 10 - footer_len

    if footer_len < 0 or footer_start < 8,
      do: Errors.fail(:bad_length, field: :footer_length, value: footer_len, limit: size - 18)

    footer = binary_part(bin, footer_start, footer_len)
    {schema, dict_ids, dict_blocks, batch_blocks} = Metadata.read_footer(footer, state.opts)
    state = handle({:schema, schema, dict_ids}, "", state)

    state =
      Enum.reduce(dict_blocks, state, &read_block(bin, &1, footer_start, :dictionary_batch, &2))

    Enum.reduce(batch_blocks, state, &read_block(bin, &1, footer_start, :record_batch, &2))
  end

  defp read_block(bin, {offset, meta_len, body_len}, limit, kind, state) do
    if offset < 8 or meta_len < 8 or body_len < 0 or offset + meta_len + body_len > limit,
      do:
        Errors.fail(:bad_block,
          field: :block,
          value: {offset, meta_len, body_len},
          limit: limit,
          hint: "the file's footer points outside the file"
        )

    region = binary_part(bin, offset, meta_len + body_len)

    {start, len} =
      case region do
        <<@continuation, len::little-signed-32, _::binary>> -> {8, len}
        <<len::little-signed-32, _::binary>> -> {4, len}
      end

    if len < 0 or start + len > meta_len,
      do: Errors.fail(:bad_block, field: :metadata_length, value: len, limit: meta_len - start)

    {message, body_length} = Metadata.read_message(binary_part(region, start, len), state.opts)

    if body_length > body_len,
      do: Errors.fail(:bad_block, field: :body_length, value: body_length, limit: body_len)

    if elem(message, 0) != kind,
      do: Errors.fail(:unexpected_message, field: :block, value: elem(message, 0), limit: kind)

    handle(message, binary_part(region, meta_len, body_length), state)
  end

  # ----------------------------------------------------------- stream format

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
    Checks.rows!(rows, state.opts, :length)

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

    entry =
      case state.dictionaries do
        # A delta appends: kept as a chunk of its own (Array.deltas), never rebuilt.
        %{^id => %Array{} = old} when delta ->
          total = old.length + Enum.sum(Enum.map(old.deltas, & &1.length)) + dict.length
          Checks.rows!(total, state.opts, :dictionary_length)

          %{old | deltas: old.deltas ++ [dict]}

        %{^id => _} when state.file? ->
          Errors.fail(:bad_dictionary,
            field: :dictionary_id,
            value: id,
            hint:
              "an IPC file has one dictionary per field (deltas aside); this one replaces it, " <>
                "which only the stream format allows"
          )

        _ ->
          dict
      end

    %{state | dictionaries: Map.put(state.dictionaries, id, entry)}
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

      %Field{type: type}, acc ->
        dictionary_values(Bridge.Arrow.Type.children(type), acc)
    end)
  end
end
