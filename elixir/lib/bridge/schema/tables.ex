defmodule Bridge.Schema.Tables do
  @moduledoc """
  Typed-schema values as Arrow tables (protocol/formats/ssz.md, "Tables"): one
  column per field, and the schema's name and version in the table's schema metadata
  (`"beambridge.schema"`, `"beambridge.schema_version"`), so that a table read back,
  here or in Python (`beambridge.schema_tables`), follows the rules of versions: an
  older minor's table lacks the later columns (their defaults fill in), an older
  major's rows are migrated.

  Columns: integers, floats, booleans, strings and bytes as their Arrow types,
  `{:optional, t}` as a nullable column, lists and vectors of those as list
  columns. Unions and nested schemas have no column here (refused with
  `:bad_value`); a list of such values crosses as one SSZ list instead
  (`Bridge.Schema.Batch`).

  ## Examples

      iex> defmodule Doc.Run do
      ...>   use Bridge.Schema, name: "doc.Run", version: "1.2"
      ...>   field :step, :uint32
      ...>   field :loss, :float32
      ...>   field :tags, {:list, :string, max: 4}
      ...> end
      iex> runs = [struct(Doc.Run, step: 1, loss: 0.5, tags: ["a"]), struct(Doc.Run, step: 2, loss: 0.25, tags: [])]
      iex> {:ok, table} = Bridge.Schema.Tables.to_table(runs)
      iex> table.schema.metadata
      [{"beambridge.schema", "doc.Run"}, {"beambridge.schema_version", "1.2"}]
      iex> {:ok, back} = Bridge.Schema.Tables.from_table(table)
      iex> Enum.map(back, &{&1.step, &1.loss, &1.tags})
      [{1, 0.5, ["a"]}, {2, 0.25, []}]
  """

  alias Bridge.{Error, Table}
  alias Bridge.Arrow.{Field, Schema}
  alias Bridge.Schema.{Batch, Versions}

  @name_key "beambridge.schema"
  @version_key "beambridge.schema_version"

  @arrow %{
    uint8: {:u, 8},
    uint16: {:u, 16},
    uint32: {:u, 32},
    uint64: {:u, 64},
    int8: {:s, 8},
    int16: {:s, 16},
    int32: {:s, 32},
    int64: {:s, 64},
    float32: {:f, 32},
    float64: {:f, 64},
    boolean: :bool,
    string: :utf8,
    bytes: :binary
  }

  @doc """
  A table of `values`, structs of one schema module (checked as a writer checks
  them: `:bad_value` naming the index and the field).
  """
  @spec to_table([struct()]) :: {:ok, Table.t()} | {:error, Error.t()}
  def to_table([%module{} | _] = values) do
    with :ok <- same_module(values, module),
         {:ok, fields} <- columns(module),
         {:ok, _} <- Batch.encode(module, values) do
      metadata = [
        {@name_key, module.__schema__(:name)},
        {@version_key, module.__schema__(:version)}
      ]

      columns = for {name, _field} <- fields, do: {name, Enum.map(values, &Map.fetch!(&1, name))}

      Table.from_columns(columns,
        schema: Schema.new(Enum.map(fields, &elem(&1, 1)), metadata: metadata)
      )
    end
  end

  def to_table(other),
    do: {:error, bad_value(:values, other, "a non-empty list of structs of one schema module")}

  defp same_module(values, module) do
    if Enum.all?(values, &is_struct(&1, module)) and
         function_exported?(module, :__bb_encode__, 2),
       do: :ok,
       else: {:error, bad_value(:values, module, "structs of one schema module")}
  end

  defp columns(module) do
    Enum.reduce_while(module.__schema__(:fields), {:ok, []}, fn {name, t}, {:ok, acc} ->
      case column_type(t) do
        {type, nullable} ->
          {:cont,
           {:ok, acc ++ [{name, Field.new(Atom.to_string(name), type, nullable: nullable)}]}}

        nil ->
          {:halt,
           {:error,
            bad_value(
              name,
              t,
              "a field a column can hold: a number, boolean, string or bytes, an optional " <>
                "one, or a list or vector of them (send the list itself: it goes as one SSZ list)"
            )}}
      end
    end)
  end

  defp column_type({:optional, t}) do
    case column_type(t) do
      {type, false} -> {type, true}
      _ -> nil
    end
  end

  defp column_type({tag, t, _}) when tag in [:list, :vector] and is_map_key(@arrow, t),
    do: {{:list, Field.new("item", @arrow[t], nullable: false)}, false}

  defp column_type(t) when is_map_key(@arrow, t), do: {@arrow[t], false}
  defp column_type(_t), do: nil

  @doc """
  The structs of the newest module declared for the schema a table names in its
  metadata, read as `Bridge.Schema.Versions` reads the values of its version.
  """
  @spec from_table(Table.t()) :: {:ok, [struct()]} | {:error, Error.t()}
  def from_table(%Table{schema: %Schema{metadata: metadata}} = table) do
    with {:ok, name, version} <- named(metadata),
         {:ok, {module, minor, finish}} <- Versions.reader(name, version),
         {:ok, values} <- rows(table, module, minor, "#{inspect(name)} #{version}"),
         {:ok, _} <- Batch.encode(module, values) do
      if finish, do: Versions.migrate_all(values, finish), else: {:ok, values}
    end
  end

  defp named(metadata) do
    case {List.keyfind(metadata, @name_key, 0), List.keyfind(metadata, @version_key, 0)} do
      {{_, name}, {_, version}} ->
        {:ok, name, version}

      _ ->
        {:error,
         Error.new(:bad_call, :bad_metadata,
           field: :metadata,
           value: metadata,
           message:
             "bad call: bad_metadata: the table's schema metadata names no typed schema " <>
               "(#{@name_key} and #{@version_key}); make it with Bridge.Schema.Tables.to_table/1"
         )}
    end
  end

  # The structs of `module` at `minor` from the table's columns: the fields that
  # minor had, by name; the later ones take their defaults.
  defp rows(table, module, minor, what) do
    present = MapSet.new(Table.column_names(table))
    names = for {name, _t} <- Versions.fields_at(module, minor), do: name

    case Enum.reject(names, &MapSet.member?(present, Atom.to_string(&1))) do
      [] ->
        columns = for name <- names, do: Table.column!(table, Atom.to_string(name))

        values =
          if columns == [],
            do: List.duplicate(struct(module), table.num_rows),
            else:
              columns
              |> Enum.zip()
              |> Enum.map(&struct(module, Enum.zip(names, Tuple.to_list(&1))))

        {:ok, values}

      missing ->
        {:error,
         Error.new(:bad_call, :bad_value,
           field: :columns,
           value: missing,
           message:
             "bad_value: the table of #{what} lacks the columns #{Enum.join(missing, ", ")}"
         )}
    end
  end

  defp bad_value(field, value, expected) do
    Error.new(:bad_call, :bad_value,
      field: field,
      value: value,
      message: "bad_value: #{field} is #{inspect(value, limit: 5)}, expected #{expected}"
    )
  end
end
