defmodule Bridge.Format.Records.Rebuild do
  @moduledoc false
  # The receiving side of the records form (protocol/SPEC.md §10.1): the value
  # ETF would give, rebuilt from the records stream a worker sent: columns of
  # the scalar kinds, struct columns (maps whose keys their field's
  # "beambridge.keys" rebuilds) and lists of them. Anything else is a typed
  # :bad_call error naming what was found.

  alias Bridge.{Arrow, Error, Table}
  alias Bridge.Arrow.{Field, Schema, Values}
  alias Bridge.Format.Records

  @keys_meta "beambridge.keys"
  @layouts Bridge.Registry.records_layouts()

  @doc false
  @spec decode(atom(), binary()) :: {:ok, term(), Table.t()} | {:error, Error.t()}
  def decode(layout, stream) when layout in @layouts and is_binary(stream) do
    with {:ok, table} <- arrow(Arrow.decode(stream)),
         {:ok, keys} <- record_keys(table),
         {:ok, columns} <- record_columns(table) do
      value =
        case layout do
          :columns ->
            keys |> Enum.zip(columns) |> Map.new()

          :rows when columns == [] ->
            List.duplicate(%{}, table.num_rows)

          :rows ->
            Enum.zip_with(columns, fn values -> :maps.from_list(:lists.zip(keys, values)) end)
        end

      {:ok, value, table}
    end
  end

  defp arrow({:ok, table}), do: {:ok, table}

  defp arrow({:error, %Error{} = e}) do
    {:error,
     Error.new(:bad_call, e.reason,
       field: :result,
       value: e.value,
       limit: e.limit,
       message:
         "bad call: #{e.reason}: the worker's records stream does not decode: " <>
           Exception.message(e)
     )}
  end

  defp record_keys(%Table{schema: schema}) do
    names = Schema.names(schema)

    with :ok <- unique(names) do
      case List.keyfind(schema.metadata, @keys_meta, 0) do
        {_, "atom"} ->
          atoms(names)

        {_, kind} when kind in ["binary", "string"] ->
          {:ok, names}

        other ->
          records_error(:bad_metadata, other, ~s(#{@keys_meta} => "atom", "binary" or "string"))
      end
    end
  end

  defp unique(names) do
    case names -- Enum.uniq(names) do
      [] -> :ok
      [dup | _] -> records_error(:duplicate_column, dup, "unique column names")
    end
  end

  defp atoms(names) do
    {atoms, unknown} =
      Enum.reduce(names, {[], []}, fn name, {atoms, unknown} ->
        try do
          {[String.to_existing_atom(name) | atoms], unknown}
        rescue
          ArgumentError -> {atoms, [name | unknown]}
        end
      end)

    reserved = Enum.find(atoms, &(&1 not in [nil, true, false] and not Records.atom_key?(&1)))

    cond do
      unknown != [] ->
        shown = unknown |> Enum.reverse() |> Enum.map_join(", ", &(":" <> &1))

        {:error,
         Error.new(:bad_call, :unknown_atom,
           field: :result,
           value: Enum.reverse(unknown),
           message:
             "bad call: unknown_atom: the result's records have atom keys that do not exist in " <>
               "this VM (#{shown}); return str keys (they arrive as binaries), or make sure the " <>
               "atoms exist on the BEAM before the call (the bridge never creates atoms for a peer)"
         )}

      reserved != nil ->
        records_error(:bad_term, reserved, "keys not starting with $bb_")

      true ->
        {:ok, Enum.reverse(atoms)}
    end
  end

  @types [{:s, 64}, {:f, 64}, :bool, :binary, :utf8, :null]
  @not_finite [:nan, :infinity, :neg_infinity]

  defp record_columns(%Table{schema: schema, columns: columns}) do
    Enum.zip(schema.fields, columns)
    |> Enum.reduce_while({:ok, []}, fn {field, chunks}, {:ok, acc} ->
      if records_field?(field) do
        values = Enum.flat_map(chunks, &Values.to_list(&1, []))
        {:cont, {:ok, [rebuilt(values, field) | acc]}}
      else
        {:halt,
         records_error(
           :unsupported_type,
           {field.name, Arrow.Type.describe(field.type)},
           "int64, double, bool, binary, string or null columns, structs of them " <>
             "(with #{@keys_meta}) and lists of such structs"
         )}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  catch
    {:bb_records_error, error} -> error
  end

  # The column types of the records form (SPEC §10.1): the scalar ones, structs whose
  # field says how their keys are rebuilt, lists of those (or of nulls).
  defp records_field?(%Field{type: t}) when t in @types, do: true

  defp records_field?(%Field{type: {:struct, fields}, metadata: md}),
    do: key_kind(md) != nil and Enum.all?(fields, &records_field?/1) and unique_names?(fields)

  defp records_field?(%Field{type: {:list, %Field{type: :null}}}), do: true

  defp records_field?(%Field{type: {:list, %Field{type: {:struct, _}} = item}}),
    do: records_field?(item)

  defp records_field?(_), do: false

  defp unique_names?(fields), do: unique(Enum.map(fields, & &1.name)) == :ok

  defp key_kind(metadata) do
    case List.keyfind(metadata, @keys_meta, 0) do
      {_, kind} when kind in ["atom", "binary", "string"] -> kind
      _ -> nil
    end
  end

  # The values of a column as ETF gives them: struct maps with their keys
  # rebuilt, floats finite.
  defp rebuilt(values, %Field{type: {:f, 64}, name: name}) do
    if Enum.any?(values, &(&1 in @not_finite)),
      do:
        throw(
          {:bb_records_error,
           records_error(
             :unsupported_value,
             name,
             "finite floats (NaN and infinities cannot cross)"
           )}
        )

    values
  end

  defp rebuilt(values, %Field{type: {:struct, fields}, metadata: md}) do
    keys = Enum.map(fields, &rebuilt_key(key_kind(md), &1.name))

    columns =
      Enum.map(fields, fn f -> rebuilt(Enum.map(values, &(&1 && Map.fetch!(&1, f.name))), f) end)

    nils = Enum.map(values, &is_nil/1)

    case columns do
      [] ->
        Enum.map(nils, &if(&1, do: nil, else: %{}))

      _ ->
        columns
        |> Enum.zip_with(&:lists.zip(keys, &1))
        |> Enum.zip_with(nils, fn pairs, null? ->
          if null?, do: nil, else: :maps.from_list(pairs)
        end)
    end
  end

  defp rebuilt(values, %Field{type: {:list, %Field{type: {:struct, _}} = item}}) do
    lengths = Enum.map(values, &(&1 && length(&1)))
    items = rebuilt(values |> Enum.reject(&is_nil/1) |> Enum.concat(), item)
    regroup(lengths, items)
  end

  defp rebuilt(values, _field), do: values

  defp regroup([nil | ls], items), do: [nil | regroup(ls, items)]

  defp regroup([n | ls], items) do
    {list, rest} = Enum.split(items, n)
    [list | regroup(ls, rest)]
  end

  defp regroup([], []), do: []

  defp rebuilt_key("atom", name) do
    case atoms([name]) do
      {:ok, [atom]} -> atom
      {:error, _} = error -> throw({:bb_records_error, error})
    end
  end

  defp rebuilt_key(_binary_or_string, name), do: name

  defp records_error(reason, value, expected) do
    {:error,
     Error.new(:bad_call, reason,
       field: :result,
       value: value,
       limit: expected,
       message:
         "bad call: #{reason}: the worker's records result has #{inspect(value, limit: 8)}, " <>
           "expected #{expected}"
     )}
  end
end
