defmodule Bridge.Call.Timed do
  @moduledoc false
  # A Bridge.call/3 timed part by part for Bridge.Metrics and the telemetry
  # events: Bridge.Call.do_run/3 with clocks. What happens deep in the encoder
  # (the copy into shared memory, the format decisions counted) is added to
  # {copy, tallies} under :"$bb_measure" in the caller's process dictionary,
  # by put/3 and tally/1 (called by Bridge.Encoder and Bridge.FormatStats), the
  # one place that knows that key; the answer's decoding and the
  # worker's timing come back from the session. The call is then sent to
  # Bridge.Metrics, which a collector records.

  alias Bridge.{Arena, Call, Metrics}

  @doc false
  # {result, timings, tallies}: `timings` as Bridge.Metrics.timings/0 says.
  @spec run(Bridge.function_ref(), list(), keyword()) :: {term(), Metrics.timings(), [map()]}
  #
  # A call made while another is being measured in the same process (from a
  # custom serializer, an argument stream, a telemetry handler) measures its
  # own and leaves the outer one's as it was. Only calls that were sent are
  # recorded: one refused before (a bad name, no such pool) names no function.
  def run(function_ref, args, opts) do
    outer = Process.put(:"$bb_measure", {0, []})

    {result, timings, tallies, sent?} =
      try do
        t0 = System.monotonic_time()
        prepared = Call.prepare(function_ref, args, opts)
        t1 = System.monotonic_time()
        {copy, tallies} = measure()

        case prepared do
          {:ok, prepared} ->
            Tuple.append(sent(prepared, t0, t1, copy), true)

          error ->
            {error, {t1 - t0, t1 - t0 - copy, copy, 0, 0, nil}, tallies, false}
        end
      after
        if outer, do: Process.put(:"$bb_measure", outer), else: Process.delete(:"$bb_measure")
      end

    with true <- sent? and Metrics.enabled?(),
         {module, function} <- function_ref do
      outcome = if match?({:ok, _}, result), do: :ok, else: :error
      pool = Keyword.get(opts, :pool, Bridge)
      Metrics.record(pool, module, function, timings, outcome, tallies)
    end

    {result, timings, tallies}
  end

  defp measure, do: Process.get(:"$bb_measure") || {0, []}

  @doc false
  # A payload into a slice (Bridge.Encoder): Bridge.Arena.put/3, its time
  # added to the copy of the call being measured, if any.
  @spec put(Bridge.Arena.t(), iodata(), keyword()) :: {:ok, term()} | {:error, Bridge.Error.t()}
  def put(arena, payload, frame_opts) do
    case Process.get(:"$bb_measure") do
      nil ->
        Arena.put(arena, payload, frame_opts)

      {spent, tallies} ->
        t0 = System.monotonic_time()
        result = Arena.put(arena, payload, frame_opts)
        Process.put(:"$bb_measure", {spent + System.monotonic_time() - t0, tallies})
        result
    end
  end

  @doc false
  # A call's format decisions (Bridge.FormatStats.flush/1), kept when the
  # call is being measured.
  @spec tally(map()) :: :ok
  def tally(tally) do
    case Process.get(:"$bb_measure") do
      {copy, tallies} -> Process.put(:"$bb_measure", {copy, [tally | tallies]})
      nil -> nil
    end

    :ok
  end

  defp sent(prepared, t0, t1, copy) do
    {result, decode_start, timing} =
      case Bridge.Stream.Session.call(prepared, true) do
        {:timed, result, decode_start, timing} -> {result, decode_start, timing}
        result -> {result, nil, nil}
      end

    t2 = System.monotonic_time()
    {_, tallies} = measure()
    decode = if decode_start, do: t2 - decode_start, else: 0
    wait = t2 - t1 - decode
    {result, {t2 - t0, t1 - t0 - copy, copy, wait, decode, worker(timing, t1)}, tallies}
  after
    Enum.each(prepared.slices, &Arena.release/1)
  end

  # When the worker process sent the call on, and the interpreter's own
  # microseconds (Bridge.Worker.Replies.timing/0).
  defp worker({sent, {d, r, e}}, t1), do: {max(sent - t1, 0), d, r, e}
  defp worker(_timing, _t1), do: nil
end
