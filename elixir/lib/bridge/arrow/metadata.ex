defmodule Bridge.Arrow.Metadata do
  @moduledoc false
  # Arrow's IPC metadata flatbuffers (format/Schema.fbs, format/Message.fbs) to
  # and from Elixir terms: Message, Schema, Field, the Type union, RecordBatch,
  # DictionaryBatch and BodyCompression. Field numbers below are vtable slots: a
  # field's index in its table's declaration, a union counting twice (type byte,
  # then the table).

  import Bridge.Arrow.Errors, only: [fail: 2]

  alias Bridge.Arrow.{Field, Schema, Type}
  alias Bridge.Arrow.Metadata.Types
  alias Bridge.Arrow.FlatBuffer.{Reader, Writer}

  @v4 3
  @v5 4

  # MessageHeader union
  @h_schema 1
  @h_dictionary_batch 2
  @h_record_batch 3

  @max_depth 64

  @type record_batch :: %{
          length: integer(),
          nodes: binary(),
          buffers: binary(),
          compression: nil | :lz4_frame | :zstd,
          variadic: [integer()],
          version: integer()
        }
  @type block :: {integer(), integer(), integer()}
  @type message ::
          {:schema, Schema.t(), [integer()]}
          | {:record_batch, record_batch()}
          | {:dictionary_batch, integer(), record_batch(), boolean()}

  # ------------------------------------------------------------------ reading

  @doc false
  @spec read_message(binary(), keyword()) :: {message(), integer()}
  def read_message(bytes, opts) do
    msg = Reader.root(bytes, :message)
    version = Reader.scalar(msg, 0, :i16, 0, :version)

    if version < @v4 or version > @v5,
      do: fail(:unsupported_version, field: :version, value: version, limit: "V4 or V5")

    body_length = Reader.scalar(msg, 3, :i64, 0, :body_length)

    if body_length < 0,
      do: fail(:bad_length, field: :body_length, value: body_length, limit: ">= 0")

    header_type = Reader.scalar(msg, 1, :u8, 0, :header_type)
    header = Reader.table(msg, 2, :header)

    if header == nil and header_type != 0,
      do: fail(:bad_flatbuffer, field: :header, value: nil, limit: "a table")

    message =
      case header_type do
        @h_schema ->
          read_schema(header, opts)

        @h_record_batch ->
          {:record_batch, read_record_batch(header, version)}

        @h_dictionary_batch ->
          id = Reader.scalar(header, 0, :i64, 0, :dictionary_id)

          data =
            Reader.table(header, 1, :dictionary_data) ||
              fail(:bad_flatbuffer, field: :dictionary_data, value: nil, limit: "a table")

          delta = Reader.scalar(header, 2, :bool, false, :is_delta)
          {:dictionary_batch, id, read_record_batch(data, version), delta}

        other ->
          fail(:unsupported_message,
            field: :header_type,
            value: other,
            limit: "Schema, DictionaryBatch or RecordBatch"
          )
      end

    {message, body_length}
  end

  defp read_schema(t, opts) do
    if Reader.scalar(t, 0, :i16, 0, :endianness) != 0,
      do: fail(:big_endian, field: :endianness, value: :big, limit: "little")

    budget = Keyword.get(opts, :max_fields, 100_000)

    {fields, {_budget, dict_ids}} =
      t
      |> Reader.tables(1, :fields)
      |> Enum.map_reduce({budget, []}, &read_field(&1, 0, &2))

    schema = %Schema{fields: fields, metadata: read_key_values(t, 2)}
    {:schema, schema, Enum.reverse(dict_ids)}
  end

  defp read_field(t, depth, {budget, ids}) do
    if depth > @max_depth, do: fail(:too_deep, field: :children, value: depth, limit: @max_depth)
    if budget <= 0, do: fail(:too_many_fields, field: :fields, value: :exceeded, limit: 0)

    name = Types.utf8!(Reader.string(t, 0, :field_name) || "", :field_name)
    nullable = Reader.scalar(t, 1, :bool, false, :nullable)
    type_id = Reader.scalar(t, 2, :u8, 0, :type_type)
    type_table = Reader.table(t, 3, :type)
    children = Reader.tables(t, 5, :children)

    {children, {budget, ids}} =
      Enum.map_reduce(children, {budget - 1, ids}, &read_field(&1, depth + 1, &2))

    type = Types.read(type_id, type_table, children)

    {type, ids} =
      case Reader.table(t, 4, :dictionary) do
        nil ->
          {type, ids}

        dict ->
          if Type.dictionary?(type),
            do:
              fail(:unsupported_type,
                field: :dictionary,
                value: type,
                limit: "values without dictionaries"
              )

          id = Reader.scalar(dict, 0, :i64, 0, :dictionary_id)

          index =
            case Reader.table(dict, 1, :index_type) do
              nil -> {:s, 32}
              int -> Types.int(int)
            end

          ordered = Reader.scalar(dict, 2, :bool, false, :is_ordered)
          {{:dictionary, index, type, ordered}, [id | ids]}
      end

    field = %Field{name: name, type: type, nullable: nullable, metadata: read_key_values(t, 6)}
    {field, {budget, ids}}
  end

  defp read_key_values(t, slot) do
    for kv <- Reader.tables(t, slot, :custom_metadata) do
      key = Reader.string(kv, 0, :metadata_key) || ""
      value = Reader.string(kv, 1, :metadata_value) || ""
      {:binary.copy(key), :binary.copy(value)}
    end
  end

  defp read_record_batch(t, version) do
    length = Reader.scalar(t, 0, :i64, 0, :length)
    if length < 0, do: fail(:bad_length, field: :length, value: length, limit: ">= 0")

    compression =
      case Reader.table(t, 3, :compression) do
        nil ->
          nil

        c ->
          if Reader.scalar(c, 1, :i8, 0, :compression_method) != 0,
            do: fail(:unsupported_compression, field: :compression_method, value: :unknown)

          case Reader.scalar(c, 0, :i8, 0, :compression_codec) do
            0 -> :lz4_frame
            1 -> :zstd
            other -> fail(:unsupported_compression, field: :compression_codec, value: other)
          end
      end

    variadic =
      for <<n::little-signed-64 <- Reader.vector_bytes(t, 4, 8, :variadic_buffer_counts) || "">>,
        do: n

    %{
      length: length,
      nodes: Reader.vector_bytes(t, 1, 16, :nodes) || "",
      buffers: Reader.vector_bytes(t, 2, 16, :buffers) || "",
      compression: compression,
      variadic: variadic,
      version: version
    }
  end

  # ------------------------------------------------------------------ writing

  @doc false
  # The Message flatbuffer for a schema; dictionary ids are given in pre-order.
  @spec schema_message(Schema.t()) :: binary()
  def schema_message(%Schema{} = schema), do: message(@h_schema, schema_table(schema), 0)

  defp schema_table(%Schema{fields: fields, metadata: metadata}) do
    {fields, _next_id} = Enum.map_reduce(fields, 0, &write_field/2)
    [{0, :i16, 0}, {1, :tables, fields}] ++ key_values(2, metadata)
  end

  @doc false
  # The Footer flatbuffer of an IPC file: the schema, then the Blocks
  # ({offset, metadata length with its prefix, body length}) of the
  # dictionary batches and of the record batches.
  @spec footer(Schema.t(), [block()], [block()]) :: binary()
  def footer(%Schema{} = schema, dictionaries, batches) do
    Writer.build([
      {0, :i16, @v5},
      {1, :table, schema_table(schema)},
      {2, :structs, blocks(dictionaries)},
      {3, :structs, blocks(batches)}
    ])
  end

  defp blocks(list) do
    bytes =
      for {off, meta, body} <- list,
          into: <<>>,
          do: <<off::little-64, meta::little-32, 0::32, body::little-64>>

    {bytes, length(list)}
  end

  @doc false
  # A Footer: {schema, dictionary ids, dictionary blocks, record batch blocks}.
  @spec read_footer(binary(), keyword()) :: {Schema.t(), [integer()], [block()], [block()]}
  def read_footer(bytes, opts) do
    footer = Reader.root(bytes, :footer)
    version = Reader.scalar(footer, 0, :i16, 0, :version)

    if version < @v4 or version > @v5,
      do: fail(:unsupported_version, field: :version, value: version, limit: "V4 or V5")

    schema =
      Reader.table(footer, 1, :schema) ||
        fail(:missing_schema, field: :footer, value: nil, limit: "a Schema")

    {:schema, schema, dict_ids} = read_schema(schema, opts)

    {schema, dict_ids, read_blocks(footer, 2, :dictionaries),
     read_blocks(footer, 3, :record_batches)}
  end

  defp read_blocks(footer, slot, field) do
    bytes = Reader.vector_bytes(footer, slot, 24, field) || ""

    for <<off::little-signed-64, meta::little-signed-32, _::32, body::little-signed-64 <- bytes>>,
      do: {off, meta, body}
  end

  @doc false
  @spec record_batch_message(
          integer(),
          [{integer(), integer()}],
          [{integer(), integer()}],
          integer(),
          [integer()]
        ) ::
          binary()
  def record_batch_message(length, nodes, buffers, body_length, variadic) do
    message(@h_record_batch, record_batch(length, nodes, buffers, variadic), body_length)
  end

  @doc false
  @spec dictionary_batch_message(
          integer(),
          integer(),
          list(),
          list(),
          [integer()],
          boolean(),
          integer()
        ) :: binary()
  def dictionary_batch_message(id, length, nodes, buffers, variadic, delta, body_length) do
    data = record_batch(length, nodes, buffers, variadic)
    batch = [{0, :i64, id}, {1, :table, data}, {2, :bool, delta}]
    message(@h_dictionary_batch, batch, body_length)
  end

  defp message(header_type, header, body_length) do
    Writer.build([
      {0, :i16, @v5},
      {1, :u8, header_type},
      {2, :table, header},
      {3, :i64, body_length}
    ])
  end

  defp record_batch(length, nodes, buffers, variadic) do
    counts =
      if variadic == [],
        do: [],
        else: [
          {4, :structs, {for(n <- variadic, into: <<>>, do: <<n::little-64>>), length(variadic)}}
        ]

    [
      {0, :i64, length},
      {1, :structs, {for({a, b} <- nodes, into: <<>>, do: pair(a, b)), length(nodes)}},
      {2, :structs, {for({a, b} <- buffers, into: <<>>, do: pair(a, b)), length(buffers)}}
      | counts
    ]
  end

  defp pair(a, b), do: <<a::little-signed-64, b::little-signed-64>>

  defp write_field(%Field{name: name, type: type, nullable: nullable, metadata: md}, next_id) do
    {value_type, dictionary, next_id} =
      case type do
        {:dictionary, index, value, ordered} ->
          dict = [{0, :i64, next_id}, {1, :table, Types.int_table(index)}, {2, :bool, ordered}]
          {value, [{4, :table, dict}], next_id + 1}

        _ ->
          {type, [], next_id}
      end

    {type_id, type_table, children} = Types.write(value_type)
    {children, next_id} = Enum.map_reduce(children, next_id, &write_field/2)

    fields =
      [
        {0, :string, name},
        {1, :bool, nullable},
        {2, :u8, type_id},
        {3, :table, type_table},
        {5, :tables, children}
      ] ++ dictionary ++ key_values(6, md)

    {fields, next_id}
  end

  defp key_values(_slot, []), do: []

  defp key_values(slot, pairs) do
    [{slot, :tables, for({k, v} <- pairs, do: [{0, :string, k}, {1, :string, v}])}]
  end
end
