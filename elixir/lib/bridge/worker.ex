defmodule Bridge.Worker do
  @moduledoc false
  # One Python worker process behind one Port (protocol/SPEC.md
  # §8). The GenServer outlives the OS process: when Python dies it fails the
  # call in flight with :worker_died, ends every lease the worker held on this
  # node's slices and starts a new interpreter with exponential backoff. It runs
  # one call at a time and enforces the call's deadline itself: on timeout it
  # answers the caller, kills the interpreter (SIGTERM, SIGKILL after a grace
  # period) and starts a fresh one, so a late answer never reaches anyone.
  #
  # It only routes: callers encode their arguments into the bridge's arenas and
  # build the call frame (Bridge.call/3), and decode the answer's body; this
  # process lends the call's slices, sends the frame, reads the answer's envelope
  # and hands the body to the caller. A call past its deadline is answered
  # :timeout and its handler interrupted (Bridge.Worker.Cancel, SPEC §8.7); the
  # interpreter is killed only when it does not stop within `cancel_grace`. This module is the call state machine and
  # the pool's view of the worker; the interpreter's life (port, readiness,
  # kill, restart, backoff, shutdown) is Bridge.Worker.Interpreter, the shared
  # objects Bridge.Worker.Objects, answers Bridge.Worker.Replies, the streams of
  # a call (§8.6) Bridge.Worker.Streams, the frames Bridge.Control.
  #
  # phase: :starting (port open, waiting for {:ready, ...}) | :ready | :busy
  #        | :killing (signals sent, waiting for the exit status) | :down
  #        (waiting for the restart timer)

  use GenServer

  require Logger

  alias Bridge.{Config, Control, Error, FormatStats, Lane, Registry}

  alias Bridge.Worker.{
    Callbacks,
    Cancel,
    Interpreter,
    LaneCalls,
    Objects,
    Replies,
    Session,
    Streams
  }

  defstruct [
    :config,
    :index,
    :id,
    :port,
    :call,
    :timer,
    :ready_at,
    :after_exit,
    :lane,
    :lane_seq,
    # {session id, the interpreter's os pid when it was reserved} (SPEC §8.9)
    :session,
    dropped_refs: [],
    lane_calls: 0,
    lane_parked: 0,
    lane_sent_at: 0,
    lane_spin_us: 0,
    os_pids: [],
    minor: 0,
    spin_us: 0,
    phase: :down,
    available?: false,
    objects: %Objects{},
    backoff: Interpreter.backoff_min()
  ]

  # Atoms a worker may send (protocol/SPEC.md §8), from protocol/registry.json.
  # binary_to_term(_, [:safe]) refuses atoms that do not exist yet: this list is
  # a literal of this module, so they exist whenever it is loaded, before any
  # frame of a worker is decoded (and the module recompiles with the registry).
  @protocol_atoms Registry.wire_atoms()

  @doc false
  @spec protocol_atoms() :: [atom()]
  def protocol_atoms, do: @protocol_atoms

  ## API

  @spec child_spec({Config.t(), pos_integer()}) :: Supervisor.child_spec()
  def child_spec({_config, index} = arg) do
    %{id: {__MODULE__, index}, start: {__MODULE__, :start_link, [arg]}, shutdown: 5_000}
  end

  @spec start_link({Config.t(), pos_integer()}) :: GenServer.on_start()
  def start_link(arg), do: GenServer.start_link(__MODULE__, arg)

  @doc false
  # Asks the worker to run `request` (%{id, frame, slices, module, function},
  # built by the caller) and answer `from` before the monotonic `deadline`.
  @spec run(pid(), map(), GenServer.from(), integer() | :infinity) :: :ok
  def run(worker, request, from, deadline),
    do: GenServer.cast(worker, {:run, request, from, deadline})

  @doc false
  # A caller found the body of the answer to call `id` malformed: the worker broke
  # the protocol and is replaced.
  @spec bad_answer(pid(), Error.t()) :: :ok
  def bad_answer(worker, error), do: GenServer.cast(worker, {:bad_answer, error})

  @doc false
  # The bridge dropped these arenas (Bridge.Pool's trim).
  @spec arenas_dropped(pid(), [pos_integer()]) :: :ok
  def arenas_dropped(worker, ids), do: GenServer.cast(worker, {:arenas_dropped, ids})

  @doc false
  # The pool reserved this worker for session `id`, or (nil) the session ended.
  @spec session(pid(), pos_integer() | nil) :: :ok
  def session(worker, id), do: GenServer.cast(worker, {:session, id})

  @spec info(pid()) :: map()
  def info(worker), do: GenServer.call(worker, :info)

  ## Start

  @impl true
  def init({%Config{} = config, index}) do
    Process.flag(:trap_exit, true)
    # The pool put the bridge's arenas into the stored config.
    config = Config.get(config.name) || config

    state = %__MODULE__{
      config: config,
      index: index,
      id: "#{inspect(config.name)}.#{index}",
      spin_us: Lane.spin_us(config.spin_us),
      lane_spin_us: Lane.spin_us(config.spin_us)
    }

    Logger.metadata(worker: state.id)

    case Interpreter.start_sync(state) do
      {:ok, state} -> {:ok, become_ready(state)}
      {:error, error} -> {:stop, error}
    end
  end

  defp become_ready(state) do
    GenServer.cast(state.config.name, {:available, self()})
    %{state | phase: :ready, available?: true}
  end

  defp unavailable(%{available?: true} = state) do
    GenServer.cast(state.config.name, {:unavailable, self()})
    %{state | available?: false}
  end

  defp unavailable(state), do: state

  ## Calls

  @impl true
  def handle_cast({:run, request, from, deadline}, %{phase: :ready} = state) do
    state = %{state | available?: false}

    cond do
      deadline != :infinity and now() >= deadline ->
        GenServer.reply(from, {:error, timeout_error(state, :queued)})
        {:noreply, become_ready(state)}

      error = Streams.unspoken(request, state.minor) || Session.check(state, request) ->
        GenServer.reply(from, {:error, error})
        {:noreply, become_ready(state)}

      true ->
        {:noreply, state |> Session.bind(request) |> start_call(request, from, deadline)}
    end
  end

  def handle_cast({:run, request, from, deadline}, state) do
    # Not ready (the interpreter died after the pool chose us): back to the pool.
    GenServer.cast(state.config.name, {:requeue, request, from, deadline})
    {:noreply, %{state | available?: false}}
  end

  def handle_cast({:bad_answer, error}, %{phase: phase} = state)
      when phase in [:ready, :busy] do
    Logger.error("beambridge worker #{state.id}: #{Exception.message(error)}; killing it")
    {:noreply, kill(state, :restart_backoff)}
  end

  def handle_cast({:bad_answer, _error}, state), do: {:noreply, state}

  def handle_cast({:arenas_dropped, ids}, %{port: port} = state) when port != nil do
    {objects, frames} = Objects.dropped(state.objects, ids)
    Enum.each(frames, &Interpreter.send_frame(state, &1))
    {:noreply, %{state | objects: objects}}
  end

  def handle_cast({:arenas_dropped, _ids}, state), do: {:noreply, state}

  def handle_cast({:sealed_mapped, port, ids}, %{port: port} = state) do
    Interpreter.send_frame(state, Control.frame({:sealed_mapped, ids}))
    {:noreply, state}
  end

  def handle_cast({:sealed_mapped, _port, _ids}, state), do: {:noreply, state}

  # The caller's side of the streams of the call in flight (Bridge.Worker.Streams).
  def handle_cast({:stream, id, message}, %{phase: :busy, call: %{id: id, streams: s}} = state)
      when s != nil do
    {streams, objects} = Streams.from_caller(state, s, id, message)
    state = %{state | objects: objects, call: %{state.call | streams: streams}}
    {:noreply, if(match?({:ack, _}, message), do: rearm(state), else: state)}
  end

  def handle_cast({:stream, _id, _message}, state), do: {:noreply, state}

  def handle_cast({:session, id}, state), do: {:noreply, Session.set(state, id)}

  # The answer to a callback or send of the call in flight (Bridge.Worker.Callbacks).
  def handle_cast({:callback_reply, id, cid, reply}, state),
    do: {:noreply, Callbacks.reply(state, id, cid, reply)}

  defp start_call(state, %{id: id, frame: frame, slices: slices} = request, from, deadline) do
    case Objects.lend(state.objects, state.config.arena, slices) do
      {:ok, objects, announcements} ->
        timer = if deadline == :infinity, do: nil, else: call_timer(id, deadline)
        streams = Streams.open(request, from)

        call = call_state(request, from, streams)

        state = %{state | phase: :busy, call: call, timer: timer, objects: objects}

        if streams do
          # stream frames go on the pipe: the call does too, before them
          state = send_frames(state, announcements ++ [frame])
          Streams.started(streams, id)
          state
        else
          send_call(state, announcements ++ [frame])
        end

      {:error, error} ->
        # The caller gave its slices up: it is gone, or past its deadline.
        GenServer.reply(from, {:error, error})
        become_ready(state)
    end
  end

  @doc false
  # What the worker keeps of the call in flight.
  @spec call_state(map(), GenServer.from(), Streams.t() | nil) :: map()
  def call_state(request, from, streams) do
    %{
      id: request.id,
      from: from,
      module: request.module,
      function: request.function,
      streams: streams,
      sent: System.monotonic_time(),
      timings: nil,
      cancelled: false,
      # callbacks waiting for their answer, and the caller's monitor meanwhile
      callbacks: %{},
      watch: nil
    }
  end

  # The call's frames go through the lane when it can take them (LaneCalls), else
  # on the pipe.
  defp send_call(state, frames) do
    case LaneCalls.send(state, frames) do
      {:sent, state} -> lane_answer(LaneCalls.await(state))
      :pipe -> send_frames(state, frames)
    end
  end

  defp send_frames(state, frames) do
    Enum.each(frames, &Interpreter.send_frame(state, &1))
    state
  end

  defp lane_answer({:none, state}), do: state
  defp lane_answer({:error, error, state}), do: violation(state, error)

  defp lane_answer({:frames, frames, state}) do
    Enum.reduce(frames, state, fn
      frame, %{phase: phase} = state when phase in [:starting, :ready, :busy] ->
        handle_frame(frame, state)

      _frame, state ->
        state
    end)
  end

  defp call_timer(id, deadline),
    do: Process.send_after(self(), {:call_timeout, id}, max(deadline - now(), 0))

  # A result stream's timeout applies to each element: it restarts as one comes
  # or the consumer takes one.
  defp rearm(%{call: %{cancelled: true}} = state), do: state

  defp rearm(%{call: %{id: id, streams: s}} = state) do
    case Streams.element_timeout(s) do
      t when is_integer(t) ->
        cancel(state.timer)
        %{state | timer: call_timer(id, now() + t)}

      _ ->
        state
    end
  end

  defp finish_call(state, reply) do
    Streams.reply(state.call, reply)
    done(state)
  end

  defp done(state) do
    cancel(state.timer)
    if state.call.watch, do: Process.demonitor(state.call.watch, [:flush])
    Streams.close(state.call.streams)
    state = Session.after_call(%{state | call: nil, timer: nil})
    become_ready(state)
  end

  # The call in flight, if any, fails with `error`.
  defp fail_call(%{call: nil} = state, _error), do: state

  defp fail_call(state, error) do
    Streams.reply(state.call, {:error, error})
    Streams.close(state.call.streams)
    if state.call.watch, do: Process.demonitor(state.call.watch, [:flush])
    %{state | call: nil}
  end

  ## Port messages and timers

  @impl true
  def handle_info({port, {:data, bin}}, %{port: port, phase: phase} = state)
      when phase in [:starting, :ready, :busy],
      do: {:noreply, handle_frame(bin, state)}

  # While the interpreter is being killed its frames (a late answer) are dropped.
  def handle_info({port, {:data, _}}, %{port: port} = state), do: {:noreply, state}

  def handle_info({:lane_check, lane, seq}, %{lane: lane, lane_seq: seq} = state),
    do: {:noreply, lane_answer(LaneCalls.take(state))}

  def handle_info({port, {:exit_status, status}}, %{port: port} = state),
    do: {:noreply, exited(state, status)}

  # The port failed (a write to an interpreter that died with frames still queued
  # for it: EPIPE): no exit status follows.
  def handle_info({:EXIT, port, reason}, %{port: port} = state) when is_port(port) do
    Enum.each(state.os_pids, &Bridge.NIF.kill(&1, :kill))
    {:noreply, exited(state, {:port_closed, reason})}
  end

  def handle_info(
        {:call_timeout, id},
        %{phase: :busy, call: %{id: id, streams: s, cancelled: false}} = state
      )
      when s != nil and s.result != nil and s.result.cancelled == false do
    if Streams.waiting_for_consumer?(s),
      do: {:noreply, rearm(state)},
      else: {:noreply, call_timed_out(state)}
  end

  def handle_info(
        {:call_timeout, id},
        %{phase: :busy, call: %{id: id, cancelled: false}} = state
      ),
      do: {:noreply, call_timed_out(state)}

  def handle_info({:cancel_grace, id}, %{phase: :busy, call: %{id: id, cancelled: true}} = state) do
    Cancel.gave_up(state)
    Streams.close(state.call.streams)
    {:noreply, kill(%{state | call: nil, timer: nil}, :restart_now)}
  end

  # The caller exited while a callback waited for it (Bridge.Worker.Callbacks).
  def handle_info({:DOWN, ref, :process, _, _}, %{call: %{watch: ref}} = state),
    do: {:noreply, Callbacks.caller_down(state)}

  # The caller of a call with streams exited: stop them (the answer goes nowhere).
  def handle_info({:DOWN, ref, :process, _, _}, %{call: %{streams: %{ref: ref} = s}} = state) do
    streams = Streams.caller_down(state, s, state.call.id)
    {:noreply, %{state | call: %{state.call | streams: streams}}}
  end

  def handle_info({:start_timeout, port}, %{port: port, phase: :starting} = state) do
    Logger.error(
      "beambridge worker #{state.id}: not ready within #{state.config.start_timeout} ms; retrying"
    )

    {:noreply, kill(state, :restart_backoff)}
  end

  def handle_info({:escalate, port}, %{port: port, phase: :killing} = state),
    do: {:noreply, Interpreter.escalate(state)}

  def handle_info({:give_up, port}, %{port: port, phase: :killing} = state) do
    Interpreter.give_up(state)
    {:noreply, exited(state, :unknown)}
  end

  def handle_info(:restart, %{phase: :down} = state), do: {:noreply, Interpreter.restart(state)}

  # A %Bridge.Ref{} of the session was garbage-collected (its NIF watch).
  def handle_info({:bridge_ref_gone, id, ref}, state),
    do: {:noreply, Session.ref_gone(state, id, ref)}

  def handle_info(:flush_refs, state), do: {:noreply, Session.flush(state)}

  def handle_info(_other, state), do: {:noreply, state}

  defp call_timed_out(state) do
    cancel(state.timer)

    case Cancel.start(state) do
      {:ok, state} -> state
      :kill -> call_killed(state)
    end
  end

  defp call_killed(state) do
    Streams.reply(state.call, {:error, timeout_error(state, :running)})

    Logger.warning(
      "beambridge worker #{state.id}: call #{inspect(state.call.module)}.#{state.call.function} " <>
        "timed out; restarting the interpreter"
    )

    Streams.close(state.call.streams)
    kill(%{state | call: nil, timer: nil}, :restart_now)
  end

  @impl true
  def handle_call(:info, _from, state) do
    info = %{
      id: state.id,
      pid: self(),
      os_pid: List.first(state.os_pids),
      phase: state.phase,
      lent_slices: map_size(state.objects.lent),
      worker_arenas: map_size(state.objects.peers),
      # the worker's arenas mapped here, and its result slices callers still hold
      worker_arena_bytes: 0,
      held_slices: 0,
      held_bytes: 0,
      lane: state.lane != nil,
      lane_calls: state.lane_calls,
      lane_parked: state.lane_parked
    }

    {:reply, Map.merge(info, Objects.usage(state.objects)), state}
  end

  # One frame from the worker, from the pipe or the lane.
  defp handle_frame(bin, state) do
    case Control.split(bin) do
      {:ok, envelope, body}
      when body != "" and elem(envelope, 0) not in [:ok, :element, :callback, :send] ->
        unexpected(state, {envelope, {:body, byte_size(body)}})

      {:ok, {:log, stream, data} = log, _}
      when stream in [:stdout, :stderr] and is_binary(data) ->
        Interpreter.log(state, log)
        state

      {:ok, envelope, body} ->
        handle_message(envelope, body, state)

      {:error, error} ->
        violation(state, error)
    end
  end

  defp handle_message({:ready, os_pid, {2, minor}}, _body, %{phase: :starting} = state)
       when is_integer(os_pid) and is_integer(minor) do
    Logger.debug("beambridge worker #{state.id}: ready, os pid #{os_pid}")
    become_ready(Interpreter.ready(state, os_pid, minor))
  end

  defp handle_message({:ready, _, {major, minor}}, _body, %{phase: :starting} = state)
       when is_integer(major) and is_integer(minor) do
    Logger.error("beambridge worker #{state.id}: #{Control.other_major(major, minor)}")
    kill(state, :restart_backoff)
  end

  # The answer waits in the lane (or a ring that came after it was taken).
  defp handle_message(:lane, _body, state), do: lane_answer(LaneCalls.take(state))

  defp handle_message({:object, _, _, _, _, _, _} = announcement, _body, state) do
    case Objects.object(state.objects, announcement, List.first(state.os_pids)) do
      {:ok, objects} -> %{state | objects: objects}
      {:error, error} -> violation(state, error)
    end
  end

  defp handle_message({:object_dropped, id}, _body, state) when is_integer(id),
    do: %{state | objects: Objects.drop(state.objects, id)}

  defp handle_message({:fallbacks, list} = message, _body, state) do
    case FormatStats.worker_fallbacks(list) do
      :ok -> state
      :error -> unexpected(state, message)
    end
  end

  defp handle_message({:released, list}, _body, state) do
    case Objects.released(state.objects, list) do
      {:ok, objects} -> %{state | objects: objects}
      {:error, error} -> violation(state, error)
    end
  end

  # Since 2.5 an answer ends with the interpreter's timings (SPEC §8.3).
  defp handle_message(
         {tag, id, detail, released, {d, r, e} = timings},
         body,
         %{phase: :busy, call: %{id: id}} = state
       )
       when tag in [:ok, :error] and is_integer(d) and d >= 0 and is_integer(r) and r >= 0 and
              is_integer(e) and e >= 0 do
    state = %{state | call: %{state.call | timings: timings}}
    handle_message({tag, id, detail, released}, body, state)
  end

  defp handle_message(
         {:ok, id, entries, released},
         body,
         %{phase: :busy, call: %{id: id}} = state
       ) do
    with {:ok, plan, objects} <- Objects.plan(state.objects, entries, state.config.untrusted),
         {:ok, objects} <- Objects.released(objects, released) do
      state = %{state | objects: objects}
      answer(state, body, plan)
      done(state)
    else
      {:error, error} -> violation(state, error)
    end
  end

  defp handle_message(
         {:error, id, error, released},
         _body,
         %{phase: :busy, call: %{id: id}} = state
       ) do
    case Objects.released(state.objects, released) do
      {:ok, objects} -> answer_error(%{state | objects: objects}, id, error, released)
      {:error, violated} -> violation(state, violated)
    end
  end

  # Streams (SPEC §8.6): elements and the end of the result stream, and the
  # acknowledgements of argument streams, of the call in flight.
  defp handle_message(envelope, body, %{phase: :busy, call: %{id: id, streams: s}} = state)
       when elem(envelope, 0) in [:element, :ack, :done] and elem(envelope, 1) == id do
    case Streams.frame(state, s, envelope, body) do
      {:ok, s, objects} -> rearm(%{state | objects: objects, call: %{state.call | streams: s}})
      {:reply, reply} -> finish_call(state, reply)
      {:error, error} -> violation(state, error)
      :unexpected -> unexpected(state, envelope)
    end
  end

  # A callback into Elixir, or a message to send, from the handler (SPEC §8.8).
  defp handle_message(envelope, body, %{phase: :busy, call: %{id: id}} = state)
       when (tuple_size(envelope) == 7 and elem(envelope, 0) == :callback and
               elem(envelope, 1) == id) or
              (tuple_size(envelope) == 5 and elem(envelope, 0) == :send and
                 elem(envelope, 1) == id) do
    case Callbacks.frame(state, envelope, body) do
      {:ok, state} -> state
      {:error, error} -> violation(state, error)
    end
  end

  defp handle_message(other, _body, state), do: unexpected(state, other)

  defp unexpected(state, other) do
    call_id = if state.phase == :busy, do: state.call.id
    violation(state, Replies.unexpected_error(state.id, other, state.phase, call_id))
  end

  # A frame that breaks the protocol: fail the call in flight and kill the
  # worker. One from an interpreter that has died since (its objects no longer
  # open) is its death: the exit status fails the call as :worker_died.
  defp violation(%{call: call} = state, error) when call != nil and state.phase == :busy do
    if Interpreter.dead?(state), do: kill(state, :restart_backoff), else: violated(state, error)
  end

  defp violation(state, error), do: violated(state, error)

  defp violated(state, error) do
    Logger.error("beambridge worker #{state.id}: #{Exception.message(error)}; killing it")

    state =
      if state.call do
        cancel(state.timer)
        %{fail_call(state, error) | timer: nil}
      else
        state
      end

    kill(state, :restart_backoff)
  end

  ## Death

  defp kill(state, after_exit), do: state |> unavailable() |> Interpreter.kill(after_exit)

  # The interpreter exited: the call in flight fails, the pool stops choosing
  # this worker until a new interpreter is ready.
  defp exited(state, status) do
    state
    |> fail_call(died_error(state, status))
    |> unavailable()
    |> Interpreter.exited(status)
  end

  ## Stop

  @impl true
  def terminate(_reason, state) do
    state |> fail_call(died_error(state, :shutdown)) |> Interpreter.shutdown()
    :ok
  end

  ## Helpers

  defp answer_error(state, id, error, released) do
    case Replies.error(state.call, error) do
      {:ok, reply} -> finish_call(state, reply)
      :unexpected -> unexpected(state, {:error, id, error, released})
    end
  end

  defp answer(%{call: call} = state, body, plan) do
    timing = {call.sent, call.timings}
    Streams.answer(call, body, plan, state.port, timing)
  end

  defp timeout_error(state, where), do: Replies.timeout_error(state.id, where)
  defp died_error(state, status), do: Replies.died_error(state.id, status)

  defp cancel(nil), do: :ok
  defp cancel(ref), do: Process.cancel_timer(ref)

  defp now, do: System.monotonic_time(:millisecond)
end
