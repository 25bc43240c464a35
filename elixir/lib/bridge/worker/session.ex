defmodule Bridge.Worker.Session do
  @moduledoc false
  # A worker's part in sessions (protocol/SPEC.md §8.9): which session holds it
  # and with which interpreter (a call of a session whose interpreter has died
  # since fails `:session_lost`: what it kept is gone), the end of a session,
  # and refs the BEAM let go of (the NIF's watch sends {:bridge_ref_gone,
  # session, ref} when a %Bridge.Ref{} is garbage-collected), told to the
  # interpreter in batches.

  alias Bridge.{Control, Error}
  alias Bridge.Worker.Interpreter

  @doc false
  # The pool reserved the worker for session `id` (nil: the session ended; told
  # to the interpreter once the call in flight, if any, is answered, so nothing
  # it keeps after the end outlives the session).
  @spec set(map(), pos_integer() | nil) :: map()
  def set(%{session: {id, _os_pid}, phase: :busy} = state, nil) when is_integer(id),
    do: %{state | session: {:ending, id}}

  def set(%{session: {id, _os_pid}} = state, nil) when is_integer(id) do
    if open?(state), do: Interpreter.send_frame(state, Control.frame({:session_end, id}))
    %{state | session: nil, dropped_refs: []}
  end

  def set(state, nil), do: %{state | session: nil}

  # The interpreter when the session starts; none yet (it is restarting): the
  # next one to take a call of the session
  def set(state, id), do: %{state | session: {id, List.first(state.os_pids)}}

  @doc false
  # A call is over: a session that ended meanwhile is told now.
  @spec after_call(map()) :: map()
  def after_call(%{session: {:ending, id}} = state), do: set(%{state | session: {id, nil}}, nil)
  def after_call(state), do: state

  @doc false
  # A call of the session starts on this interpreter: it is the session's from
  # now on if the session had none.
  @spec bind(map(), map()) :: map()
  def bind(%{session: {id, nil}} = state, %{session: id}),
    do: %{state | session: {id, List.first(state.os_pids)}}

  def bind(state, _request), do: state

  @doc false
  # What stops `request` from running here: nil, or the error its caller gets.
  @spec check(map(), map()) :: Error.t() | nil
  def check(state, %{session: id}) when is_integer(id) do
    case state.session do
      {^id, nil} ->
        nil

      {^id, os_pid} ->
        if List.first(state.os_pids) == os_pid, do: nil, else: lost(state, id)

      _ ->
        lost(state, id)
    end
  end

  def check(_state, _request), do: nil

  @doc false
  # A ref of the session was garbage-collected: told with the next batch.
  @spec ref_gone(map(), pos_integer(), pos_integer()) :: map()
  def ref_gone(%{session: {id, os_pid}} = state, id, ref) do
    if List.first(state.os_pids) == os_pid do
      if state.dropped_refs == [], do: send(self(), :flush_refs)
      %{state | dropped_refs: [ref | state.dropped_refs]}
    else
      state
    end
  end

  def ref_gone(state, _id, _ref), do: state

  @doc false
  @spec flush(map()) :: map()
  def flush(%{session: {id, _}, dropped_refs: [_ | _] = refs} = state) do
    if open?(state),
      do: Interpreter.send_frame(state, Control.frame({:refs_dropped, id, Enum.reverse(refs)}))

    %{state | dropped_refs: []}
  end

  def flush(state), do: %{state | dropped_refs: []}

  defp open?(state), do: state.port != nil and state.phase in [:ready, :busy]

  defp lost(state, id) do
    Error.new(:worker_died, :session_lost,
      field: :session,
      value: id,
      message:
        "worker died: session_lost: the interpreter of worker #{state.id} that session #{id} " <>
          "ran on has died (killed after a timeout it did not stop within :cancel_grace, or " <>
          "crashed): the objects the session kept are gone; start another session"
    )
  end
end
