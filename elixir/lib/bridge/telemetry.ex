defmodule Bridge.Telemetry do
  @moduledoc """
  The bridge's events, in the convention of the `:telemetry` library.

  When the application has `:telemetry` (the hex package), every event goes
  through `:telemetry.execute/3`: attach with `:telemetry.attach/4` as for
  any library. Without it (hex is not always at hand), this module keeps its
  own handlers with the same calling convention: `attach/4`,
  `attach_many/4`, `detach/1`. Handlers attached here are called in both
  cases. A handler that raises is detached, with a Logger error, as
  `:telemetry` does.

  ## Events

    * `[:beambridge, :call, :start]` — measurements `%{monotonic_time,
      system_time}`; metadata `%{pool, module, function, telemetry_span_context}`.
    * `[:beambridge, :call, :stop]` — measurements `%{duration, monotonic_time,
      encode, copy, wait, decode, bytes}` and, when the worker answered with its
      timings, `queue, transfer, worker_decode, handler, worker_encode` (native
      time units; `Bridge.Metrics` says what each part is; `bytes` those of
      the arguments and result, as `Bridge.format_stats/0` counts them);
      metadata the start's and `result` (`:ok` or `:error`), `error` (the
      `Bridge.Error` or `nil`) and `error_kind` (its kind or `nil`).
    * `[:beambridge, :call, :exception]` — a call that raised or exited
      (`Bridge.call/3` returns errors; this is for bugs): measurements
      `%{duration, monotonic_time}`; metadata the start's and `kind`, `reason`,
      `stacktrace`.

    * `[:beambridge, :stream, :start]` — a `Bridge.stream/3` opened:
      measurements `%{monotonic_time, system_time}`; metadata `%{pool, module,
      function, telemetry_span_context}`.
    * `[:beambridge, :stream, :element]` — the consumer took an element:
      measurements `%{bytes, in_flight, window}` (`in_flight`: how many more had
      arrived; `window`: the stream's `:window`); metadata the start's.
    * `[:beambridge, :stream, :stop]` — the stream ended: measurements
      `%{duration, elements, bytes}`; metadata the start's and `result`
      (`:ok`, `:cancelled` when closed before its end, or `:error`) and `error`.
    * `[:beambridge, :memory, :sample]` — every few seconds per pool
      (`Bridge.Metrics.history/0`): measurements `%{arena_bytes, used_bytes,
      live_slices, arena_limit, worker_arena_bytes, held_slices, held_bytes,
      headroom}`; metadata `%{pool}`.
    * `[:beambridge, :memory, :fallback]` — values due a slice went inline:
      measurements `%{count, bytes}`; metadata `%{direction, form, reason}`
      (the reasons of `Bridge.format_stats/0`).

  ## Examples

      iex> Bridge.Telemetry.attach("doc", [:beambridge, :doc], fn e, m, _md, pid -> send(pid, {e, m}) end, self())
      :ok
      iex> Bridge.Telemetry.execute([:beambridge, :doc], %{n: 1}, %{})
      iex> receive do {[:beambridge, :doc], %{n: 1}} -> :got end
      :got
      iex> Bridge.Telemetry.detach("doc")
      :ok
  """

  require Logger

  # :telemetry is the host application's, when it has it.
  @compile {:no_warn_undefined, :telemetry}

  @key {__MODULE__, :handlers}

  @typedoc "A handler: called with the event, its measurements, its metadata and the config."
  @type handler :: (list(atom()), map(), map(), term() -> any())

  @doc """
  Attaches `fun` to `event` under `id`: `{:error, :already_exists}` when a
  handler has that id.
  """
  @spec attach(term(), [atom()], handler(), term()) :: :ok | {:error, :already_exists}
  def attach(id, event, fun, config), do: attach_many(id, [event], fun, config)

  @doc "Attaches `fun` to each of `events` under one `id`."
  @spec attach_many(term(), [[atom()]], handler(), term()) :: :ok | {:error, :already_exists}
  def attach_many(id, events, fun, config) when is_function(fun, 4) and is_list(events) do
    locked(fn ->
      handlers = handlers()

      if Enum.any?(handlers, &(elem(&1, 0) == id)) do
        {:error, :already_exists}
      else
        :persistent_term.put(@key, handlers ++ [{id, events, fun, config}])
        :ok
      end
    end)
  end

  @doc "Detaches the handler `id`: `{:error, :not_found}` when there is none."
  @spec detach(term()) :: :ok | {:error, :not_found}
  def detach(id) do
    locked(fn ->
      handlers = handlers()

      case Enum.split_with(handlers, &(elem(&1, 0) == id)) do
        {[], _} ->
          {:error, :not_found}

        {_, rest} ->
          :persistent_term.put(@key, rest)
          :ok
      end
    end)
  end

  @doc "The handlers attached here to events starting with `prefix`."
  @spec list_handlers([atom()]) :: [map()]
  def list_handlers(prefix) do
    for {id, events, fun, config} <- handlers(),
        event <- events,
        List.starts_with?(event, prefix),
        do: %{id: id, event_name: event, function: fun, config: config}
  end

  @doc """
  Emits `event`: to `:telemetry` when it is loaded, and to the handlers
  attached here.
  """
  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if :erlang.function_exported(:telemetry, :execute, 3),
      do: :telemetry.execute(event, measurements, metadata)

    case handlers() do
      [] -> :ok
      handlers -> Enum.each(handlers, &call(&1, event, measurements, metadata))
    end
  end

  @doc false
  # Whether anyone listens: a call then measures what its events carry.
  @spec enabled?() :: boolean()
  def enabled?,
    do: handlers() != [] or :erlang.function_exported(:telemetry, :execute, 3)

  defp handlers, do: :persistent_term.get(@key, [])

  # Attaching and detaching are rare: one at a time on this node.
  defp locked(fun), do: :global.trans({__MODULE__, self()}, fun, [node()])

  defp call({id, events, fun, config}, event, measurements, metadata) do
    if event in events do
      try do
        fun.(event, measurements, metadata, config)
      catch
        kind, reason ->
          detach(id)

          Logger.error(
            "beambridge: the telemetry handler #{inspect(id)} failed on #{inspect(event)} " <>
              "and was detached: " <> Exception.format(kind, reason, __STACKTRACE__)
          )
      end
    end
  end
end
