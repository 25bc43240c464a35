defmodule Bridge.Arrow.IPCWriter do
  @moduledoc false
  # A table as Arrow IPC messages, in the stream format (a Schema message,
  # dictionary and record batches, the end-of-stream marker) or the file
  # format (the magic `ARROW1`, the same messages, then a Footer naming the
  # schema and the place of every dictionary and record batch, its length and
  # the magic again). Every message starts at a 64-byte-aligned offset and
  # every buffer at a 64-byte-aligned body offset.

  import Bitwise

  alias Bridge.Arrow.{Array, Errors, Metadata, RecordBatch, Schema}
  alias Bridge.Table

  @continuation <<0xFFFFFFFF::32>>
  @eos <<0xFFFFFFFF::32, 0::32>>
  @magic "ARROW1"

  @doc false
  @spec write(Table.t(), :stream | :file) :: binary()
  def write(%Table{} = table, format) do
    check_table!(table)
    start = if format == :file, do: 8, else: 0
    {schema_io, pos} = frame(Metadata.schema_message(table.schema), [], 0, start)

    {io, _pos, _dicts, blocks} =
      table
      |> batches()
      |> Enum.reduce({[], pos, %{}, {[], []}}, fn {length, arrays}, {io, pos, dicts, blocks} ->
        {dict_io, pos, dicts, blocks} = dictionary_messages(arrays, pos, dicts, blocks, format)
        {nodes, buffers, variadic} = RecordBatch.unload(arrays)
        {body, body_len, spans} = RecordBatch.layout_body(buffers)
        meta = Metadata.record_batch_message(length, nodes, spans, body_len, variadic)
        {batch_io, next} = frame(meta, body, body_len, pos)
        {dict_blocks, batch_blocks} = blocks
        blocks = {dict_blocks, [block(pos, next, body_len) | batch_blocks]}
        {[io, dict_io, batch_io], next, dicts, blocks}
      end)

    case format do
      :stream ->
        IO.iodata_to_binary([schema_io, io, @eos])

      :file ->
        {dict_blocks, batch_blocks} = blocks

        footer =
          Metadata.footer(table.schema, Enum.reverse(dict_blocks), Enum.reverse(batch_blocks))

        IO.iodata_to_binary([
          @magic,
          <<0, 0>>,
          schema_io,
          io,
          @eos,
          footer,
          <<byte_size(footer)::little-32>>,
          @magic
        ])
    end
  end

  # A Footer Block: where a message starts, the length of its prefix and
  # metadata, and of its body.
  defp block(start, next, body_len), do: {start, next - start - body_len, body_len}

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
  # Metadata numbers them): a dictionary, then its deltas (Array.deltas) as
  # delta batches. What was written for an id is not written again: when only
  # deltas were added, only they are; when the dictionary itself changed, it is
  # written whole (a replacement), which the file format does not have.
  defp dictionary_messages(arrays, pos, dicts, blocks, format) do
    {dict_arrays, _} = collect_dictionaries(arrays, {[], 0})
    acc = {[], pos, dicts, blocks}

    Enum.reduce(Enum.reverse(dict_arrays), acc, fn {id, dict}, {io, pos, dicts, blocks} ->
      base = %{dict | deltas: []}

      {messages, replaced?} =
        case dicts do
          %{^id => {^base, done}} ->
            if Enum.take(dict.deltas, length(done)) == done,
              do: {Enum.map(Enum.drop(dict.deltas, length(done)), &{&1, true}), false},
              else: {[{base, false} | Enum.map(dict.deltas, &{&1, true})], true}

          %{^id => _} ->
            {[{base, false} | Enum.map(dict.deltas, &{&1, true})], true}

          _ ->
            {[{base, false} | Enum.map(dict.deltas, &{&1, true})], false}
        end

      if replaced? and format == :file,
        do:
          raise(
            Errors.value(:dictionary_replacement,
              field: :dictionary_id,
              value: id,
              hint:
                "the IPC file format has one dictionary per field (deltas aside); write the " <>
                  "stream format, or give every batch of the column the same dictionary"
            )
          )

      {io, pos, blocks} =
        Enum.reduce(messages, {io, pos, blocks}, fn {array, delta?}, {io, pos, blocks} ->
          {msg_io, next, body_len} = dictionary_message(id, array, delta?, pos)
          {dict_blocks, batch_blocks} = blocks
          {[io, msg_io], next, {[block(pos, next, body_len) | dict_blocks], batch_blocks}}
        end)

      {io, pos, Map.put(dicts, id, {base, dict.deltas}), blocks}
    end)
  end

  defp dictionary_message(id, array, delta?, pos) do
    {nodes, buffers, variadic} = RecordBatch.unload([array])
    {body, body_len, spans} = RecordBatch.layout_body(buffers)

    meta =
      Metadata.dictionary_batch_message(
        id,
        array.length,
        nodes,
        spans,
        variadic,
        delta?,
        body_len
      )

    {msg_io, next} = frame(meta, body, body_len, pos)
    {msg_io, next, body_len}
  end

  defp collect_dictionaries(arrays, acc) do
    Enum.reduce(arrays, acc, fn
      %Array{dictionary: %Array{} = d}, {found, id} -> {[{id, d} | found], id + 1}
      %Array{children: children}, acc -> collect_dictionaries(children, acc)
    end)
  end

  # One framed message starting at offset `pos`, padded so that the body (and
  # so the next message) starts 64-byte aligned.
  defp frame(meta, body, body_len, pos) do
    meta_len = (pos + 8 + byte_size(meta) + 63 &&& bnot(63)) - pos - 8
    padding = <<0::size((meta_len - byte_size(meta)) * 8)>>
    io = [@continuation, <<meta_len::little-32>>, meta, padding, body]
    {io, pos + 8 + meta_len + body_len}
  end
end
