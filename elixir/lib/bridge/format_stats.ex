defmodule Bridge.FormatStats do
  @moduledoc false
  # Owns the public ETS table of format decisions (SPEC §10.1 "counted per
  # (direction, form, reason)"): {{direction, form, reason}, count, bytes}.
  # Started by Bridge.Application; every caller adds a call's tally to it with
  # :ets.update_counter (atomic), once per call (decided/6, then flush/1). Read
  # with Bridge.format_stats/0. The keys are those of protocol/registry.json's
  # "stats" table (elixir/test/registry_test.exs checks what is counted).

  use GenServer

  require Logger

  @table __MODULE__
  @warned Bridge.FormatStats.Warned

  @spec start_link(term()) :: GenServer.on_start()
  def start_link(_arg), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @impl true
  def init(nil) do
    :ets.new(@table, [:named_table, :public, :set, write_concurrency: true])
    :ets.new(@warned, [:named_table, :public, :set, write_concurrency: true])
    {:ok, nil}
  end

  ## A call's tally

  @small_forms [:raw, :etf]
  @small_reasons [:below_threshold, :below_min]

  @doc false
  # Are format decisions logged? Only when asked: `config :beambridge,
  # log_formats: true` (or Application.put_env at run time). A new application's
  # Logger level is :debug, and a line per call is noise nobody asked for.
  @spec log?() :: boolean()
  def log?, do: Application.get_env(:beambridge, :log_formats, false) == true

  @doc false
  # Adds one decision to a call's tally and, when asked (log?/0), logs it at debug
  # level; decisions about small values (inline binaries, short lists as ETF) are
  # logged once per call and form by flush/1 instead of one line each. Forms
  # results arrive in (direction :from_python) are logged as they arrive: the
  # worker chose them.
  @spec decided(map(), atom(), atom(), atom(), non_neg_integer(), term()) :: map()
  def decided(tally, direction, form, reason, bytes, what) do
    unless (form in @small_forms and reason in @small_reasons) or not log?() do
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
    if log?(), do: log_small(tally)

    Bridge.Call.Timed.tally(tally)
    add(tally)
  end

  defp log_small(tally) do
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

  ## The table

  # `counts` is a map {direction, form, reason} => {count, bytes}.
  @spec add(map()) :: :ok
  def add(counts) when map_size(counts) == 0, do: :ok

  def add(counts) do
    Enum.each(counts, fn {key, {count, bytes}} ->
      :ets.update_counter(@table, key, [{2, count}, {3, bytes}], {key, 0, 0})
      fallback_event(key, count, bytes)
    end)
  rescue
    # The application is not running (no table): decisions are not counted.
    ArgumentError -> :ok
  end

  # A value due a slice that went inline is a [:beambridge, :memory, :fallback]
  # event (Bridge.Telemetry).
  defp fallback_event({direction, form, reason}, count, bytes)
       when reason in [:too_large, :arena_full, :no_space, :no_tickets] do
    if Bridge.Telemetry.enabled?() do
      Bridge.Telemetry.execute(
        [:beambridge, :memory, :fallback],
        %{count: count, bytes: bytes},
        %{direction: direction, form: form, reason: reason}
      )
    end
  end

  defp fallback_event(_key, _count, _bytes), do: :ok

  # What a worker may report in {:fallbacks, [{form, reason, count, bytes}]} (SPEC
  # §8.3): the inline forms of values due a slice, and why none could be had.
  @fallback_forms Map.new(~w(raw tensor arrow packed records custom)a, &{Atom.to_string(&1), &1})
  @fallback_reasons Map.new(
                      ~w(too_large arena_full no_space no_tickets)a,
                      &{Atom.to_string(&1), &1}
                    )

  @doc false
  @spec fallback_names() :: {[atom()], [atom()]}
  def fallback_names, do: {Map.values(@fallback_forms), Map.values(@fallback_reasons)}

  @doc false
  # A worker's {:fallbacks, list}: result values that went inline although a slice was
  # due, counted under :from_python. :error for anything but a proper list of
  # {form, reason, count, bytes} with the names above (the worker broke the protocol).
  @spec worker_fallbacks(term()) :: :ok | :error
  def worker_fallbacks(list), do: count_fallbacks(list, %{})

  # One walk: a bad entry or an improper tail is :error, and nothing is counted.
  defp count_fallbacks([], counts), do: add(counts)

  defp count_fallbacks([entry | rest], counts) do
    case fallback_key(entry) do
      {:ok, key, n, bytes} ->
        count_fallbacks(
          rest,
          Map.update(counts, key, {n, bytes}, fn {c, b} -> {c + n, b + bytes} end)
        )

      :error ->
        :error
    end
  end

  defp count_fallbacks(_improper, _counts), do: :error

  defp fallback_key({form, reason, count, bytes})
       when is_binary(form) and is_binary(reason) and is_integer(count) and count >= 0 and
              is_integer(bytes) and bytes >= 0 do
    with {:ok, f} <- Map.fetch(@fallback_forms, form),
         {:ok, r} <- Map.fetch(@fallback_reasons, reason),
         do: {:ok, {:from_python, f, r}, count, bytes}
  end

  defp fallback_key(_entry), do: :error

  @spec all() :: [map()]
  def all do
    @table
    |> :ets.tab2list()
    |> Enum.map(fn {{direction, form, reason}, count, bytes} ->
      %{direction: direction, form: form, reason: reason, count: count, bytes: bytes}
    end)
    |> Enum.sort_by(&{&1.direction, &1.form, &1.reason})
  rescue
    ArgumentError -> []
  end

  @spec reset() :: :ok
  def reset do
    :ets.delete_all_objects(@table)
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Logs a warning about a slow path (a fallback), at most once a second for each
  # distinct `cause`: the first time a cause happens it is always logged.
  @spec warn(term(), (() -> String.t())) :: :ok
  def warn(cause, message) do
    now = System.monotonic_time(:millisecond)

    logged? =
      try do
        case :ets.lookup(@warned, cause) do
          [{_, last}] when now - last < 1_000 -> false
          _ -> :ets.insert(@warned, {cause, now})
        end
      rescue
        ArgumentError -> true
      end

    if logged?, do: Logger.warning(message)
    :ok
  end
end
