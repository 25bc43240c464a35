defmodule Bridge.Pool.Sessions do
  @moduledoc false
  # The sessions of a pool (protocol/SPEC.md §8.9), in the pool's state: a
  # worker reserved for each, its owner monitored, its calls queued in order
  # while its worker is busy. A reserved worker is never in the pool's idle
  # list; when its session ends (checkin, or the owner's exit) the worker is
  # told (its interpreter drops what the session kept) and comes back to the
  # pool as any worker that finished a call.
  #
  # sessions: id => %{worker, owner, mref, queue (caller monitor refs, as the
  # pool's own queue), idle?}; reserved: worker => id.

  alias Bridge.{Error, Worker}

  @doc false
  # Reserves `worker` for a session of `owner`: the session, and the state.
  @spec reserve(map(), pid(), pid()) :: {Bridge.Session.t(), map()}
  def reserve(state, worker, owner) do
    id = System.unique_integer([:positive, :monotonic])
    mref = Process.monitor(owner)
    Worker.session(worker, id)
    entry = %{worker: worker, owner: owner, mref: mref, queue: :queue.new(), idle?: true}

    state = %{
      state
      | sessions: Map.put(state.sessions, id, entry),
        reserved: Map.put(state.reserved, worker, id)
    }

    {%Bridge.Session{pool: state.name, id: id, worker: worker, owner: owner}, state}
  end

  @doc false
  # A call of session `id`: run now on its idle worker, or queued behind the
  # session's calls: {:run, worker, state} | {:queue, state} | {:error, error}.
  @spec call(map(), pos_integer(), map()) ::
          {:run, pid(), map()} | {:queue, map()} | {:error, Error.t()}
  def call(state, id, request) do
    case state.sessions do
      %{^id => %{idle?: true} = s} ->
        {:run, s.worker, put(state, id, %{s | idle?: false})}

      %{^id => _} when request.nested ->
        {:error, nested(state.name)}

      %{^id => _} ->
        {:queue, state}

      _ ->
        {:error, ended(id)}
    end
  end

  @doc false
  # Queue the call waiting as `mref` (the pool keeps the rest) behind session `id`.
  @spec enqueue(map(), pos_integer(), reference(), :front | :rear) :: map()
  def enqueue(state, id, mref, where) do
    s = Map.fetch!(state.sessions, id)
    queue = if where == :front, do: :queue.in_r(mref, s.queue), else: :queue.in(mref, s.queue)
    put(state, id, %{s | queue: queue})
  end

  @doc false
  # The session's worker can take a call: the next queued one ({:run, mref,
  # state}), or it waits idle ({:idle, state}).
  @spec available(map(), pid()) :: {:run, reference(), map()} | {:idle, map()}
  def available(state, worker) do
    id = Map.fetch!(state.reserved, worker)
    s = Map.fetch!(state.sessions, id)

    case next(s.queue, state.waiting) do
      {mref, queue} -> {:run, mref, put(state, id, %{s | queue: queue, idle?: false})}
      nil -> {:idle, put(state, id, %{s | queue: :queue.new(), idle?: true})}
    end
  end

  defp next(queue, waiting) do
    case :queue.out(queue) do
      {{:value, mref}, rest} ->
        if is_map_key(waiting, mref), do: {mref, rest}, else: next(rest, waiting)

      {:empty, _} ->
        nil
    end
  end

  @doc false
  # The session's worker stopped taking calls (its interpreter died): its
  # calls wait until it is back.
  @spec unavailable(map(), pid()) :: map()
  def unavailable(state, worker) do
    id = Map.fetch!(state.reserved, worker)
    put(state, id, %{Map.fetch!(state.sessions, id) | idle?: false})
  end

  @doc false
  # Session `id` ends (checkin, or its owner exited): its queued callers are
  # told, its worker is told and returned ({worker or nil, callers, state}; the
  # pool treats the worker as available when it was idle, else when it
  # announces itself after its call).
  @spec finish(map(), pos_integer()) :: {pid() | nil, [reference()], boolean(), map()}
  def finish(state, id) do
    case Map.pop(state.sessions, id) do
      {nil, _} ->
        {nil, [], false, state}

      {s, sessions} ->
        Process.demonitor(s.mref, [:flush])
        Worker.session(s.worker, nil)
        state = %{state | sessions: sessions, reserved: Map.delete(state.reserved, s.worker)}
        {s.worker, :queue.to_list(s.queue), s.idle?, state}
    end
  end

  @doc false
  # The session whose owner's monitor is `mref`, if any.
  @spec of_owner(map(), reference()) :: pos_integer() | nil
  def of_owner(state, mref),
    do: Enum.find_value(state.sessions, fn {id, s} -> if s.mref == mref, do: id end)

  defp put(state, id, s), do: %{state | sessions: Map.put(state.sessions, id, s)}

  @doc false
  @spec ended(pos_integer()) :: Error.t()
  def ended(id) do
    Error.new(:bad_call, :no_session,
      field: :session,
      value: id,
      message:
        "bad call: no_session: session #{id} has ended (its function returned, or its " <>
          "owner exited); open another with Bridge.session/3"
    )
  end

  @doc false
  # The error of a session's queued calls when its worker process died.
  @spec lost(pid()) :: Error.t()
  def lost(worker) do
    Error.new(:worker_died, :session_lost,
      field: :session,
      message:
        "worker died: session_lost: the worker process #{inspect(worker)} of the session " <>
          "exited: the objects the session kept are gone; start another session"
    )
  end

  defp nested(pool) do
    Error.new(:overloaded, :nested_call,
      field: :session,
      message:
        "overloaded: nested_call: a callback called its own session of #{inspect(pool)}, " <>
          "whose worker is waiting for that callback: the call would wait for itself"
    )
  end
end
