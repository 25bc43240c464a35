defmodule Bridge.Arrow.Metadata do
  @moduledoc false
  # Arrow's IPC metadata flatbuffers (format/Schema.fbs, format/Message.fbs) to
  # and from Elixir terms: Message, Schema, Field, the Type union, RecordBatch,
  # DictionaryBatch and BodyCompression. Field numbers below are vtable slots: a
  # field's index in its table's declaration, a union counting twice (type byte,
  # then the table).

  import Bridge.Arrow.Errors, only: [fail: 2]

  alias Bridge.Arrow.{Field, Schema, Type}
  alias Bridge.Arrow.FlatBuffer.{Reader, Writer}

  @v4 3
  @v5 4

  # MessageHeader union
  @h_schema 1
  @h_dictionary_batch 2
  @h_record_batch 3

  # Type union
  @type_names %{
    1 => :null,
    2 => :int,
    3 => :floating_point,
    4 => :binary,
    5 => :utf8,
    6 => :bool,
    7 => :decimal,
    8 => :date,
    9 => :time,
    10 => :timestamp,
    11 => :interval,
    12 => :list,
    13 => :struct,
    14 => :union,
    15 => :fixed_size_binary,
    16 => :fixed_size_list,
    17 => :map,
    18 => :duration,
    19 => :large_binary,
    20 => :large_utf8,
    21 => :large_list,
    22 => :run_end_encoded,
    23 => :binary_view,
    24 => :utf8_view,
    25 => :list_view,
    26 => :large_list_view
  }

  @max_depth 64

  @type record_batch :: %{
          length: integer(),
          nodes: binary(),
          buffers: binary(),
          compression: nil | :lz4_frame | :zstd
        }
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
          {:record_batch, read_record_batch(header)}

        @h_dictionary_batch ->
          id = Reader.scalar(header, 0, :i64, 0, :dictionary_id)

          data =
            Reader.table(header, 1, :dictionary_data) ||
              fail(:bad_flatbuffer, field: :dictionary_data, value: nil, limit: "a table")

          delta = Reader.scalar(header, 2, :bool, false, :is_delta)
          {:dictionary_batch, id, read_record_batch(data), delta}

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

    name = utf8!(Reader.string(t, 0, :field_name) || "", :field_name)
    nullable = Reader.scalar(t, 1, :bool, false, :nullable)
    type_id = Reader.scalar(t, 2, :u8, 0, :type_type)
    type_table = Reader.table(t, 3, :type)
    children = Reader.tables(t, 5, :children)

    {children, {budget, ids}} =
      Enum.map_reduce(children, {budget - 1, ids}, &read_field(&1, depth + 1, &2))

    type = read_type(type_id, type_table, children)

    {type, ids} =
      case Reader.table(t, 4, :dictionary) do
        nil ->
          {type, ids}

        dict ->
          if match?({:dictionary, _, _, _}, type) or not dictionary_value?(type),
            do: fail(:unsupported_type, field: :dictionary, value: type, limit: "plain values")

          id = Reader.scalar(dict, 0, :i64, 0, :dictionary_id)

          index =
            case Reader.table(dict, 1, :index_type) do
              nil -> {:s, 32}
              int -> read_int(int)
            end

          ordered = Reader.scalar(dict, 2, :bool, false, :is_ordered)
          {{:dictionary, index, type, ordered}, [id | ids]}
      end

    field = %Field{name: name, type: type, nullable: nullable, metadata: read_key_values(t, 6)}
    {field, {budget, ids}}
  end

  # A dictionary's values may be any supported type without dictionaries inside.
  defp dictionary_value?({kind, %Field{type: t}}) when kind in [:list, :large_list],
    do: dictionary_value?(t)

  defp dictionary_value?({:dictionary, _, _, _}), do: false
  defp dictionary_value?(_), do: true

  defp read_type(type_id, table, children) do
    name = Map.get(@type_names, type_id, {:unknown, type_id})
    if table == nil and type_id != 0, do: need_table(name)

    type =
      case name do
        :null -> :null
        :bool -> :bool
        :int -> read_int(table)
        :floating_point -> read_float(table)
        :utf8 -> :utf8
        :large_utf8 -> :large_utf8
        :binary -> :binary
        :large_binary -> :large_binary
        :date -> read_date(table)
        :timestamp -> read_timestamp(table)
        :list -> {:list, only_child(children)}
        :large_list -> {:large_list, only_child(children)}
        _ -> fail(:unsupported_type, field: :type, value: name)
      end

    if name not in [:list, :large_list] and children != [],
      do: fail(:bad_children, field: :children, value: length(children), limit: 0)

    type
  end

  defp need_table(name), do: fail(:bad_flatbuffer, field: :type, value: name, limit: "a table")

  defp only_child([child]), do: child
  defp only_child(l), do: fail(:bad_children, field: :children, value: length(l), limit: 1)

  defp read_int(t) do
    width = Reader.scalar(t, 0, :i32, 0, :bit_width)
    signed = Reader.scalar(t, 1, :bool, false, :is_signed)

    if width not in [8, 16, 32, 64],
      do: fail(:unsupported_type, field: :bit_width, value: width, limit: "8, 16, 32 or 64")

    {if(signed, do: :s, else: :u), width}
  end

  defp read_float(t) do
    case Reader.scalar(t, 0, :i16, 0, :precision) do
      0 -> {:f, 16}
      1 -> {:f, 32}
      2 -> {:f, 64}
      p -> fail(:unsupported_type, field: :precision, value: p, limit: "0, 1 or 2")
    end
  end

  defp read_date(t) do
    case Reader.scalar(t, 0, :i16, 1, :date_unit) do
      0 -> :date32
      1 -> :date64
      u -> fail(:unsupported_type, field: :date_unit, value: u, limit: "0 or 1")
    end
  end

  defp read_timestamp(t) do
    unit =
      case Reader.scalar(t, 0, :i16, 0, :time_unit) do
        u when u in 0..3 -> Enum.at(Type.units(), u)
        u -> fail(:unsupported_type, field: :time_unit, value: u, limit: "0..3")
      end

    tz =
      case Reader.string(t, 1, :timezone) do
        nil -> nil
        tz -> :binary.copy(utf8!(tz, :timezone))
      end

    {:timestamp, unit, tz}
  end

  defp read_key_values(t, slot) do
    for kv <- Reader.tables(t, slot, :custom_metadata) do
      key = Reader.string(kv, 0, :metadata_key) || ""
      value = Reader.string(kv, 1, :metadata_value) || ""
      {:binary.copy(key), :binary.copy(value)}
    end
  end

  defp read_record_batch(t) do
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

    if Reader.vector_bytes(t, 4, 8, :variadic_buffer_counts) not in [nil, ""],
      do: fail(:unsupported_type, field: :variadic_buffer_counts, value: :view_types)

    %{
      length: length,
      nodes: Reader.vector_bytes(t, 1, 16, :nodes) || "",
      buffers: Reader.vector_bytes(t, 2, 16, :buffers) || "",
      compression: compression
    }
  end

  defp utf8!(bin, field) do
    if String.valid?(bin), do: bin, else: fail(:bad_utf8, field: field, value: bin)
  end

  # ------------------------------------------------------------------ writing

  @doc false
  # The Message flatbuffer for a schema; dictionary ids are given in pre-order.
  @spec schema_message(Schema.t()) :: binary()
  def schema_message(%Schema{fields: fields, metadata: metadata}) do
    {fields, _next_id} = Enum.map_reduce(fields, 0, &write_field/2)

    schema = [{0, :i16, 0}, {1, :tables, fields}] ++ key_values(2, metadata)
    message(@h_schema, schema, 0)
  end

  @doc false
  @spec record_batch_message(
          integer(),
          [{integer(), integer()}],
          [{integer(), integer()}],
          integer()
        ) ::
          binary()
  def record_batch_message(length, nodes, buffers, body_length) do
    message(@h_record_batch, record_batch(length, nodes, buffers), body_length)
  end

  @doc false
  @spec dictionary_batch_message(integer(), integer(), list(), list(), boolean(), integer()) ::
          binary()
  def dictionary_batch_message(id, length, nodes, buffers, delta, body_length) do
    batch = [{0, :i64, id}, {1, :table, record_batch(length, nodes, buffers)}, {2, :bool, delta}]
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

  defp record_batch(length, nodes, buffers) do
    [
      {0, :i64, length},
      {1, :structs, {for({a, b} <- nodes, into: <<>>, do: pair(a, b)), length(nodes)}},
      {2, :structs, {for({a, b} <- buffers, into: <<>>, do: pair(a, b)), length(buffers)}}
    ]
  end

  defp pair(a, b), do: <<a::little-signed-64, b::little-signed-64>>

  defp write_field(%Field{name: name, type: type, nullable: nullable, metadata: md}, next_id) do
    {value_type, dictionary, next_id} =
      case type do
        {:dictionary, index, value, ordered} ->
          dict = [{0, :i64, next_id}, {1, :table, int_table(index)}, {2, :bool, ordered}]
          {value, [{4, :table, dict}], next_id + 1}

        _ ->
          {type, [], next_id}
      end

    {type_id, type_table, children} = type_union(value_type)
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

  defp int_table({s, w}), do: [{0, :i32, w}, {1, :bool, s == :s}]

  defp type_union(:null), do: {1, [], []}
  defp type_union({s, _} = t) when s in [:s, :u], do: {2, int_table(t), []}
  defp type_union({:f, w}), do: {3, [{0, :i16, %{16 => 0, 32 => 1, 64 => 2}[w]}], []}
  defp type_union(:binary), do: {4, [], []}
  defp type_union(:utf8), do: {5, [], []}
  defp type_union(:bool), do: {6, [], []}
  defp type_union(:date32), do: {8, [{0, :i16, 0}], []}
  defp type_union(:date64), do: {8, [{0, :i16, 1}], []}

  defp type_union({:timestamp, unit, tz}) do
    unit_code = Enum.find_index(Type.units(), &(&1 == unit))
    tz = if tz == nil, do: [], else: [{1, :string, tz}]
    {10, [{0, :i16, unit_code} | tz], []}
  end

  defp type_union({:list, child}), do: {12, [], [child]}
  defp type_union(:large_binary), do: {19, [], []}
  defp type_union(:large_utf8), do: {20, [], []}
  defp type_union({:large_list, child}), do: {21, [], [child]}
end
