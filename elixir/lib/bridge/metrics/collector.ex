defmodule Bridge.Metrics.Collector do
  @moduledoc false
  # Records calls into Bridge.Metrics away from the caller: a call sends its
  # timings and format decisions to the collector of the scheduler it runs on
  # (one per scheduler, started by Bridge.Application) and goes on; the
  # collector adds them to the function's counters while the caller waits for
  # its next answer. A small call's caller then pays one message (about 0.2 µs)
  # instead of the recording (about 0.7 µs; `make bench` measures both ways).
  #
  # Messages from one process arrive in the order sent, so a caller that reads
  # Bridge.Metrics.snapshot/0 after its calls sees them: snapshot/0 first waits
  # until every collector has taken what was sent to it before (sync/0).

  use GenServer

  @key {__MODULE__, :pids}

  @doc false
  def child_spec(i),
    do: %{id: {__MODULE__, i}, start: {__MODULE__, :start_link, [i]}}

  @doc false
  # The collectors to start: one per scheduler.
  @spec children() :: [Supervisor.child_spec()]
  def children, do: for(i <- 1..System.schedulers_online(), do: child_spec(i))

  @doc false
  def start_link(i), do: GenServer.start_link(__MODULE__, i)

  @impl true
  def init(i) do
    register(i, self())
    {:ok, i}
  end

  # A collector that restarts takes its place again.
  defp register(i, pid) do
    pids = :persistent_term.get(@key, {})
    n = max(tuple_size(pids), System.schedulers_online())
    list = Tuple.to_list(pids) ++ List.duplicate(nil, n - tuple_size(pids))
    :persistent_term.put(@key, list |> List.replace_at(i - 1, pid) |> List.to_tuple())
  end

  @doc false
  # Sends a call's record to this scheduler's collector; false when there is
  # none (the application is not started): the caller records it itself.
  @spec send_record(tuple()) :: boolean()
  def send_record(record) do
    case :persistent_term.get(@key, {}) do
      {} ->
        false

      pids ->
        i = rem(:erlang.system_info(:scheduler_id) - 1, tuple_size(pids))

        case elem(pids, i) do
          pid when is_pid(pid) ->
            send(pid, record)
            true

          nil ->
            false
        end
    end
  end

  @doc false
  # Returns once every collector has recorded what was sent to it before.
  @spec sync() :: :ok
  def sync do
    :persistent_term.get(@key, {})
    |> Tuple.to_list()
    |> Enum.each(fn pid -> if is_pid(pid), do: catch_exit(GenServer.call(pid, :sync, 30_000)) end)
  end

  defp catch_exit(call) do
    call
  catch
    :exit, _ -> :ok
  end

  @impl true
  def handle_call(:sync, _from, i), do: {:reply, :ok, i}

  @impl true
  def handle_info({:record, pool, module, function, timings, result, tallies}, i) do
    Bridge.Metrics.record_now(pool, module, function, timings, result, tallies)
    {:noreply, i}
  end

  def handle_info(_other, i), do: {:noreply, i}
end
