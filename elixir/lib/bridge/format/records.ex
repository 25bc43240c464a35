defmodule Bridge.Format.Records do
  @moduledoc false
  # The records form (protocol/SPEC.md §10.1): a record list (a non-empty list
  # of maps with the same keys) or a column map (a map of lists of one length)
  # as an Arrow stream, one column per key in key order, each int64, float64,
  # bool, binary or null, or (since 2.6) a struct of maps with one key set or a
  # list of such structs, with the keys' type in the schema metadata and in each
  # struct's field ("beambridge.keys" => "atom" | "binary"). scan_rows/1 and
  # scan_columns/1 say whether a value qualifies and what its columns hold;
  # build/2 writes the stream; decode/2 (Records.Rebuild) rebuilds the value
  # from a stream the worker sent.
  # Bridge.Format decides when a value goes as records; this module only knows
  # how.

  import Bitwise

  alias Bridge.{Arrow, Error, Table}
  alias Bridge.Arrow.{Builder, Field, Schema}

  @i64_min bsl(-1, 63)
  @i64_max (1 <<< 63) - 1
  @keys_meta "beambridge.keys"

  @typedoc """
  What a scan found: the keys in order, whether they are atoms or binaries,
  each column's kind and the number of rows.
  """
  @type shape :: %{
          keys: [atom() | binary()],
          key_type: :atom | :binary,
          kinds: [kind()],
          rows: non_neg_integer()
        }

  @typedoc """
  A column's kind: a scalar kind, `{:struct, key_type, keys, kinds}` for maps with
  the same keys (keys sorted, each with its own kind) or `{:list, kind}` for lists
  whose elements are such maps (`kind` a struct kind, or `:null` while every list
  seen is empty or holds only nils).
  """
  @type kind ::
          :int
          | :float
          | :bool
          | :binary
          | :null
          | {:struct, :atom | :binary, [atom() | binary()], [kind()]}
          | {:list, kind()}

  @typedoc "A scan's answer: the shape, the first unsuitable code with its detail, or no."
  @type scan :: {:ok, shape()} | {:unsuitable, atom(), String.t()} | :no

  @doc false
  # A list whose first element is a plain map: a record list or not. :no for a
  # list that is not one at all (an improper list, an element that is not a
  # map); {:unsuitable, ...} for maps that are not records.
  @spec scan_rows(nonempty_list()) :: scan()
  def scan_rows([first | _] = rows) do
    scanned(fn ->
      keys = first |> Map.keys() |> Enum.sort()
      key_type = key_type(keys)
      kinds = List.duplicate(:null, length(keys))

      case rows(rows, keys, map_size(first), kinds, 0) do
        {:ok, kinds, n} -> {:ok, %{keys: keys, key_type: key_type, kinds: kinds, rows: n}}
        :no -> :no
      end
    end)
  end

  @doc false
  # A non-empty map: a column map or not. :no unless every value is a proper list.
  @spec scan_columns(map()) :: scan()
  def scan_columns(map) do
    if all_lists?(:maps.next(:maps.iterator(map))),
      do: scanned(fn -> columns(map) end),
      else: :no
  end

  @doc false
  # The columns of a record list scan_rows/1 accepted, in key order.
  @spec row_columns([map()], shape()) :: [list()]
  def row_columns(rows, %{keys: keys}),
    do: for(k <- keys, do: Enum.map(rows, &:erlang.map_get(k, &1)))

  @doc false
  # The columns of a column map scan_columns/1 accepted, in key order.
  @spec map_columns(map(), shape()) :: [list()]
  def map_columns(map, %{keys: keys}), do: for(k <- keys, do: :erlang.map_get(k, map))

  defp scanned(fun) do
    fun.()
  catch
    {:bb_unsuitable, reason, detail} -> {:unsuitable, reason, detail}
  end

  defp all_lists?({_k, v, iter}) when is_list(v), do: all_lists?(:maps.next(iter))
  defp all_lists?(:none), do: true
  defp all_lists?(_), do: false

  defp rows([row | rest], keys, c, kinds, i) when is_map(row) and not is_struct(row) do
    if map_size(row) != c, do: different_keys(keys, row, i)
    rows(rest, keys, c, row_kinds(keys, kinds, row, i), i + 1)
  end

  defp rows([], _keys, _c, kinds, n), do: {:ok, kinds, n}
  defp rows(_other, _keys, _c, _kinds, _i), do: :no

  defp row_kinds([k | ks], [kind | kinds], row, i) do
    case row do
      %{^k => v} -> [merge(kind, v, k, i) | row_kinds(ks, kinds, row, i)]
      _ -> different_keys([k | ks], row, i)
    end
  end

  defp row_kinds([], [], _row, _i), do: []

  defp different_keys(keys, row, i) do
    unsuitable!(
      :different_keys,
      "row #{i} has the keys #{inspect(Map.keys(row) |> Enum.sort(), limit: 8)}, " <>
        "row 0 has #{inspect(keys, limit: 8)}"
    )
  end

  defp columns(map) do
    keys = map |> Map.keys() |> Enum.sort()
    key_type = key_type(keys)
    [k0 | _] = keys

    case proper_length(:erlang.map_get(k0, map), 0) do
      :improper ->
        :no

      n ->
        kinds =
          Enum.map(keys, fn k ->
            case column_kind(:erlang.map_get(k, map), :null, k, 0) do
              {:ok, kind, ^n} ->
                kind

              {:ok, _kind, m} ->
                unsuitable!(
                  :ragged_columns,
                  "column #{inspect(k)} has #{m} values, column #{inspect(k0)} has #{n}"
                )

              :improper ->
                throw(:bb_improper)
            end
          end)

        {:ok, %{keys: keys, key_type: key_type, kinds: kinds, rows: n}}
    end
  catch
    :bb_improper -> :no
  end

  defp proper_length([_ | t], n), do: proper_length(t, n + 1)
  defp proper_length([], n), do: n
  defp proper_length(_, _n), do: :improper

  defp column_kind([v | t], kind, k, i), do: column_kind(t, merge(kind, v, k, i), k, i + 1)
  defp column_kind([], kind, _k, n), do: {:ok, kind, n}
  defp column_kind(_, _kind, _k, _i), do: :improper

  defp merge(kind, nil, _k, _i), do: kind
  defp merge(:int, v, _k, _i) when is_integer(v) and v >= @i64_min and v <= @i64_max, do: :int
  defp merge(:float, v, _k, _i) when is_float(v), do: :float
  defp merge(:bool, v, _k, _i) when is_boolean(v), do: :bool
  defp merge(:binary, v, _k, _i) when is_binary(v), do: :binary

  defp merge({:struct, kt, keys, kinds}, v, k, i) when is_map(v) and not is_struct(v) do
    if map_size(v) != length(keys), do: nested_keys(keys, v, k, i)

    kinds =
      Enum.zip_with(keys, kinds, fn key, kind ->
        case v do
          %{^key => x} -> merge(kind, x, {k, key}, i)
          _ -> nested_keys(keys, v, k, i)
        end
      end)

    {:struct, kt, keys, kinds}
  end

  defp merge({:list, kind}, v, k, i) when is_list(v), do: {:list, items_kind(v, kind, k, i)}

  defp merge(kind, v, k, i) do
    case kind_of(v, k, i) do
      new when kind == :null ->
        new

      new ->
        unsuitable!(
          :mixed_kinds,
          "column #{inspect(k)} holds #{kind_text(kind)} and #{kind_text(new)} " <>
            "(#{inspect(v, limit: 5)} at row #{i})"
        )
    end
  end

  defp kind_of(v, _k, _i) when is_integer(v) and v >= @i64_min and v <= @i64_max, do: :int

  defp kind_of(v, k, i) when is_integer(v),
    do:
      unsuitable!(
        :integer_range,
        "column #{inspect(k)} row #{i} holds #{v}, an integer beyond int64"
      )

  defp kind_of(v, _k, _i) when is_float(v), do: :float
  defp kind_of(v, _k, _i) when is_boolean(v), do: :bool
  defp kind_of(v, _k, _i) when is_binary(v), do: :binary

  defp kind_of(v, k, i) when is_map(v) and not is_struct(v) do
    keys = v |> Map.keys() |> Enum.sort()
    key_type = nested_key_type(keys, k, i)
    merge({:struct, key_type, keys, Enum.map(keys, fn _ -> :null end)}, v, k, i)
  end

  defp kind_of(v, k, i) when is_list(v), do: {:list, items_kind(v, :null, k, i)}

  defp kind_of(v, k, i) when is_map(v) or is_tuple(v),
    do:
      unsuitable!(
        :nested_value,
        "column #{inspect(k)} row #{i} holds the nested value #{inspect(v, limit: 5)}"
      )

  defp kind_of(v, k, i),
    do:
      unsuitable!(
        :unsupported_value,
        "column #{inspect(k)} row #{i} holds #{inspect(v, limit: 5)}, which is not an integer, " <>
          "a float, a boolean, a binary or nil"
      )

  # The kind of a list's elements: maps of one key set (or nils). A list of
  # anything else (numbers, binaries, lists) is not a records column: ETF keeps
  # it exact, Arrow would have to guess (a charlist, a list of one type or not).
  defp items_kind([x | xs], kind, k, i) when (is_map(x) and not is_struct(x)) or x == nil,
    do: items_kind(xs, merge(kind, x, k, i), k, i)

  defp items_kind([], kind, _k, _i), do: kind

  defp items_kind(other, _kind, k, i) do
    unsuitable!(
      :nested_value,
      "column #{inspect(k)} row #{i} holds a list that is not a list of maps " <>
        "(#{inspect(other, limit: 5)})"
    )
  end

  defp nested_keys(keys, v, k, i) do
    unsuitable!(
      :different_keys,
      "column #{inspect(k)} row #{i} holds a map with the keys " <>
        "#{inspect(Map.keys(v) |> Enum.sort(), limit: 8)} where another has #{inspect(keys, limit: 8)}"
    )
  end

  defp nested_key_type(keys, k, i) do
    key_type(keys)
  catch
    {:bb_unsuitable, :bad_keys, detail} ->
      unsuitable!(:bad_keys, "column #{inspect(k)} row #{i} holds a map whose #{detail}")
  end

  defp kind_text({:struct, _, _, _}), do: "maps"
  defp kind_text({:list, _}), do: "lists of maps"
  defp kind_text(:int), do: "integers"
  defp kind_text(:float), do: "floats"
  defp kind_text(:bool), do: "booleans"
  defp kind_text(:binary), do: "binaries"

  defp key_type(keys) do
    cond do
      Enum.all?(keys, &atom_key?/1) ->
        :atom

      Enum.all?(keys, &(is_binary(&1) and String.valid?(&1))) ->
        :binary

      true ->
        unsuitable!(
          :bad_keys,
          "the keys #{inspect(keys, limit: 8)} are not all atoms (other than nil, true, " <>
            "false and $bb_ ones) nor all UTF-8 binaries"
        )
    end
  end

  @doc false
  # Whether an atom may be a records key: not nil, true, false or $bb_-reserved.
  @spec atom_key?(term()) :: boolean()
  def atom_key?(k) when is_atom(k) and k not in [nil, true, false],
    do: not String.starts_with?(Atom.to_string(k), "$bb_")

  def atom_key?(_k), do: false

  defp unsuitable!(reason, detail), do: throw({:bb_unsuitable, reason, detail})

  @doc false
  # The Arrow stream of the records form of a scanned value and its columns.
  @spec build(shape(), [list()]) :: binary()
  def build(%{keys: keys, key_type: key_type, kinds: kinds, rows: n}, columns) do
    fields = Enum.zip_with(keys, kinds, &field(key_name(&1), &2))

    arrays =
      Enum.zip_with(fields, columns, fn field, values ->
        [Builder.build(values, field, "column #{inspect(field.name)}")]
      end)

    schema = Schema.new(fields, metadata: [{@keys_meta, Atom.to_string(key_type)}])
    Arrow.encode(%Table{schema: schema, columns: arrays, num_rows: n})
  end

  defp key_name(k) when is_atom(k), do: Atom.to_string(k)
  defp key_name(k) when is_binary(k), do: k

  # A column's field: a struct kind's field says how its keys are rebuilt, as
  # the schema does for the top-level keys; a list's item field too.
  defp field(name, {:struct, kt, keys, kinds}) do
    fields = Enum.zip_with(keys, kinds, &field(key_name(&1), &2))
    Field.new(name, {:struct, fields}, metadata: [{@keys_meta, Atom.to_string(kt)}])
  end

  defp field(name, {:list, kind}), do: Field.new(name, {:list, field("item", kind)})
  defp field(name, kind), do: Field.new(name, arrow_type(kind))

  defp arrow_type(:int), do: {:s, 64}
  defp arrow_type(:float), do: {:f, 64}
  defp arrow_type(:bool), do: :bool
  defp arrow_type(:binary), do: :binary
  defp arrow_type(:null), do: :null

  @doc false
  # Rebuilds the value of a records form from its stream (see
  # Bridge.Format.decode_records/2).
  @spec decode(atom(), binary()) :: {:ok, term(), Table.t()} | {:error, Error.t()}
  defdelegate decode(layout, stream), to: Bridge.Format.Records.Rebuild
end
