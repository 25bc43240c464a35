defmodule Bridge.Pool do
  @moduledoc false
  # The pool of one Bridge (SPEC §8): idle workers and a bounded FIFO of
  # waiting callers, each with a deadline. A call goes to an idle worker at
  # once, else waits in the queue; with `max_queue` callers already waiting it
  # is refused with :overloaded at once. Waiting callers are monitored: one
  # that dies is dropped; one whose deadline passes gets :timeout. A worker
  # announces itself with {:available, pid} whenever it can take a call and
  # {:unavailable, pid} when its interpreter died while idle; a worker that got
  # a call it cannot run hands it back with {:requeue, ...}.
  #
  # The pool owns the bridge's arena set (Bridge.Arena): it makes it at start,
  # stores it with the config so callers write their arguments into it, drops
  # arenas that stayed empty for a while (every @trim_every ms: those idle for
  # @trim_idle ms, keeping one first-size arena warm) and tells the workers, and
  # closes it when the bridge stops. A queued request whose caller died has its
  # slices released here.

  use GenServer

  alias Bridge.{Arena, Config, Error, Worker}

  @trim_every 1_000
  @trim_idle 2_000

  defstruct name: nil,
            workers: %{},
            idle: [],
            queue: :queue.new(),
            waiting: %{},
            max_queue: 0,
            arena: nil,
            keep: 0

  @spec start_link(Config.t()) :: GenServer.on_start()
  def start_link(%Config{name: name} = config),
    do: GenServer.start_link(__MODULE__, config, name: name)

  @spec workers(GenServer.server()) :: [pid()]
  def workers(pool), do: GenServer.call(pool, :workers)

  @impl true
  def init(%Config{} = config) do
    Process.flag(:trap_exit, true)

    {:ok, arena} =
      Arena.new(limit: config.arena_limit, min_arena: config.min_arena, checksum: config.verify)

    Config.put(%{config | arena: arena, peer_minor: :atomics.new(1, signed: false)})
    # other nodes' callers find this pool through its :pg group (SPEC §15)
    Bridge.Cluster.join(config.name, self())
    Process.send_after(self(), :trim, @trim_every)

    {:ok,
     %__MODULE__{
       name: config.name,
       max_queue: config.max_queue,
       arena: arena,
       keep: config.min_arena
     }}
  end

  @impl true
  def terminate(_reason, state) do
    Config.erase(state.name)
    Arena.close(state.arena)

    # Callers still queued learn the bridge is gone instead of waiting out their timeout.
    for {_mref, {from, _req, _deadline, timer}} <- state.waiting do
      cancel(timer)
      GenServer.reply(from, {:error, stopped()})
    end

    :ok
  end

  @impl true
  # A call from a callback of this pool (SPEC §8.8): an idle worker now, or
  # :nested_call; never the queue, where it could wait for its own caller.
  def handle_call({:call, %{nested: true} = request, timeout}, from, state) do
    case state.idle do
      [worker | idle] ->
        Worker.run(worker, request, from, deadline(timeout))
        {:noreply, %{state | idle: idle}}

      [] ->
        {:reply, {:error, nested(state)}, state}
    end
  end

  def handle_call({:call, request, timeout}, from, state) do
    deadline = deadline(timeout)

    case state.idle do
      [worker | idle] when map_size(state.waiting) == 0 ->
        Worker.run(worker, request, from, deadline)
        {:noreply, %{state | idle: idle}}

      _ ->
        if map_size(state.waiting) >= state.max_queue do
          {:reply, {:error, overloaded(state)}, state}
        else
          {:noreply, state |> enqueue(request, from, deadline, :rear) |> dispatch()}
        end
    end
  end

  def handle_call(:workers, _from, state), do: {:reply, Map.keys(state.workers), state}

  @impl true
  def handle_cast({:available, worker}, state) do
    state = watch(state, worker)

    case dequeue(state) do
      {{from, request, deadline}, state} ->
        Worker.run(worker, request, from, deadline)
        {:noreply, %{state | idle: List.delete(state.idle, worker)}}

      {nil, state} ->
        # LIFO: the worker that just finished is the warmest (its interpreter
        # is awake, its arenas are in cache).
        idle = [worker | List.delete(state.idle, worker)]
        {:noreply, %{state | idle: idle}}
    end
  end

  def handle_cast({:unavailable, worker}, state),
    do: {:noreply, %{state | idle: List.delete(state.idle, worker)}}

  def handle_cast({:requeue, request, {pid, _} = from, deadline}, state) do
    if Process.alive?(pid) do
      {:noreply, state |> enqueue(request, from, deadline, :front) |> dispatch()}
    else
      drop(request)
      {:noreply, state}
    end
  end

  @impl true
  def handle_info({:expired, mref}, state) do
    case Map.pop(state.waiting, mref) do
      {{from, _request, _deadline, _timer}, waiting} ->
        Process.demonitor(mref, [:flush])

        error =
          Error.new(:timeout, :timeout,
            field: :timeout,
            message: "timeout: the call waited in the queue past its timeout (all workers busy)"
          )

        GenServer.reply(from, {:error, error})
        {:noreply, %{state | waiting: waiting}}

      {nil, _} ->
        {:noreply, state}
    end
  end

  def handle_info(:trim, state) do
    case Arena.trim(state.arena, @trim_idle, state.keep) do
      {:ok, []} -> :ok
      {:ok, ids} -> Enum.each(Map.keys(state.workers), &Worker.arenas_dropped(&1, ids))
    end

    Process.send_after(self(), :trim, @trim_every)
    {:noreply, state}
  end

  def handle_info({:DOWN, mref, :process, pid, _reason}, state) do
    case Map.pop(state.workers, pid) do
      {^mref, workers} ->
        {:noreply, %{state | workers: workers, idle: List.delete(state.idle, pid)}}

      _ ->
        # A queued caller died: drop its request (the queue skips missing refs).
        case Map.pop(state.waiting, mref) do
          {{_from, req, _deadline, timer}, waiting} ->
            cancel(timer)
            drop(req)
            {:noreply, %{state | waiting: waiting}}

          {nil, _} ->
            {:noreply, state}
        end
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  # Hands queued calls to idle workers while there are both.
  defp dispatch(%{idle: [worker | idle]} = state) do
    case dequeue(state) do
      {{from, request, deadline}, state} ->
        Worker.run(worker, request, from, deadline)
        dispatch(%{state | idle: idle})

      {nil, state} ->
        state
    end
  end

  defp dispatch(state), do: state

  defp watch(state, worker) do
    if Map.has_key?(state.workers, worker),
      do: state,
      else: %{state | workers: Map.put(state.workers, worker, Process.monitor(worker))}
  end

  defp enqueue(state, request, {pid, _} = from, deadline, where) do
    mref = Process.monitor(pid)

    timer =
      if deadline == :infinity,
        do: nil,
        else: Process.send_after(self(), {:expired, mref}, max(deadline - now(), 0))

    queue =
      if where == :front, do: :queue.in_r(mref, state.queue), else: :queue.in(mref, state.queue)

    %{
      state
      | queue: queue,
        waiting: Map.put(state.waiting, mref, {from, request, deadline, timer})
    }
  end

  # The oldest live entry; refs of dropped entries (expired, caller died) are skipped.
  defp dequeue(state) do
    case :queue.out(state.queue) do
      {{:value, mref}, queue} ->
        case Map.pop(state.waiting, mref) do
          {{from, request, deadline, timer}, waiting} ->
            cancel(timer)
            Process.demonitor(mref, [:flush])
            {{from, request, deadline}, %{state | queue: queue, waiting: waiting}}

          {nil, _} ->
            dequeue(%{state | queue: queue})
        end

      {:empty, _} ->
        {nil, state}
    end
  end

  defp overloaded(state) do
    Error.new(:overloaded, :overloaded,
      field: :max_queue,
      value: map_size(state.waiting),
      limit: state.max_queue,
      message:
        "overloaded: #{map_size(state.waiting)} callers are already waiting (max_queue " <>
          "#{state.max_queue}); retry later or raise :max_queue / :pool_size"
    )
  end

  defp nested(state) do
    Error.new(:overloaded, :nested_call,
      field: :pool_size,
      value: map_size(state.workers),
      message:
        "overloaded: nested_call: a callback called #{inspect(state.name)}, whose workers " <>
          "are all busy, one of them waiting for that callback: the call would wait, " <>
          "perhaps for itself; raise :pool_size, or do the work in the callback's caller"
    )
  end

  defp deadline(:infinity), do: :infinity
  defp deadline(timeout), do: now() + timeout

  defp stopped,
    do:
      Error.new(:worker_died, :stopped,
        message: "worker died: the bridge stopped while the call was queued"
      )

  # The request of a caller that died: its arguments' slices go now (this
  # process would otherwise keep them until its next garbage collection).
  defp drop(%{slices: slices}), do: Enum.each(slices, &Arena.release/1)
  defp drop(_request), do: :ok

  defp cancel(nil), do: :ok
  defp cancel(ref), do: Process.cancel_timer(ref)

  defp now, do: System.monotonic_time(:millisecond)
end
