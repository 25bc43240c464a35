defmodule Bridge.Call.Events do
  @moduledoc false
  # The [:beambridge, :call, ...] events of one Bridge.call/3 (Bridge.Telemetry
  # documents them): start, then stop with the call's timings and result, or
  # exception when the call raised or exited.

  alias Bridge.{Error, Telemetry}

  @doc false
  # Runs `fun` (which returns {result, timings}) between the start and stop
  # events; returns the result.
  @spec span(Bridge.function_ref(), keyword(), (() -> {term(), map()})) :: term()
  def span(function_ref, opts, fun) do
    start = System.monotonic_time()
    meta = metadata(function_ref, opts)

    Telemetry.execute(
      [:beambridge, :call, :start],
      %{monotonic_time: start, system_time: System.system_time()},
      meta
    )

    try do
      fun.()
    catch
      kind, reason ->
        stop = System.monotonic_time()

        Telemetry.execute(
          [:beambridge, :call, :exception],
          %{duration: stop - start, monotonic_time: stop},
          Map.merge(meta, %{kind: kind, reason: reason, stacktrace: __STACKTRACE__})
        )

        :erlang.raise(kind, reason, __STACKTRACE__)
    else
      {result, timings} ->
        stop = System.monotonic_time()
        measurements = Map.merge(timings, %{duration: stop - start, monotonic_time: stop})

        Telemetry.execute(
          [:beambridge, :call, :stop],
          measurements,
          Map.merge(meta, outcome(result))
        )

        result
    end
  end

  defp metadata({module, function}, opts) do
    %{
      pool: Keyword.get(opts, :pool, Bridge),
      module: module,
      function: function,
      telemetry_span_context: make_ref()
    }
  end

  defp metadata(other, opts),
    do: %{
      pool: Keyword.get(opts, :pool, Bridge),
      module: nil,
      function: other,
      telemetry_span_context: make_ref()
    }

  defp outcome({:ok, _}), do: %{result: :ok, error: nil, error_kind: nil}

  defp outcome({:error, %Error{kind: kind} = e}),
    do: %{result: :error, error: e, error_kind: kind}

  defp outcome(_other), do: %{result: :error, error: nil, error_kind: nil}
end
