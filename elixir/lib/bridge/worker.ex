defmodule Bridge.Worker do
  @moduledoc false
  # One Python worker process behind one Port (SPEC §7, protocol/transport-v2.md
  # §5). The GenServer outlives the OS process: when Python dies it fails the
  # call in flight with :worker_died, ends every lease the worker held on this
  # node's slices and starts a new interpreter with exponential backoff. It runs
  # one call at a time and enforces the call's deadline itself: on timeout it
  # answers the caller, kills the interpreter (SIGTERM, SIGKILL after a grace
  # period) and starts a fresh one, so a late answer never reaches anyone.
  #
  # It only routes: callers encode their arguments into the bridge's arenas and
  # build the call frame (Bridge.call/3), and decode the answer's body; this
  # process lends the call's slices, sends the frame, reads the answer's envelope
  # and hands the body to the caller. The shared objects are Bridge.Worker.Objects.
  #
  # phase: :starting (port open, waiting for {:ready, ...}) | :ready | :busy
  #        | :killing (signals sent, waiting for the exit status) | :down
  #        (waiting for the restart timer)

  use GenServer

  require Logger

  alias Bridge.{Config, Control, Error}
  alias Bridge.Worker.Objects

  @term_grace 500
  @kill_grace 2_000
  @shutdown_wait 1_000
  @backoff_min 50
  @backoff_max 5_000
  @healthy_ms 10_000

  defstruct [
    :config,
    :index,
    :id,
    :port,
    :call,
    :timer,
    :ready_at,
    :after_exit,
    os_pids: [],
    phase: :down,
    available?: false,
    objects: %Objects{},
    backoff: @backoff_min
  ]

  # Atoms a worker may send (SPEC §4, §5, §7.3, transport-v2.md §5).
  # binary_to_term(_, [:safe]) refuses atoms that do not exist yet, so they are
  # named here to be sure they exist whenever this module is loaded.
  @protocol_atoms ~w(ready ok error log stdout stderr python_exception bad_call no_module
    no_function bad_term binary buffer tensor truncated_header
    bad_magic unsupported_version bad_header_size unknown_format unknown_codec unknown_flags
    metadata_too_large metadata_out_of_bounds misaligned_payload payload_overlaps_metadata
    length_overflow payload_out_of_bounds bad_decoded_length decoded_too_large
    header_checksum_mismatch checksum_mismatch stale_generation no_space name_collision
    not_found bad_name bad_permissions region_too_small bad_control_block out_of_bounds closed
    not_owner region_too_large badarg leased not_published busy arrow $bb_arrow packed records
    custom $bb_packed $bb_records $bb_custom rows columns tensor_bundle sparse_coo
    $bb_tensor_bundle $bb_sparse_coo unknown_type codec_failed bad_metadata format_unsuitable
    unknown_atom unsupported_type duplicate_column unsupported_value bad_option
    $bb_slice $bb_tensor $bb_buffer object object_dropped released arena sealed lease_table
    worker beam too_large arena_full no_tickets peer_open_failed size_mismatch not_sealed
    bad_object slice_out_of_bounds unsupported_dtype)a

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

  @spec info(pid()) :: map()
  def info(worker), do: GenServer.call(worker, :info)

  ## Start

  @impl true
  def init({%Config{} = config, index}) do
    Process.flag(:trap_exit, true)
    # The pool put the bridge's arenas into the stored config.
    config = Config.get(config.name) || config
    state = %__MODULE__{config: config, index: index, id: "#{inspect(config.name)}.#{index}"}
    Logger.metadata(worker: state.id)

    case start_sync(state) do
      {:ok, state} -> {:ok, become_ready(state)}
      {:error, error} -> {:stop, error}
    end
  end

  # The first start is synchronous so that a broken interpreter or worker
  # module fails Bridge.start_link with :start_failed instead of looping.
  defp start_sync(state) do
    case open_port(state) do
      {:ok, state} -> wait_ready(state, now() + state.config.start_timeout, [])
      {:error, _} = error -> error
    end
  end

  defp wait_ready(%{port: port} = state, deadline, output) do
    receive do
      {^port, {:data, bin}} ->
        case Control.split(bin) do
          {:ok, {:ready, os_pid, {2, _minor}}, _} when is_integer(os_pid) ->
            {:ok, ready(state, os_pid)}

          {:ok, {:log, stream, data} = log, _} when is_binary(data) ->
            log(state, log)
            wait_ready(state, deadline, [output, "#{stream}: ", data])

          {:ok, other, _} ->
            stop_port(state)

            {:error,
             start_failed(state, "its first frame was #{inspect(other, limit: 8)}", output)}

          {:error, error} ->
            stop_port(state)
            {:error, start_failed(state, Exception.message(error), output)}
        end

      {^port, {:exit_status, status}} ->
        {:error,
         start_failed(state, "it exited with status #{status} before it was ready", output)}
    after
      max(deadline - now(), 0) ->
        stop_port(state)

        {:error,
         start_failed(
           state,
           "it was not ready within start_timeout (#{state.config.start_timeout} ms)",
           output
         )}
    end
  end

  defp start_failed(state, why, output) do
    output = IO.iodata_to_binary(output)

    Error.new(:start_failed, :start_failed,
      field: :python,
      value: state.config.python,
      message:
        "worker start failed: #{state.config.python} -m beambridge.worker (worker #{state.id}): " <>
          why <> if(output == "", do: "", else: "; output:\n" <> output)
    )
  end

  defp open_port(state) do
    config = state.config

    opts = [
      :binary,
      {:packet, 4},
      :nouse_stdio,
      :exit_status,
      {:args, ["-m", "beambridge.worker"]},
      {:env, env(state)}
    ]

    with {:ok, objects, announcement} <- Objects.start() do
      try do
        port = Port.open({:spawn_executable, config.python}, opts)
        os_pid = with {:os_pid, pid} <- Port.info(port, :os_pid), do: pid
        state = %{state | port: port, phase: :starting, os_pids: List.wrap(os_pid)}
        # the lease table comes before the first call (transport-v2.md §5.2)
        send_frame(state, announcement)
        {:ok, %{state | objects: objects}}
      rescue
        e in [ArgumentError, ErlangError] ->
          {:error,
           start_failed(state, "the port could not be opened: #{Exception.message(e)}", "")}
      end
    end
  end

  defp env(%{config: config, id: id}) do
    [
      {"PYTHONPATH", Bridge.Python.pythonpath(config)},
      {"PYTHONUNBUFFERED", "1"},
      {"BEAMBRIDGE_WORKER_ID", id},
      {"BEAMBRIDGE_THRESHOLD", Integer.to_string(config.threshold)},
      {"BEAMBRIDGE_ARENA_LIMIT", Integer.to_string(config.arena_limit)},
      {"BEAMBRIDGE_MIN_ARENA", Integer.to_string(config.min_arena)},
      {"BEAMBRIDGE_VERIFY", if(config.verify, do: "1", else: "0")},
      {"BEAMBRIDGE_UNTRUSTED", if(config.untrusted, do: "1", else: "0")}
    ]
    |> Enum.map(fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)
  end

  defp ready(state, os_pid) do
    cancel(state.timer)

    %{
      state
      | phase: :ready,
        os_pids: Enum.uniq([os_pid | state.os_pids]),
        ready_at: now(),
        timer: nil
    }
  end

  defp become_ready(state) do
    GenServer.cast(state.config.name, {:available, self()})
    %{state | phase: :ready, available?: true}
  end

  ## Calls

  @impl true
  def handle_cast({:run, request, from, deadline}, %{phase: :ready} = state) do
    state = %{state | available?: false}

    if deadline != :infinity and now() >= deadline do
      GenServer.reply(from, {:error, timeout_error(state, :queued)})
      {:noreply, become_ready(state)}
    else
      {:noreply, start_call(state, request, from, deadline)}
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
    Enum.each(frames, &send_frame(state, &1))
    {:noreply, %{state | objects: objects}}
  end

  def handle_cast({:arenas_dropped, _ids}, state), do: {:noreply, state}

  def handle_cast({:sealed_mapped, port, ids}, %{port: port} = state) do
    send_frame(state, Control.frame({:sealed_mapped, ids}))
    {:noreply, state}
  end

  def handle_cast({:sealed_mapped, _port, _ids}, state), do: {:noreply, state}

  defp start_call(state, %{id: id, frame: frame, slices: slices} = request, from, deadline) do
    case Objects.lend(state.objects, state.config.arena, slices) do
      {:ok, objects, announcements} ->
        Enum.each(announcements, &send_frame(state, &1))
        send_frame(state, frame)
        timer = if deadline == :infinity, do: nil, else: call_timer(id, deadline)
        call = %{id: id, from: from, module: request.module, function: request.function}
        %{state | phase: :busy, call: call, timer: timer, objects: objects}

      {:error, error} ->
        # The caller gave its slices up: it is gone, or past its deadline.
        GenServer.reply(from, {:error, error})
        become_ready(state)
    end
  end

  defp call_timer(id, deadline),
    do: Process.send_after(self(), {:call_timeout, id}, max(deadline - now(), 0))

  # A closed port raises; its exit status is on the way and fails the call.
  defp send_frame(%{port: port}, frame) do
    Port.command(port, frame)
  rescue
    ArgumentError -> false
  end

  defp finish_call(state, reply) do
    GenServer.reply(state.call.from, reply)
    done(state)
  end

  defp done(state) do
    cancel(state.timer)
    become_ready(%{state | call: nil, timer: nil})
  end

  ## Port messages

  @impl true
  def handle_info({port, {:data, bin}}, %{port: port, phase: phase} = state)
      when phase in [:starting, :ready, :busy] do
    case Control.split(bin) do
      {:ok, {:log, stream, data} = log, _}
      when stream in [:stdout, :stderr] and is_binary(data) ->
        log(state, log)
        {:noreply, state}

      {:ok, envelope, body} ->
        {:noreply, handle_message(envelope, body, state)}

      {:error, error} ->
        {:noreply, violation(state, error)}
    end
  end

  # While the interpreter is being killed its frames (a late answer) are dropped.
  def handle_info({port, {:data, _}}, %{port: port} = state), do: {:noreply, state}

  def handle_info({port, {:exit_status, status}}, %{port: port} = state),
    do: {:noreply, exited(state, status)}

  def handle_info({:call_timeout, id}, %{phase: :busy, call: %{id: id}} = state) do
    GenServer.reply(state.call.from, {:error, timeout_error(state, :running)})

    Logger.warning(
      "beambridge worker #{state.id}: call #{inspect(state.call.module)}.#{state.call.function} " <>
        "timed out; restarting the interpreter"
    )

    {:noreply, kill(%{state | call: nil, timer: nil}, :restart_now)}
  end

  def handle_info({:start_timeout, port}, %{port: port, phase: :starting} = state) do
    Logger.error(
      "beambridge worker #{state.id}: not ready within #{state.config.start_timeout} ms; retrying"
    )

    {:noreply, kill(state, :restart_backoff)}
  end

  def handle_info({:escalate, port}, %{port: port, phase: :killing} = state) do
    Enum.each(state.os_pids, &Bridge.NIF.kill(&1, :kill))
    {:noreply, %{state | timer: Process.send_after(self(), {:give_up, port}, @kill_grace)}}
  end

  def handle_info({:give_up, port}, %{port: port, phase: :killing} = state) do
    Logger.error("beambridge worker #{state.id}: no exit status after SIGKILL; closing the port")
    safe_close(port)
    {:noreply, exited(state, :unknown)}
  end

  def handle_info(:restart, %{phase: :down} = state), do: {:noreply, restart(state)}

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def handle_call(:info, _from, state) do
    info = %{
      id: state.id,
      pid: self(),
      os_pid: List.first(state.os_pids),
      phase: state.phase,
      lent_slices: map_size(state.objects.lent),
      worker_arenas: map_size(state.objects.peers)
    }

    {:reply, info, state}
  end

  defp handle_message({:ready, os_pid, {2, _minor}}, _body, %{phase: :starting} = state)
       when is_integer(os_pid) do
    Logger.debug("beambridge worker #{state.id}: ready, os pid #{os_pid}")
    become_ready(ready(state, os_pid))
  end

  defp handle_message({:object, _, _, _, _, _, _} = announcement, _body, state) do
    case Objects.object(state.objects, announcement, List.first(state.os_pids)) do
      {:ok, objects} -> %{state | objects: objects}
      {:error, error} -> violation(state, error)
    end
  end

  defp handle_message({:object_dropped, id}, _body, state) when is_integer(id),
    do: %{state | objects: Objects.drop(state.objects, id)}

  defp handle_message({:released, list}, _body, state) when is_list(list),
    do: %{state | objects: Objects.released(state.objects, list)}

  defp handle_message(
         {:ok, id, entries, released},
         body,
         %{phase: :busy, call: %{id: id}} = state
       ) do
    case Objects.plan(state.objects, entries, state.config.untrusted) do
      {:ok, plan, objects} ->
        state = %{state | objects: Objects.released(objects, released)}
        answer(state, body, plan)
        done(state)

      {:error, error} ->
        violation(state, error)
    end
  end

  defp handle_message(
         {:error, id, error, released},
         _body,
         %{phase: :busy, call: %{id: id}} = state
       ) do
    state = %{state | objects: Objects.released(state.objects, released)}

    case error do
      {:python_exception, type, message, tb} ->
        finish_call(state, {:error, Error.python_exception(text(type), text(message), text(tb))})

      {:bad_call, reason, message} when is_atom(reason) ->
        error =
          Error.new(:bad_call, reason,
            field: :call,
            value: {state.call.module, state.call.function},
            message: "bad call: #{reason}: #{text(message)}"
          )

        finish_call(state, {:error, error})

      other ->
        unexpected(state, {:error, id, other, released})
    end
  end

  defp handle_message(other, _body, state), do: unexpected(state, other)

  # The answer goes to the caller with its body and its slices resolved. Leases
  # and binaries over slices are made by a process of their own, which ends right
  # after replying: no long-lived heap keeps them (and the memory under them).
  defp answer(state, body, []),
    do: GenServer.reply(state.call.from, {:ok, {body, {}, self()}})

  defp answer(state, body, plan) do
    from = state.call.from
    worker = self()
    port = state.port

    spawn(fn ->
      case Objects.resolve(plan) do
        {:ok, resolved, sealed} ->
          if sealed != [], do: GenServer.cast(worker, {:sealed_mapped, port, sealed})
          GenServer.reply(from, {:ok, {body, resolved, worker}})

        {:error, error} ->
          GenServer.reply(from, {:error, error})
          bad_answer(worker, error)
      end
    end)
  end

  defp unexpected(state, other) do
    error =
      Error.new(:bad_frame, :unexpected_message,
        field: :control_frame,
        value: other,
        message:
          "bad frame: unexpected_message: worker #{state.id} sent " <>
            "#{inspect(other, limit: 8, printable_limit: 200)} while #{describe_phase(state)}"
      )

    violation(state, error)
  end

  defp describe_phase(%{phase: :busy, call: %{id: id}}), do: "call #{id} was in flight"
  defp describe_phase(%{phase: phase}), do: "#{phase}"

  # A frame that breaks the protocol: fail the call in flight and kill the worker.
  defp violation(state, error) do
    Logger.error("beambridge worker #{state.id}: #{Exception.message(error)}; killing it")

    state =
      if state.call do
        GenServer.reply(state.call.from, {:error, error})
        cancel(state.timer)
        %{state | call: nil, timer: nil}
      else
        state
      end

    kill(state, :restart_backoff)
  end

  ## Death and restart

  defp kill(state, after_exit) do
    state = unavailable(state)
    cancel(state.timer)
    Enum.each(state.os_pids, &Bridge.NIF.kill(&1, :term))
    timer = Process.send_after(self(), {:escalate, state.port}, @term_grace)
    %{state | phase: :killing, after_exit: after_exit, timer: timer}
  end

  defp exited(state, status) do
    cancel(state.timer)
    deliberate = state.phase == :killing

    if not deliberate do
      Logger.error("beambridge worker #{state.id}: interpreter exited with status #{status}")
    end

    state =
      if state.call do
        GenServer.reply(state.call.from, {:error, died_error(state, status)})
        %{state | call: nil}
      else
        state
      end

    state = state |> unavailable() |> reclaim()

    case {deliberate, state.after_exit} do
      {true, :restart_now} -> restart(%{state | after_exit: nil})
      _ -> schedule_restart(%{state | after_exit: nil})
    end
  end

  # Every lease the dead worker held on this node's slices ends; its own objects
  # went with it (the kernel frees them once the last mapping here is gone).
  defp reclaim(state) do
    %{
      state
      | objects: Objects.return_all(state.objects),
        port: nil,
        os_pids: [],
        phase: :down,
        timer: nil
    }
  end

  defp schedule_restart(state) do
    backoff =
      if state.ready_at && now() - state.ready_at > @healthy_ms,
        do: @backoff_min,
        else: state.backoff

    timer = Process.send_after(self(), :restart, backoff)
    %{state | backoff: min(backoff * 2, @backoff_max), timer: timer, ready_at: nil}
  end

  defp restart(state) do
    case open_port(%{state | phase: :down}) do
      {:ok, state} ->
        timer =
          Process.send_after(self(), {:start_timeout, state.port}, state.config.start_timeout)

        %{state | timer: timer}

      {:error, error} ->
        Logger.error("beambridge worker #{state.id}: #{Exception.message(error)}")
        schedule_restart(%{state | phase: :down})
    end
  end

  defp unavailable(%{available?: true} = state) do
    GenServer.cast(state.config.name, {:unavailable, self()})
    %{state | available?: false}
  end

  defp unavailable(state), do: state

  ## Stop

  @impl true
  def terminate(_reason, state) do
    if state.call do
      GenServer.reply(state.call.from, {:error, died_error(state, :shutdown)})
    end

    if state.port && state.phase != :down do
      if state.phase == :ready, do: send_frame(state, Control.frame(:shutdown))

      with :timeout <-
             wait_exit(state.port, if(state.phase == :ready, do: @shutdown_wait, else: 0)),
           _ = Enum.each(state.os_pids, &Bridge.NIF.kill(&1, :term)),
           :timeout <- wait_exit(state.port, @term_grace),
           _ = Enum.each(state.os_pids, &Bridge.NIF.kill(&1, :kill)),
           :timeout <- wait_exit(state.port, @kill_grace) do
        safe_close(state.port)
      end
    end

    reclaim(state)
    :ok
  end

  defp wait_exit(port, timeout) do
    receive do
      {^port, {:exit_status, _}} -> :ok
      {^port, {:data, _}} -> wait_exit(port, timeout)
    after
      timeout -> :timeout
    end
  end

  ## Helpers

  defp log(state, {:log, stream, data}) do
    text = "beambridge worker #{state.id} #{stream}: #{String.trim_trailing(data, "\n")}"

    case stream do
      :stdout -> Logger.info(text, worker: state.id)
      _ -> Logger.warning(text, worker: state.id)
    end
  end

  defp timeout_error(state, where) do
    Error.new(:timeout, :timeout,
      field: :timeout,
      message:
        "timeout: the call did not finish within its timeout " <>
          "(#{if where == :queued, do: "while queued", else: "worker #{state.id} was restarted"})"
    )
  end

  defp died_error(state, status) do
    Error.new(:worker_died, :worker_died,
      field: :exit_status,
      value: status,
      message:
        "worker died: the Python interpreter of worker #{state.id} exited " <>
          "(status #{inspect(status)}) during the call"
    )
  end

  defp text(bin) when is_binary(bin), do: bin
  defp text(other), do: inspect(other)

  defp stop_port(state) do
    Enum.each(state.os_pids, &Bridge.NIF.kill(&1, :kill))
    _ = wait_exit(state.port, @kill_grace)
    safe_close(state.port)
  end

  defp safe_close(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end

  defp cancel(nil), do: :ok
  defp cancel(ref), do: Process.cancel_timer(ref)

  defp now, do: System.monotonic_time(:millisecond)
end
