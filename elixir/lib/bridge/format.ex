defmodule Bridge.Format do
  @moduledoc """
  Format selection (protocol/SPEC.md §10.1): which form a value takes on its way
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
  `:threshold` packed data and record streams travel in a slice of shared
  memory instead of the control frame (protocol/SPEC.md).

  Every decision is counted (see `Bridge.format_stats/0`) and logged at debug
  level.

  The policies and the packed dtypes are the tables of `protocol/registry.json`
  (`Bridge.Registry`), which the worker reads too. This module holds the
  policy; `Bridge.Format.Packed` and `Bridge.Format.Records` the two forms, and
  `Bridge.FormatStats` the counting.

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

  alias Bridge.{Error, Registry, Table}
  alias Bridge.Format.{Packed, Records}

  # The policies of protocol/registry.json, the default first.
  @policies Registry.policies()
  @packed_min 128
  @records_min 256

  @typedoc "The `format:` policy of a call (`policies/0`)."
  @type policy :: unquote(Registry.union_type(@policies))

  @typedoc false
  @type decision ::
          :none
          | {:etf, atom(), atom(), non_neg_integer()}
          | {:packed, :auto | :forced, String.t(), binary(), pos_integer()}
          | {:records, :auto | :forced, :rows | :columns, binary(), non_neg_integer(),
             non_neg_integer()}
          | {:error, Error.t()}

  @doc """
  The policies `format:` accepts, the default first (`protocol/registry.json`).

  ## Examples

      iex> Bridge.Format.policies()
      [:auto, :etf, :packed, :arrow]
  """
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
       limit: "one of #{Enum.map_join(@policies, ", ", &inspect/1)}"
     )}
  end

  ## Selection

  @doc false
  # The decision for a list argument (or a list inside one).
  # `nested: false` (a worker older than protocol 2.6) keeps struct and list
  # columns out of the records form.
  @spec select_list(list(), policy(), keyword()) :: decision()
  def select_list(list, policy, opts \\ []) do
    case Packed.scan(list) do
      # Integers mixed with floats, or out of range: not a number list, ETF
      # under every policy (SPEC §10.1 makes only lists of maps and maps of lists
      # that do not qualify an error).
      {:unsuitable, _reason, _detail} ->
        :none

      :no ->
        select_rows(list, policy, opts)

      scan ->
        n = elem(scan, 1)

        cond do
          policy == :etf -> {:etf, :policy, :number_list, n}
          policy == :packed -> packed(list, scan, n, :forced)
          n < @packed_min -> {:etf, :below_min, :number_list, n}
          true -> packed(list, scan, n, :auto)
        end
    end
  end

  defp packed(list, scan, n, reason) do
    {dtype, data} = Packed.pack(list, scan)
    {:packed, reason, dtype, data, n}
  end

  defp select_rows([first | _] = rows, policy, opts)
       when is_map(first) and not is_struct(first) do
    case rows |> Records.scan_rows() |> nesting(opts) do
      {:ok, shape} ->
        records(policy, :rows, shape, fn -> Records.row_columns(rows, shape) end)

      {:unsuitable, reason, detail} ->
        if policy == :arrow and Enum.all?(rows, &(is_map(&1) and not is_struct(&1))),
          do: {:error, unsuitable(:arrow, "list of maps", reason, detail)},
          else: :none

      :no ->
        :none
    end
  end

  defp select_rows(_list, _policy, _opts), do: :none

  # Struct and list columns are protocol 2.6 (SPEC §10.1): not for older workers.
  defp nesting({:ok, %{kinds: kinds}} = scan, opts) do
    if Keyword.get(opts, :nested, true) or not Enum.any?(kinds, &is_tuple/1),
      do: scan,
      else:
        {:unsuitable, :nested_value,
         "a column holds maps or lists of maps, and the worker speaks a protocol older " <>
           "than 2.6, which reads them only as ETF"}
  end

  defp nesting(scan, _opts), do: scan

  @doc false
  # The decision for a map argument (or a map inside one).
  @spec select_map(map(), policy(), keyword()) :: decision()
  def select_map(map, policy, opts \\ [])

  def select_map(map, policy, opts) when map_size(map) > 0 and not is_struct(map) do
    case map |> Records.scan_columns() |> nesting(opts) do
      {:ok, shape} ->
        records(policy, :columns, shape, fn -> Records.map_columns(map, shape) end)

      {:unsuitable, reason, detail} ->
        if policy == :arrow,
          do: {:error, unsuitable(:arrow, "map of lists", reason, detail)},
          else: :none

      :no ->
        :none
    end
  end

  def select_map(_map, _policy, _opts), do: :none

  defp records(policy, layout, %{keys: keys, rows: n} = shape, columns) do
    cells = n * length(keys)
    what = if layout == :rows, do: :record_list, else: :column_map

    cond do
      policy == :etf ->
        {:etf, :policy, what, cells}

      policy == :arrow ->
        {:records, :forced, layout, Records.build(shape, columns.()), n, length(keys)}

      cells < @records_min ->
        {:etf, :below_min, what, cells}

      true ->
        {:records, :auto, layout, Records.build(shape, columns.()), n, length(keys)}
    end
  end

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

  ## The forms

  @doc """
  The narrowest packed dtype holding the integers `lo..hi` (signed first at
  equal size), or `nil`.
  """
  @spec int_dtype(integer(), integer()) :: String.t() | nil
  defdelegate int_dtype(lo, hi), to: Packed

  @doc """
  The list a packed payload stands for: `{:ok, list}` or `{:error, why}` (a
  dtype outside the packed ones, a length that is not a multiple of the item
  size, a float that is not finite).
  """
  @spec unpack(term(), term()) :: {:ok, [number()]} | {:error, String.t()}
  defdelegate unpack(dtype, data), to: Packed

  @doc false
  # A packed slice frame: tensor format, schema 0, metadata {dtype, [length]}.
  @spec unpack_frame(Bridge.Frame.t()) :: {:ok, [number()]} | {:error, String.t()}
  defdelegate unpack_frame(frame), to: Packed

  @doc false
  # Rebuilds the value of a records form from its stream. Errors are
  # :bad_call (the frame was well formed; the worker is kept): the Arrow
  # reason for a stream that does not decode, :unsupported_type for a column
  # type outside int64/float64/bool/binary/utf8/null, :bad_metadata for a
  # missing or unknown "beambridge.keys", :duplicate_column, :unknown_atom.
  @spec decode_records(:rows | :columns, binary()) ::
          {:ok, term(), Table.t()} | {:error, Error.t()}
  defdelegate decode_records(layout, stream), to: Records, as: :decode

  @doc false
  # A frame's metadata, which must be safe ETF (SPEC §8.2).
  @spec safe_term(binary()) :: {:ok, term()} | {:error, String.t()}
  def safe_term(bin) do
    {:ok, :erlang.binary_to_term(bin, [:safe])}
  rescue
    ArgumentError -> {:error, "the metadata is not a safe ETF term"}
  end
end
