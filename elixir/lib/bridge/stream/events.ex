defmodule Bridge.Stream.Events do
  @moduledoc false
  # The [:beambridge, :stream, ...] events of one Bridge.stream/3 (Bridge.Telemetry
  # documents them) and its line in Bridge.Metrics' streams: start when the
  # stream is opened, element for each element the consumer takes (only while
  # someone listens), stop when it ends, fails or is closed early.

  alias Bridge.Telemetry

  @doc false
  # The stream's start; returns what stop/3 needs.
  @spec start(map()) :: map()
  def start(prepared) do
    meta = %{
      pool: prepared.pool,
      module: prepared.module,
      function: prepared.function,
      telemetry_span_context: make_ref()
    }

    t0 = System.monotonic_time()

    if Telemetry.enabled?(),
      do:
        Telemetry.execute(
          [:beambridge, :stream, :start],
          %{monotonic_time: t0, system_time: System.system_time()},
          meta
        )

    %{meta: meta, started: t0, elements: 0, bytes: 0, in_flight: 0}
  end

  @doc false
  # The consumer took an element of `bytes` with `in_flight` more received.
  @spec element(map() | nil, non_neg_integer(), non_neg_integer(), pos_integer()) :: map() | nil
  def element(nil, _bytes, _in_flight, _window), do: nil

  def element(span, bytes, in_flight, window) do
    if Telemetry.enabled?(),
      do:
        Telemetry.execute(
          [:beambridge, :stream, :element],
          %{bytes: bytes, in_flight: in_flight, window: window},
          span.meta
        )

    %{
      span
      | elements: span.elements + 1,
        bytes: span.bytes + bytes,
        in_flight: span.in_flight + in_flight
    }
  end

  @doc false
  # The stream's end: `outcome` :ok, :cancelled or the error.
  @spec stop(map() | nil, :ok | :cancelled | Bridge.Error.t()) :: nil
  def stop(nil, _outcome), do: nil

  def stop(span, outcome) do
    duration = System.monotonic_time() - span.started
    result = if is_atom(outcome), do: outcome, else: :error

    if Telemetry.enabled?(),
      do:
        Telemetry.execute(
          [:beambridge, :stream, :stop],
          %{duration: duration, elements: span.elements, bytes: span.bytes},
          Map.merge(span.meta, %{
            result: result,
            error: if(is_atom(outcome), do: nil, else: outcome)
          })
        )

    if Bridge.Metrics.enabled?(),
      do: Bridge.Metrics.Streams.record(span.meta, duration, span, result)

    nil
  end
end
