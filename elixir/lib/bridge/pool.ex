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
  alias Bridge.Pool.Sessions

  @trim_every 1_000
  @trim_idle 2_000

  defstruct name: nil,
            workers: %{},
            idle: [],
            queue: :queue.new(),
            waiting: %{},
            max_queue: 0,
            arena: nil,
            keep: 0,
            sessions: %{},
            reserved: %{}

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
  # A call of a session (SPEC §8.9): on the session's worker, in turn.
  def handle_call({:call, %{session: id} = request, timeout}, from, state)
      when is_integer(id) do
    case Sessions.call(state, id, request) do
      {:run, worker, state} ->
        Worker.run(worker, request, from, deadline(timeout))
        {:noreply, state}

      {:queue, state} when map_size(state.waiting) >= state.max_queue ->
        {:reply, {:error, overloaded(state)}, state}

      {:queue, state} ->
        state = enqueue(state, request, from, deadline(timeout), :rear, id)
        {:noreply, state}

      {:error, error} ->
        {:reply, {:error, error}, state}
    end
  end

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

  # Bridge.session/3: a worker of its own for `owner`, now or when one is free.
  def handle_call({:checkout, owner, timeout, nested}, from, state) do
    request = %{checkout: owner}

    case state.idle do
      [worker | idle] when map_size(state.waiting) == 0 or nested ->
        {session, state} = Sessions.reserve(%{state | idle: idle}, worker, owner)
        {:reply, {:ok, session}, state}

      [] when nested ->
        {:reply, {:error, nested(state)}, state}

      _ ->
        if map_size(state.waiting) >= state.max_queue,
          do: {:reply, {:error, overloaded(state)}, state},
          else:
            {:noreply, state |> enqueue(request, from, deadline(timeout), :rear) |> dispatch()}
    end
  end

  def handle_call({:checkin, id}, _from, state), do: {:reply, :ok, end_session(state, id)}

  @impl true
  def handle_cast({:available, worker}, state) when is_map_key(state.reserved, worker) do
    case Sessions.available(state, worker) do
      {:run, mref, state} ->
        {{from, request, deadline}, state} = take(state, mref)
        Worker.run(worker, request, from, deadline)
        {:noreply, state}

      {:idle, state} ->
        {:noreply, state}
    end
  end

  def handle_cast({:available, worker}, state) do
    state = watch(state, worker)

    case dequeue(state) do
      {{from, request, deadline}, state} ->
        state = start(state, worker, from, request, deadline)
        {:noreply, %{state | idle: List.delete(state.idle, worker)}}

      {nil, state} ->
        # LIFO: the worker that just finished is the warmest (its interpreter
        # is awake, its arenas are in cache).
        idle = [worker | List.delete(state.idle, worker)]
        {:noreply, %{state | idle: idle}}
    end
  end

  def handle_cast({:unavailable, worker}, state) when is_map_key(state.reserved, worker),
    do: {:noreply, Sessions.unavailable(state, worker)}

  def handle_cast({:unavailable, worker}, state),
    do: {:noreply, %{state | idle: List.delete(state.idle, worker)}}

  def handle_cast({:requeue, %{session: id} = request, from, deadline}, state)
      when is_integer(id) do
    if is_map_key(state.sessions, id) do
      {:noreply, enqueue(state, request, from, deadline, :front, id)}
    else
      GenServer.reply(from, {:error, Sessions.ended(id)})
      {:noreply, state}
    end
  end

  # A nested call never waits (SPEC §8.8): its worker was not ready after all.
  def handle_cast({:requeue, %{nested: true}, from, _deadline}, state) do
    GenServer.reply(from, {:error, nested(state)})
    {:noreply, state}
  end

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
    cond do
      Map.get(state.workers, pid) == mref ->
        state = %{state | workers: Map.delete(state.workers, pid)}
        lost = Sessions.lost(pid)
        state = if id = state.reserved[pid], do: end_session(state, id, lost), else: state
        {:noreply, %{state | idle: List.delete(state.idle, pid)}}

      # A queued caller died: drop its request (the queues skip missing refs).
      Map.has_key?(state.waiting, mref) ->
        {{_from, req, _deadline}, state} = take(state, mref)
        drop(req)
        {:noreply, state}

      # A session's owner exited: the session ends.
      id = Sessions.of_owner(state, mref) ->
        {:noreply, end_session(state, id)}

      true ->
        {:noreply, state}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  # Hands queued calls (and checkouts) to idle workers while there are both.
  defp dispatch(%{idle: [worker | idle]} = state) do
    case dequeue(state) do
      {{from, request, deadline}, state} ->
        state = start(%{state | idle: idle}, worker, from, request, deadline)
        dispatch(state)

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

  # A checkout reserves the worker; a call runs on it.
  defp start(state, worker, from, %{checkout: owner}, _deadline) do
    {session, state} = Sessions.reserve(state, worker, owner)
    GenServer.reply(from, {:ok, session})
    state
  end

  defp start(state, worker, from, request, deadline) do
    Worker.run(worker, request, from, deadline)
    state
  end

  # Session `id` ends: its queued callers are told, its worker told and (idle)
  # back among the pool's.
  defp end_session(state, id, error \\ nil) do
    {worker, queued, idle?, state} = Sessions.finish(state, id)
    error = error || Sessions.ended(id)

    state =
      Enum.reduce(queued, state, fn mref, state ->
        if Map.has_key?(state.waiting, mref) do
          {{from, _request, _deadline}, state} = take(state, mref)
          GenServer.reply(from, {:error, error})
          state
        else
          state
        end
      end)

    if idle? and worker != nil and Map.has_key?(state.workers, worker),
      do: handle_available(state, worker),
      else: state
  end

  defp handle_available(state, worker) do
    {:noreply, state} = handle_cast({:available, worker}, state)
    state
  end

  # Queued behind session `id` (its own queue holds the caller's monitor ref).
  defp enqueue(state, request, from, deadline, where, id) do
    {mref, state} = wait(state, request, from, deadline)
    Sessions.enqueue(state, id, mref, where)
  end

  defp enqueue(state, request, from, deadline, where) do
    {mref, state} = wait(state, request, from, deadline)

    queue =
      if where == :front, do: :queue.in_r(mref, state.queue), else: :queue.in(mref, state.queue)

    %{state | queue: queue}
  end

  # A waiting caller: monitored, with its deadline's timer.
  defp wait(state, request, {pid, _} = from, deadline) do
    mref = Process.monitor(pid)

    timer =
      if deadline == :infinity,
        do: nil,
        else: Process.send_after(self(), {:expired, mref}, max(deadline - now(), 0))

    {mref, %{state | waiting: Map.put(state.waiting, mref, {from, request, deadline, timer})}}
  end

  # The waiting entry of `mref`, taken out.
  defp take(state, mref) do
    {{from, request, deadline, timer}, waiting} = Map.pop(state.waiting, mref)
    cancel(timer)
    Process.demonitor(mref, [:flush])
    {{from, request, deadline}, %{state | waiting: waiting}}
  end

  # The oldest live entry; refs of dropped entries (expired, caller died) are skipped.
  defp dequeue(state) do
    case :queue.out(state.queue) do
      {{:value, mref}, queue} ->
        if Map.has_key?(state.waiting, mref),
          do: take(%{state | queue: queue}, mref),
          else: dequeue(%{state | queue: queue})

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
