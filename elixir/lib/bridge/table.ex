defmodule Bridge.Table do
  @moduledoc """
  A table: an Arrow schema and its columns, each column a list of
  `Bridge.Arrow.Array` chunks (one per record batch of the stream it came from).

  Tables are built from Elixir terms with `from_rows/2` or `from_columns/2`,
  or decoded from an Arrow IPC stream with `Bridge.Arrow.decode/2`; values come
  back as terms with `to_rows/2`, `to_columns/2` and `column/3`. A decoded
  table's fixed-width columns are sub-binaries of the stream (zero-copy); terms
  are made only when asked for.

  ## Type inference

  Without a declared type a column's type is inferred from its values:

  | values | Arrow type |
  |---|---|
  | integers | `{:s, 64}` (int64) |
  | floats | `{:f, 64}` (float64) |
  | `true`, `false` | `:bool` |
  | binaries, all valid UTF-8 | `:utf8` (string) |
  | binaries, any one not UTF-8 | `:binary` |
  | `Date` | `:date32` |
  | `NaiveDateTime` | `{:timestamp, :us, nil}` |
  | `DateTime` | `{:timestamp, :us, zone}`; `"Etc/UTC"` is written `"UTC"` |
  | lists | `{:list, item}`, the item type inferred from all elements |
  | maps with the same atom or string keys | `{:struct, fields}`, a field per key (in key order), each inferred; a list of such maps is `{:list, struct}` |
  | only `nil` | `:null` |

  `nil` is a null in any column. Input that would lose or guess at a value is
  an error that says what to do instead: integers outside int64, integers mixed
  with floats, two kinds of value in one column, `DateTime`s in different time
  zones, atoms (`:nan`, `:infinity`, `:neg_infinity` included: declare a float
  type for them), tuples, maps with other keys or with different keys in one
  column (declare a struct or `Bridge.Arrow.Type.map/3` type), and structs.
  Struct values come back as maps with string keys. Declared types (the
  `:schema` option) accept: integers in range for integer types; floats,
  exactly representable integers and `:nan`/`:infinity`/`:neg_infinity` for
  float types (rounded to 16 or 32 bits when declared so); `Date` or integer
  days/milliseconds for dates; `NaiveDateTime` (no zone), `DateTime` (with a
  zone) or integers in the unit for timestamps, exact in the unit; every other type
  (decimals, times, structs, maps, unions…) takes the values the README's
  "Arrow types and values" table gives for it.

  ## Examples

      iex> {:ok, t} = Bridge.Table.from_rows([%{id: 1, name: "a"}, %{id: 2, name: nil}])
      iex> Bridge.Table.num_rows(t)
      2
      iex> Bridge.Table.to_rows(t)
      [%{"id" => 1, "name" => "a"}, %{"id" => 2, "name" => nil}]
      iex> {:error, e} = Bridge.Table.from_columns(x: [1, 2.5])
      iex> {e.kind, e.reason}
      {:bad_call, :mixed_types}
  """

  alias Bridge.Arrow.{Array, Builder, Errors, Field, Infer, Schema, Type, Values}
  alias Bridge.Error

  defstruct schema: %Schema{}, columns: [], num_rows: 0

  @type t :: %__MODULE__{schema: Schema.t(), columns: [[Array.t()]], num_rows: non_neg_integer()}
  @typedoc "A column name: a string, or an atom standing for its string."
  @type name :: String.t() | atom()
  @typedoc "A declared field: a `Bridge.Arrow.Field` or `{name, type}`."
  @type field_spec :: Field.t() | {name(), Type.t()}

  @doc """
  Builds a table from a list of maps with the same keys (atoms or strings; the
  column names are strings). Columns are in the order of their names unless
  `:schema` gives one.

  Options:

    * `:schema` — a `Bridge.Arrow.Schema` or a list of fields (`%Field{}` or
      `{name, type}`) declaring the types, nullability and order of those
      columns; columns not listed are inferred and come after them.

  ## Examples

      iex> {:ok, t} = Bridge.Table.from_rows([%{"x" => 1}, %{"x" => 300}], schema: [x: {:s, 16}])
      iex> Bridge.Table.schema(t).fields |> hd() |> Map.get(:type)
      {:s, 16}
      iex> {:error, e} = Bridge.Table.from_rows([%{x: 1}, %{y: 2}])
      iex> e.reason
      :inconsistent_keys
  """
  @spec from_rows([map()], keyword()) :: {:ok, t()} | {:error, Error.t()}
  def from_rows(rows, opts \\ [])

  def from_rows(rows, opts) when is_list(rows) and is_list(opts) do
    Errors.catching(fn ->
      keys = row_keys(rows)

      columns =
        for key <- keys do
          {key, Enum.map(rows, &Map.fetch!(&1, key))}
        end

      {:ok, build(columns, length(rows), opts)}
    end)
  end

  def from_rows(rows, _opts) do
    {:error, Errors.value(:wrong_type, field: :rows, value: rows, limit: "a list of maps")}
  end

  @doc "Like `from_rows/2`, raising `Bridge.Error`."
  @spec from_rows!([map()], keyword()) :: t()
  def from_rows!(rows, opts \\ []), do: unwrap(from_rows(rows, opts))

  defp row_keys([]), do: []

  defp row_keys([first | _] = rows) do
    Enum.each(Enum.with_index(rows), fn
      {row, i} when not is_map(row) or is_struct(row) ->
        Errors.fail_value(:wrong_type, field: :rows, value: row, limit: "a map", at: "row #{i}")

      _ ->
        :ok
    end)

    keys = Map.keys(first)
    size = map_size(first)

    Enum.each(Enum.with_index(rows), fn {row, i} ->
      if map_size(row) != size or not Enum.all?(keys, &is_map_key(row, &1)) do
        Errors.fail_value(:inconsistent_keys,
          field: :keys,
          value: Map.keys(row),
          limit: inspect(keys),
          at: "row #{i}",
          hint: "every row needs the same keys; put nil where a value is missing"
        )
      end
    end)

    Enum.sort_by(keys, &column_name/1)
  end

  @doc """
  Builds a table from columns: a keyword list, a list of `{name, values}` or a
  map of name to values (a map's columns are in the order of their names).
  Every column must have the same length. Options as for `from_rows/2`.

  ## Examples

      iex> {:ok, t} = Bridge.Table.from_columns(a: [1, 2], b: ["x", "y"])
      iex> Bridge.Table.column_names(t)
      ["a", "b"]
      iex> Bridge.Table.to_columns(t)
      %{"a" => [1, 2], "b" => ["x", "y"]}
      iex> {:error, e} = Bridge.Table.from_columns(%{"n" => [:nan]})
      iex> e.reason
      :unsupported_value
      iex> {:ok, t} = Bridge.Table.from_columns(%{"n" => [:nan, 1.0]}, schema: [n: {:f, 32}])
      iex> Bridge.Table.column!(t, "n")
      [:nan, 1.0]
  """
  @spec from_columns(map() | [{name(), list()}], keyword()) :: {:ok, t()} | {:error, Error.t()}
  def from_columns(columns, opts \\ [])

  def from_columns(columns, opts) when (is_map(columns) or is_list(columns)) and is_list(opts) do
    Errors.catching(fn ->
      columns =
        if is_map(columns),
          do: Enum.sort_by(columns, fn {k, _} -> column_name(k) end),
          else: columns

      Enum.each(columns, fn
        {name, values} when is_list(values) ->
          column_name(name)

        other ->
          Errors.fail_value(:wrong_type,
            field: :columns,
            value: other,
            limit: "{name, list of values}"
          )
      end)

      num_rows =
        case Enum.uniq_by(columns, fn {_, v} -> length(v) end) do
          [] ->
            0

          [{_, v}] ->
            length(v)

          [{a, va}, {b, vb} | _] ->
            Errors.fail_value(:ragged_columns,
              field: :columns,
              value: %{column_name(a) => length(va), column_name(b) => length(vb)},
              hint: "every column needs the same number of values"
            )
        end

      {:ok, build(columns, num_rows, opts)}
    end)
  end

  def from_columns(columns, _opts) do
    {:error,
     Errors.value(:wrong_type, field: :columns, value: columns, limit: "a map or keyword list")}
  end

  @doc "Like `from_columns/2`, raising `Bridge.Error`."
  @spec from_columns!(map() | [{name(), list()}], keyword()) :: t()
  def from_columns!(columns, opts \\ []), do: unwrap(from_columns(columns, opts))

  defp build(columns, num_rows, opts) do
    columns = Enum.map(columns, fn {k, v} -> {column_name(k), v} end)
    names = Enum.map(columns, &elem(&1, 0))

    case names -- Enum.uniq(names) do
      [] -> :ok
      [dup | _] -> Errors.fail_value(:duplicate_column, field: :name, value: dup)
    end

    {declared, metadata} = declared_fields(Keyword.get(opts, :schema, []))
    data = Map.new(columns)

    Enum.each(declared, fn %Field{name: name} ->
      if not is_map_key(data, name) and num_rows > 0,
        do:
          Errors.fail_value(:missing_column,
            field: :name,
            value: name,
            hint: "the schema declares a column the data does not have"
          )
    end)

    declared_names = MapSet.new(declared, & &1.name)

    fields =
      declared ++
        for {name, values} <- columns, not MapSet.member?(declared_names, name) do
          Field.new(name, Infer.infer(values, "column #{inspect(name)}"))
        end

    arrays =
      for %Field{name: name} = field <- fields do
        values = Map.get(data, name, [])
        [Builder.build(values, field, "column #{inspect(name)}")]
      end

    %__MODULE__{
      schema: Schema.new(fields, metadata: metadata),
      columns: arrays,
      num_rows: num_rows
    }
  end

  defp declared_fields(%Schema{fields: fields, metadata: md}), do: {check_fields(fields), md}
  defp declared_fields(list) when is_list(list), do: {check_fields(list), []}

  defp declared_fields(other),
    do:
      Errors.fail_value(:bad_schema,
        field: :schema,
        value: other,
        limit: "a Schema or a list of fields"
      )

  defp check_fields(list) do
    Enum.map(list, fn
      %Field{name: name, type: type} = f when is_binary(name) ->
        check_type(type, name)
        f

      {name, type} ->
        check_type(type, name)
        Field.new(column_name(name), type)

      other ->
        Errors.fail_value(:bad_schema,
          field: :schema,
          value: other,
          limit: "a Field or {name, type}"
        )
    end)
  end

  defp check_type(type, name) do
    unless Type.valid?(type),
      do:
        Errors.fail_value(:bad_schema,
          field: :type,
          value: type,
          at: "column #{inspect(name)}",
          hint: "see Bridge.Arrow.Type for the supported types"
        )
  end

  defp column_name(name) when is_binary(name) do
    if String.valid?(name),
      do: name,
      else: Errors.fail_value(:bad_column_name, field: :name, value: name, limit: "UTF-8")
  end

  defp column_name(name) when is_atom(name) and not is_boolean(name) and name != nil,
    do: Atom.to_string(name)

  defp column_name(name) do
    Errors.fail_value(:bad_column_name,
      field: :name,
      value: name,
      limit: "a string or an atom",
      hint: "column names are strings; convert the keys"
    )
  end

  defp unwrap({:ok, value}), do: value
  defp unwrap({:error, %Error{} = e}), do: raise(e)

  @doc """
  The rows as maps of column name to value.

  Options:

    * `:keys` — `:strings` (default) or `:atoms` (`String.to_atom/1`; only for
      tables from a trusted source)
    * `:temporal` — `:native` (default: `Date`, `NaiveDateTime`, `DateTime` in
      UTC) or `:integer` (the stored integers). In `:native` mode a value with
      no exact term (a nanosecond timestamp with a sub-microsecond part, a
      date64 that is not a whole day, a year outside -9999..9999) raises a
      `Bridge.Error` (reason `:inexact_temporal` or `:temporal_out_of_range`).

  Floats that are not finite come out as `:nan`, `:infinity` and
  `:neg_infinity`; strings and binaries are copies, independent of the input.

  ## Examples

      iex> t = Bridge.Table.from_columns!(d: [~D[2024-01-02]], f: [1.5])
      iex> Bridge.Table.to_rows(t, keys: :atoms)
      [%{d: ~D[2024-01-02], f: 1.5}]
      iex> Bridge.Table.to_rows(t, temporal: :integer)
      [%{"d" => 19724, "f" => 1.5}]
  """
  @spec to_rows(t(), keyword()) :: [map()]
  def to_rows(%__MODULE__{} = table, opts \\ []) do
    keys =
      case Keyword.get(opts, :keys, :strings) do
        :strings -> column_names(table)
        :atoms -> Enum.map(column_names(table), &String.to_atom/1)
      end

    case Enum.map(table.columns, &chunks_to_list(&1, opts)) do
      [] ->
        List.duplicate(%{}, table.num_rows)

      lists ->
        lists |> Enum.zip() |> Enum.map(&(keys |> Enum.zip(Tuple.to_list(&1)) |> Map.new()))
    end
  end

  @doc """
  The columns as a map of column name to a list of values. Options as for
  `to_rows/2` (`:temporal`).
  """
  @spec to_columns(t(), keyword()) :: %{String.t() => list()}
  def to_columns(%__MODULE__{} = table, opts \\ []) do
    table
    |> column_names()
    |> Enum.zip(Enum.map(table.columns, &chunks_to_list(&1, opts)))
    |> Map.new()
  end

  @doc """
  The values of one column. Options as for `to_rows/2` (`:temporal`).

  ## Examples

      iex> t = Bridge.Table.from_columns!(x: [[1, 2], nil, []])
      iex> Bridge.Table.column(t, :x)
      {:ok, [[1, 2], nil, []]}
      iex> {:error, e} = Bridge.Table.column(t, "y")
      iex> e.reason
      :unknown_column
  """
  @spec column(t(), name(), keyword()) :: {:ok, list()} | {:error, Error.t()}
  def column(%__MODULE__{} = table, name, opts \\ []) do
    with {:ok, chunks} <- fetch(table, name), do: {:ok, chunks_to_list(chunks, opts)}
  end

  @doc "Like `column/3`, raising `Bridge.Error`."
  @spec column!(t(), name(), keyword()) :: list()
  def column!(table, name, opts \\ []), do: unwrap(column(table, name, opts))

  @doc """
  A numeric column, or a fixed-size list column of numbers (nested ones make
  more dimensions), as one `Bridge.Tensor` of shape `{rows, size, ...}`:
  an embedding column `fixed_size_list<float32, 768>` of n rows is an
  `{n, 768}` `{:f, 32}` tensor, ready for `Nx.from_binary/2`. The tensor's data
  is a sub-binary of the column's buffer when the column has one chunk (no
  copy); chunks are concatenated otherwise. Columns with nulls are refused
  (`:has_nulls`), other types too (`:not_a_tensor`).

  ## Examples

      iex> item = Bridge.Arrow.Field.new("item", {:f, 32})
      iex> t = Bridge.Table.from_columns!([e: [[1.0, 2.0], [3.0, 4.0]]], schema: [e: {:fixed_size_list, item, 2}])
      iex> {:ok, tensor} = Bridge.Table.to_tensor(t, "e")
      iex> {tensor.dtype, tensor.shape, Bridge.Tensor.to_list(tensor)}
      {{:f, 32}, {2, 2}, [1.0, 2.0, 3.0, 4.0]}
  """
  @spec to_tensor(t(), name()) :: {:ok, Bridge.Tensor.t()} | {:error, Error.t()}
  def to_tensor(%__MODULE__{} = table, name) do
    with {:ok, chunks} <- fetch(table, name) do
      %Field{type: type, name: column} =
        Enum.find(table.schema.fields, &(&1.name == to_string(name)))

      Bridge.Arrow.Tensors.to_tensor(chunks, type, column)
    end
  end

  @doc """
  The arrays (one per record batch) of one column, without converting values.

  ## Examples

      iex> t = Bridge.Table.from_columns!(x: [1, 2])
      iex> [%Bridge.Arrow.Array{data: data}] = Bridge.Table.chunks(t, "x")
      iex> data
      <<1::little-64, 2::little-64>>
  """
  @spec chunks(t(), name()) :: [Array.t()]
  def chunks(%__MODULE__{} = table, name) do
    case fetch(table, name) do
      {:ok, chunks} -> chunks
      {:error, e} -> raise e
    end
  end

  defp fetch(table, name) do
    name = if is_atom(name), do: Atom.to_string(name), else: name

    case Enum.find_index(table.schema.fields, &(&1.name == name)) do
      nil ->
        {:error,
         Errors.value(:unknown_column,
           field: :name,
           value: name,
           limit: inspect(column_names(table))
         )}

      i ->
        {:ok, Enum.at(table.columns, i)}
    end
  end

  defp chunks_to_list(chunks, opts), do: Enum.flat_map(chunks, &Values.to_list(&1, opts))

  @doc "The number of rows."
  @spec num_rows(t()) :: non_neg_integer()
  def num_rows(%__MODULE__{num_rows: n}), do: n

  @doc "The schema."
  @spec schema(t()) :: Schema.t()
  def schema(%__MODULE__{schema: s}), do: s

  @doc "The column names, in order."
  @spec column_names(t()) :: [String.t()]
  def column_names(%__MODULE__{schema: s}), do: Schema.names(s)

  defimpl Inspect do
    def inspect(%Bridge.Table{} = t, _opts) do
      fields = Enum.map(t.schema.fields, &"#{&1.name}: #{Bridge.Arrow.Type.describe(&1.type)}")

      "#Bridge.Table<#{t.num_rows} rows; " <> Enum.join(fields, ", ") <> ">"
    end
  end
end
