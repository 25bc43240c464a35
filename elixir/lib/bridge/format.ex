defmodule Bridge.Format do
  @moduledoc """
  Format selection (protocol/SPEC.md §8.1): which form a value takes on its way
  to Python, decided per value from its shape and size. The Python type never
  depends on the form (invariant 7).

    * A **number list** — at least 2 elements, all integers of the int64 or
      uint64 range, or all floats (integers and floats mixed are not one) —
      goes **packed**, `{:"$bb_packed", dtype, data}`: the elements
      little-endian in the narrowest dtype holding the minimum and the maximum
      (signed first at equal size; `"<f8"` for floats). Python gets a `list`.
    * A **record list** (a non-empty list of maps with the same keys) or a
      **column map** (a map of lists of one length) whose keys are all atoms or
      all UTF-8 binaries, and whose columns each hold `nil` and values of one
      kind (integers of the int64 range, floats, booleans or binaries), goes
      as **records**, `{:"$bb_records", :rows | :columns, arrow_stream}`.
      Python gets a `list` of `dict`s / a `dict` of `list`s.
    * Anything else goes as ETF.

  The call option `format:` (`Bridge.call/3`) picks the policy:

    * `:auto` (default) — packed from 128 elements, records from 256
      cells (rows × columns): where `bench/formats.exs` measured these forms
      faster than ETF from Elixir to Python (the worker sending results uses
      its own crossovers, 256 elements and 1024 cells);
    * `:etf` — number lists, record lists and column maps as ETF;
    * `:packed` — every number list packed, whatever its length (a list of
      integers mixed with floats, or of integers out of range, is not a number
      list: it goes as ETF);
    * `:arrow` — every record list and column map as records; a list of maps
      or a map of lists that is not one is a `:format_unsuitable` error naming
      the first reason.

  The result follows the same policy in the worker. At or above the bridge's
  `:threshold` packed data and record streams travel through a shared-memory
  region instead of the control frame.

  Every decision is counted (see `Bridge.format_stats/0`) and logged at debug
  level.

  ## Examples

      iex> Bridge.Format.int_dtype(0, 200)
      "|u1"
      iex> Bridge.Format.int_dtype(-1, 200)
      "<i2"
      iex> Bridge.Format.int_dtype(0, 18_446_744_073_709_551_615)
      "<u8"
      iex> {:packed, :forced, "|i1", <<1, 2, 255>>, 3} = Bridge.Format.select_list([1, 2, -1], :packed)
      iex> Bridge.Format.unpack("|i1", <<1, 2, 255>>)
      {:ok, [1, 2, -1]}
      iex> Bridge.Format.select_list([1, 2.0], :packed)
      :none
      iex> {:error, e} = Bridge.Format.select_list([%{a: 1}, %{b: 2}], :arrow)
      iex> {e.kind, e.reason, e.value}
      {:bad_call, :format_unsuitable, :different_keys}
  """

  import Bitwise

  require Logger

  alias Bridge.{Arrow, Error, FormatStats, Table}
  alias Bridge.Arrow.{Builder, Field, Schema, Values}

  @policies [:auto, :etf, :packed, :arrow]
  @packed_min 128
  @records_min 256
  @i64_min Bitwise.bsl(-1, 63)
  @i64_max (1 <<< 63) - 1
  @u64_max (1 <<< 64) - 1
  @keys_meta "beambridge.keys"

  @dtypes %{
    "|i1" => 1,
    "|u1" => 1,
    "<i2" => 2,
    "<u2" => 2,
    "<i4" => 4,
    "<u4" => 4,
    "<i8" => 8,
    "<u8" => 8,
    "<f8" => 8
  }

  @typedoc "The `format:` policy of a call."
  @type policy :: :auto | :etf | :packed | :arrow

  @typedoc false
  @type decision ::
          :none
          | {:etf, atom(), atom(), non_neg_integer()}
          | {:packed, :auto | :forced, String.t(), binary(), pos_integer()}
          | {:records, :auto | :forced, :rows | :columns, binary(), non_neg_integer(),
             non_neg_integer()}
          | {:error, Error.t()}

  @doc "The policies `format:` accepts."
  @spec policies() :: [policy()]
  def policies, do: @policies

  @doc "The smallest number list `:auto` packs (elements)."
  @spec packed_min() :: pos_integer()
  def packed_min, do: @packed_min

  @doc "The smallest record list or column map `:auto` sends as records (cells)."
  @spec records_min() :: pos_integer()
  def records_min, do: @records_min

  @doc """
  Checks a `format:` option.

  ## Examples

      iex> Bridge.Format.check_policy(:arrow)
      {:ok, :arrow}
      iex> {:error, e} = Bridge.Format.check_policy(:json)
      iex> {e.kind, e.reason, e.field}
      {:bad_call, :bad_option, :format}
  """
  @spec check_policy(term()) :: {:ok, policy()} | {:error, Error.t()}
  def check_policy(policy) when policy in @policies, do: {:ok, policy}

  def check_policy(other) do
    {:error,
     Error.new(:bad_call, :bad_option,
       field: :format,
       value: other,
       limit: "one of :auto, :etf, :packed, :arrow"
     )}
  end

  ## Number lists

  @doc false
  # The decision for a list argument (or a list inside one).
  @spec select_list(list(), policy()) :: decision()
  def select_list(list, policy) do
    case scan_numbers(list) do
      {:ints, n, lo, hi} ->
        cond do
          policy == :etf -> {:etf, :policy, :number_list, n}
          policy == :packed -> pack_ints(list, lo, hi, n, :forced)
          n < @packed_min -> {:etf, :below_min, :number_list, n}
          true -> pack_ints(list, lo, hi, n, :auto)
        end

      {:floats, n} ->
        cond do
          policy == :etf -> {:etf, :policy, :number_list, n}
          policy == :packed -> {:packed, :forced, "<f8", pack_floats(list), n}
          n < @packed_min -> {:etf, :below_min, :number_list, n}
          true -> {:packed, :auto, "<f8", pack_floats(list), n}
        end

      # Integers mixed with floats, or out of range: not a number list, ETF
      # under every policy (SPEC §8.1 makes only lists of maps and maps of lists
      # that do not qualify an error).
      {:unsuitable, _reason, _detail} ->
        :none

      :no ->
        select_rows(list, policy)
    end
  end

  defp scan_numbers([h | t]) when is_integer(h), do: ints(t, h, h, 1)
  defp scan_numbers([h | t]) when is_float(h), do: floats(t, 1)
  defp scan_numbers(_), do: :no

  defp ints([h | t], lo, hi, n) when is_integer(h) and h < lo, do: ints(t, h, hi, n + 1)
  defp ints([h | t], lo, hi, n) when is_integer(h) and h > hi, do: ints(t, lo, h, n + 1)
  defp ints([h | t], lo, hi, n) when is_integer(h), do: ints(t, lo, hi, n + 1)
  defp ints([], _lo, _hi, n) when n < 2, do: :no

  defp ints([], lo, hi, n) do
    cond do
      lo < @i64_min ->
        {:unsuitable, :integer_range, "#{lo} is below the int64 range"}

      hi > @u64_max ->
        {:unsuitable, :integer_range, "#{hi} is beyond the uint64 range"}

      lo < 0 and hi > @i64_max ->
        {:unsuitable, :integer_range,
         "#{lo} and #{hi} fit in no one integer type (int64 nor uint64)"}

      true ->
        {:ints, n, lo, hi}
    end
  end

  defp ints([h | _], _lo, _hi, n) when is_float(h),
    do: {:unsuitable, :mixed_numbers, "element #{n} is the float #{h} in a list of integers"}

  defp ints(_, _lo, _hi, _n), do: :no

  defp floats([h | t], n) when is_float(h), do: floats(t, n + 1)
  defp floats([], n) when n >= 2, do: {:floats, n}
  defp floats([], _n), do: :no

  defp floats([h | _], n) when is_integer(h),
    do: {:unsuitable, :mixed_numbers, "element #{n} is the integer #{h} in a list of floats"}

  defp floats(_, _n), do: :no

  @doc """
  The narrowest dtype holding the integers `lo..hi` (signed first at equal
  size), or `nil`.
  """
  @spec int_dtype(integer(), integer()) :: String.t() | nil
  def int_dtype(lo, hi) do
    cond do
      lo >= -0x80 and hi <= 0x7F -> "|i1"
      lo >= 0 and hi <= 0xFF -> "|u1"
      lo >= -0x8000 and hi <= 0x7FFF -> "<i2"
      lo >= 0 and hi <= 0xFFFF -> "<u2"
      lo >= -0x8000_0000 and hi <= 0x7FFF_FFFF -> "<i4"
      lo >= 0 and hi <= 0xFFFF_FFFF -> "<u4"
      lo >= @i64_min and hi <= @i64_max -> "<i8"
      lo >= 0 and hi <= @u64_max -> "<u8"
      true -> nil
    end
  end

  defp pack_ints(list, lo, hi, n, reason) do
    dtype = int_dtype(lo, hi)
    {:packed, reason, dtype, pack(list, @dtypes[dtype] * 8), n}
  end

  # Hand-unrolled appends: about five times faster than a binary comprehension.
  defp pack(list, 8), do: pack8(list, <<>>)
  defp pack(list, 16), do: pack16(list, <<>>)
  defp pack(list, 32), do: pack32(list, <<>>)
  defp pack(list, 64), do: pack64(list, <<>>)

  for w <- [8, 16, 32, 64] do
    name = :"pack#{w}"

    defp unquote(name)([a, b, c, d | t], acc),
      do:
        unquote(name)(
          t,
          <<acc::binary, a::little-size(unquote(w)), b::little-size(unquote(w)),
            c::little-size(unquote(w)), d::little-size(unquote(w))>>
        )

    defp unquote(name)([a | t], acc),
      do: unquote(name)(t, <<acc::binary, a::little-size(unquote(w))>>)

    defp unquote(name)([], acc), do: acc
  end

  defp pack_floats(list), do: pack_floats(list, <<>>)

  defp pack_floats([a, b, c, d | t], acc),
    do:
      pack_floats(
        t,
        <<acc::binary, a::float-little-64, b::float-little-64, c::float-little-64,
          d::float-little-64>>
      )

  defp pack_floats([a | t], acc), do: pack_floats(t, <<acc::binary, a::float-little-64>>)
  defp pack_floats([], acc), do: acc

  @doc """
  The list a packed payload stands for: `{:ok, list}` or `{:error, why}` (a
  dtype outside the packed ones, a length that is not a multiple of the item
  size, a float that is not finite).
  """
  @spec unpack(term(), term()) :: {:ok, [number()]} | {:error, String.t()}
  def unpack(dtype, data) when is_binary(data) and is_map_key(@dtypes, dtype) do
    size = @dtypes[dtype]

    if rem(byte_size(data), size) == 0,
      do: do_unpack(dtype, data),
      else: {:error, "#{byte_size(data)} bytes is not a whole number of #{dtype} items"}
  end

  def unpack(dtype, data) when is_binary(data),
    do: {:error, "dtype #{inspect(dtype)} is not one of #{inspect(Map.keys(@dtypes))}"}

  def unpack(_dtype, data), do: {:error, "data #{inspect(data, limit: 5)} is not a binary"}

  defp do_unpack("|i1", d), do: {:ok, for(<<x::signed-8 <- d>>, do: x)}
  defp do_unpack("|u1", d), do: {:ok, :binary.bin_to_list(d)}
  defp do_unpack("<i2", d), do: {:ok, for(<<x::little-signed-16 <- d>>, do: x)}
  defp do_unpack("<u2", d), do: {:ok, for(<<x::little-16 <- d>>, do: x)}
  defp do_unpack("<i4", d), do: {:ok, for(<<x::little-signed-32 <- d>>, do: x)}
  defp do_unpack("<u4", d), do: {:ok, for(<<x::little-32 <- d>>, do: x)}
  defp do_unpack("<i8", d), do: {:ok, for(<<x::little-signed-64 <- d>>, do: x)}
  defp do_unpack("<u8", d), do: {:ok, for(<<x::little-64 <- d>>, do: x)}

  defp do_unpack("<f8", d) do
    # A comprehension skips what its pattern does not match: NaN and infinities.
    list = for <<x::float-little-64 <- d>>, do: x

    if length(list) * 8 == byte_size(d),
      do: {:ok, list},
      else: {:error, "a float that is not finite (NaN or an infinity)"}
  end

  @doc false
  # A packed region frame: tensor format, schema 0, metadata {dtype, [length]}.
  @spec unpack_frame(Bridge.Frame.t()) :: {:ok, [number()]} | {:error, String.t()}
  def unpack_frame(%Bridge.Frame{header: h, metadata: metadata, payload: payload}) do
    with :ok <- expect(h.format == 1 and h.codec == 0, "a tensor (1) frame without codec"),
         :ok <- expect(h.schema_id == 0 and h.schema_version == 0, "schema 0 version 0"),
         {:ok, {dtype, [n]}} when is_integer(n) <- safe_term(metadata),
         {:ok, list} <- unpack(dtype, payload),
         :ok <- expect(length(list) == n, "#{n} elements in the payload") do
      {:ok, list}
    else
      {:ok, other} -> {:error, "metadata #{inspect(other, limit: 5)} is not {dtype, [length]}"}
      {:error, why} -> {:error, why}
    end
  end

  defp expect(true, _what), do: :ok
  defp expect(false, what), do: {:error, "expected #{what}"}

  @doc false
  @spec safe_term(binary()) :: {:ok, term()} | {:error, String.t()}
  def safe_term(bin) do
    {:ok, :erlang.binary_to_term(bin, [:safe])}
  rescue
    ArgumentError -> {:error, "the metadata is not a safe ETF term"}
  end

  ## Record lists and column maps

  defp select_rows([first | _] = rows, policy) when is_map(first) and not is_struct(first) do
    case scan(fn -> scan_rows(rows) end) do
      {:ok, keys, key_type, kinds, n} ->
        columns = fn -> for k <- keys, do: Enum.map(rows, &:erlang.map_get(k, &1)) end
        records(policy, :rows, keys, key_type, kinds, n, columns)

      {:unsuitable, reason, detail} ->
        if policy == :arrow and Enum.all?(rows, &plain_map?/1),
          do: {:error, unsuitable(:arrow, "list of maps", reason, detail)},
          else: :none

      :no ->
        :none
    end
  end

  defp select_rows(_list, _policy), do: :none

  @doc false
  # The decision for a map argument (or a map inside one).
  @spec select_map(map(), policy()) :: decision()
  def select_map(map, policy) when map_size(map) > 0 and not is_struct(map) do
    if all_lists?(:maps.next(:maps.iterator(map))) do
      case scan(fn -> scan_columns(map) end) do
        {:ok, keys, key_type, kinds, n} ->
          columns = fn -> for k <- keys, do: :erlang.map_get(k, map) end
          records(policy, :columns, keys, key_type, kinds, n, columns)

        {:unsuitable, reason, detail} ->
          if policy == :arrow,
            do: {:error, unsuitable(:arrow, "map of lists", reason, detail)},
            else: :none

        :no ->
          :none
      end
    else
      :none
    end
  end

  def select_map(_map, _policy), do: :none

  defp plain_map?(x), do: is_map(x) and not is_struct(x)

  defp all_lists?({_k, v, iter}) when is_list(v), do: all_lists?(:maps.next(iter))
  defp all_lists?(:none), do: true
  defp all_lists?(_), do: false

  defp scan(fun) do
    fun.()
  catch
    {:bb_unsuitable, reason, detail} -> {:unsuitable, reason, detail}
  end

  defp records(policy, layout, keys, key_type, kinds, n, columns) do
    cells = n * length(keys)
    what = if layout == :rows, do: :record_list, else: :column_map

    cond do
      policy == :etf ->
        {:etf, :policy, what, cells}

      policy == :arrow ->
        {:records, :forced, layout, build(keys, key_type, kinds, n, columns.()), n, length(keys)}

      cells < @records_min ->
        {:etf, :below_min, what, cells}

      true ->
        {:records, :auto, layout, build(keys, key_type, kinds, n, columns.()), n, length(keys)}
    end
  end

  defp scan_rows([first | _] = rows) do
    keys = first |> Map.keys() |> Enum.sort()
    key_type = key_type(keys)
    kinds = List.duplicate(:null, length(keys))

    case rows(rows, keys, map_size(first), kinds, 0) do
      {:ok, kinds, n} -> {:ok, keys, key_type, kinds, n}
      :no -> :no
    end
  end

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

  defp scan_columns(map) do
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

        {:ok, keys, key_type, kinds, n}
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

  defp kind_of(v, k, i) when is_list(v) or is_map(v) or is_tuple(v),
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

  defp atom_key?(k) when is_atom(k) and k not in [nil, true, false],
    do: not String.starts_with?(Atom.to_string(k), "$bb_")

  defp atom_key?(_k), do: false

  defp unsuitable!(reason, detail), do: throw({:bb_unsuitable, reason, detail})

  defp unsuitable(policy, what, reason, detail) do
    Error.new(:bad_call, :format_unsuitable,
      field: :format,
      value: reason,
      limit: policy,
      message:
        "bad call: format_unsuitable: format: #{inspect(policy)} cannot send this #{what} " <>
          "as records (Arrow): #{reason}: #{detail}; pass format: :auto (the value then travels as ETF, " <>
          "unchanged) or convert the value"
    )
  end

  # The Arrow stream of the records form: one column per key (in key order),
  # int64 / float64 / bool / binary / null, keys' type in the schema metadata.
  defp build(keys, key_type, kinds, n, columns) do
    fields =
      Enum.zip_with(keys, kinds, fn k, kind -> Field.new(key_name(k), arrow_type(kind)) end)

    arrays =
      Enum.zip_with(fields, columns, fn field, values ->
        [Builder.build(values, field, "column #{inspect(field.name)}")]
      end)

    schema = Schema.new(fields, metadata: [{@keys_meta, Atom.to_string(key_type)}])
    Arrow.encode(%Table{schema: schema, columns: arrays, num_rows: n})
  end

  defp key_name(k) when is_atom(k), do: Atom.to_string(k)
  defp key_name(k) when is_binary(k), do: k

  defp arrow_type(:int), do: {:s, 64}
  defp arrow_type(:float), do: {:f, 64}
  defp arrow_type(:bool), do: :bool
  defp arrow_type(:binary), do: :binary
  defp arrow_type(:null), do: :null

  @doc false
  # Rebuilds the value of a records form from its stream. Errors are
  # :bad_call (the frame was well formed; the worker is kept): the Arrow
  # reason for a stream that does not decode, :unsupported_type for a column
  # type outside int64/float64/bool/binary/utf8/null, :bad_metadata for a
  # missing or unknown "beambridge.keys", :duplicate_column, :unknown_atom.
  @spec decode_records(:rows | :columns, binary()) ::
          {:ok, term(), Table.t()} | {:error, Error.t()}
  def decode_records(layout, stream) when layout in [:rows, :columns] and is_binary(stream) do
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

    reserved = Enum.find(atoms, &(&1 not in [nil, true, false] and not atom_key?(&1)))

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

  defp record_columns(%Table{schema: schema, columns: columns}) do
    Enum.zip(schema.fields, columns)
    |> Enum.reduce_while({:ok, []}, fn {field, chunks}, {:ok, acc} ->
      if field.type in @types do
        values = Enum.flat_map(chunks, &Values.to_list(&1, []))

        if field.type == {:f, 64} and
             Enum.any?(values, &(&1 in [:nan, :infinity, :neg_infinity])),
           do:
             {:halt,
              records_error(
                :unsupported_value,
                field.name,
                "finite floats (NaN and infinities cannot cross)"
              )},
           else: {:cont, {:ok, [values | acc]}}
      else
        {:halt,
         records_error(
           :unsupported_type,
           {field.name, Arrow.Type.describe(field.type)},
           "int64, double, bool, binary, string or null columns"
         )}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end

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

  ## Counting and logging

  @small_forms [:raw, :etf]
  @small_reasons [:below_threshold, :below_min]

  @doc false
  # Adds one decision to a call's tally and logs it at debug level; decisions
  # about small values (inline binaries, short lists as ETF) are logged once per
  # call and form by flush/1 instead of one line each. Forms results arrive in
  # (direction :from_python) are logged as they arrive: the worker chose them.
  @spec decided(map(), atom(), atom(), atom(), non_neg_integer(), term()) :: map()
  def decided(tally, direction, form, reason, bytes, what) do
    unless form in @small_forms and reason in @small_reasons do
      Logger.debug(fn ->
        "beambridge format: #{direction} #{describe(what)} -> #{form} (#{reason}), #{bytes} bytes"
      end)
    end

    Map.update(tally, {direction, form, reason}, {1, bytes}, fn {c, b} -> {c + 1, b + bytes} end)
  end

  @doc false
  # Counts a call's decisions (Bridge.format_stats/0) and logs the small ones.
  @spec flush(map()) :: :ok
  def flush(tally) when map_size(tally) == 0, do: :ok

  def flush(tally) do
    Enum.each(tally, fn
      {{direction, form, reason}, {count, bytes}}
      when form in @small_forms and reason in @small_reasons ->
        Logger.debug(fn ->
          "beambridge format: #{direction} #{count} small value(s) -> #{form} (#{reason}), " <>
            "#{bytes} bytes"
        end)

      _ ->
        :ok
    end)

    FormatStats.add(tally)
  end

  defp describe({:number_list, n}), do: "a number list of #{n} elements"
  defp describe({:record_list, cells}), do: "a record list of #{cells} cells"
  defp describe({:column_map, cells}), do: "a column map of #{cells} cells"
  defp describe({:records, layout, rows, cols}), do: "#{layout} records (#{rows} x #{cols})"
  defp describe({:custom, name}), do: "a custom #{inspect(name)}"
  defp describe({:struct, module}), do: "a #{inspect(module)}"
  defp describe(nil), do: "a result"
  defp describe(what) when is_binary(what), do: what
  defp describe(what) when is_function(what, 0), do: what.()
  defp describe(what), do: inspect(what)
end
