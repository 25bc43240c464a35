defmodule Bridge.CallerGC do
  @moduledoc false
  # A result over a lease keeps its slice of the worker's arenas until the binary is
  # garbage collected (protocol/SPEC.md §4). A process that calls in a loop and drops
  # each result collects rarely: its binary heap limit grows with the sizes it has
  # seen, so a run of large results can fill the worker's arenas with results nobody
  # holds, and later calls fail with :arena_full. So each process counts the bytes of
  # leased results it received; once they reach a quarter of the pool's
  # :arena_limit, it collects before its next call. Small results cost one
  # process-dictionary read per call.

  @key {__MODULE__, :leased_bytes}

  @doc false
  # Before a call: collect if this process received enough leased bytes since the last
  # collection made here.
  @spec before_call(non_neg_integer()) :: :ok
  def before_call(arena_limit) do
    case Process.get(@key) do
      nil ->
        :ok

      bytes when bytes >= div(arena_limit, 4) ->
        Process.delete(@key)
        :erlang.garbage_collect()
        Bridge.Metrics.Memory.caller_gc()

      _ ->
        :ok
    end
  end

  @doc false
  # After a call: count the leased bytes of its result (`resolved`, Bridge.Worker.Objects).
  @spec received(tuple()) :: :ok
  def received({}), do: :ok

  def received(resolved) do
    bytes =
      resolved
      |> Tuple.to_list()
      |> Enum.reduce(0, fn
        {:lease, _lease, length, _generation}, acc -> acc + length
        _copied, acc -> acc
      end)

    if bytes > 0, do: Process.put(@key, Process.get(@key, 0) + bytes)
    :ok
  end
end
