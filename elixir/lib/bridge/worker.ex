defmodule Bridge.Worker do
  @moduledoc false
  # One Python worker process behind one Port (SPEC §7). The GenServer outlives
  # the OS process: when Python dies it fails the call in flight with
  # :worker_died, reclaims regions (its own argument regions, the dead
  # worker's result regions via the reaper) and starts a new interpreter with
  # exponential backoff. It runs one call at a time and enforces the call's
  # deadline itself: on timeout it answers the caller, kills the interpreter
  # (SIGTERM, SIGKILL after a grace period) and starts a fresh one, so a late
  # answer never reaches anyone.
  #
  # phase: :starting (port open, waiting for {:ready, ...}) | :ready | :busy
  #        | :killing (signals sent, waiting for the exit status) | :down
  #        (waiting for the restart timer)

  use GenServer

  require Logger

  alias Bridge.{ArgRegions, Codec, Config, Error, Region, ResultRegions}

  @max_frame 64 * 1024 * 1024
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
    next_id: 1,
    args: nil,
    results: nil,
    backoff: @backoff_min
  ]

  # Atoms a worker may send (SPEC §4, §5, §7.3, §7.4). binary_to_term(_, [:safe])
  # refuses atoms that do not exist yet, so they are named here to be sure
  # they exist whenever this module is loaded.
  @protocol_atoms ~w(ready ok error log stdout stderr python_exception bad_call no_module
    no_function bad_term binary buffer tensor $bb_region $bb_tensor $bb_buffer truncated_header
    bad_magic unsupported_version bad_header_size unknown_format unknown_codec unknown_flags
    metadata_too_large metadata_out_of_bounds misaligned_payload payload_overlaps_metadata
    length_overflow payload_out_of_bounds bad_decoded_length decoded_too_large
    header_checksum_mismatch checksum_mismatch stale_generation no_space name_collision
    not_found bad_name bad_permissions region_too_small bad_control_block out_of_bounds closed
    not_owner region_too_large badarg leased not_published busy arrow $bb_arrow packed records
    custom $bb_packed $bb_records $bb_custom rows columns tensor_bundle sparse_coo
    $bb_tensor_bundle $bb_sparse_coo unknown_type codec_failed bad_metadata format_unsuitable
    unknown_atom unsupported_type duplicate_column unsupported_value bad_option)a

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
  # Asks the worker to run `request` ({module, function, args} or
  # {module, function, args, %{format: policy}}) and answer
  # `from` before the monotonic `deadline` (ms or :infinity).
  @spec run(pid(), tuple(), GenServer.from(), integer() | :infinity) :: :ok
  def run(worker, request, from, deadline),
    do: GenServer.cast(worker, {:run, request, from, deadline})

  @spec info(pid()) :: map()
  def info(worker), do: GenServer.call(worker, :info)

  ## Start

  @impl true
  def init({%Config{} = config, index}) do
    Process.flag(:trap_exit, true)

    state = %__MODULE__{
      config: config,
      index: index,
      id: "#{inspect(config.name)}.#{index}",
      args: ArgRegions.new(config.shm_prefix, config.region_limit, config.verify),
      results: ResultRegions.new()
    }

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
      {:ok, state} ->
        deadline = now() + state.config.start_timeout
        wait_ready(state, deadline, [])

      {:error, _} = error ->
        error
    end
  end

  defp wait_ready(%{port: port} = state, deadline, output) do
    receive do
      {^port, {:data, bin}} ->
        case decode_control(bin) do
          {:ok, {:ready, os_pid, {1, _minor}}} when is_integer(os_pid) ->
            {:ok, ready(state, os_pid)}

          {:ok, {:log, stream, data} = log} when is_binary(data) ->
            log(state, log)
            wait_ready(state, deadline, [output, "#{stream}: ", data])

          {:ok, other} ->
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

    try do
      port = Port.open({:spawn_executable, config.python}, opts)
      os_pid = with {:os_pid, pid} <- Port.info(port, :os_pid), do: pid
      {:ok, %{state | port: port, phase: :starting, os_pids: List.wrap(os_pid)}}
    rescue
      e in [ArgumentError, ErlangError] ->
        {:error, start_failed(state, "the port could not be opened: #{Exception.message(e)}", "")}
    end
  end

  defp env(%{config: config, id: id}) do
    [
      {"PYTHONPATH", Bridge.Python.pythonpath(config)},
      {"PYTHONUNBUFFERED", "1"},
      {"BEAMBRIDGE_WORKER_ID", id},
      {"BEAMBRIDGE_SHM_PREFIX", config.shm_prefix},
      {"BEAMBRIDGE_THRESHOLD", Integer.to_string(config.threshold)},
      {"BEAMBRIDGE_REGION_LIMIT", Integer.to_string(config.region_limit)},
      {"BEAMBRIDGE_VERIFY", if(config.verify, do: "1", else: "0")}
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

  defp start_call(state, {module, function, args}, from, deadline),
    do: start_call(state, {module, function, args, %{}}, from, deadline)

  defp start_call(state, {module, function, args, opts}, from, deadline) do
    policy = Map.get(opts, :format, :auto)

    case Codec.encode_args(args, state.args, state.config.threshold, format: policy) do
      {:ok, encoded, regions, evicted} ->
        state = detach(%{state | args: regions}, evicted)
        id = state.next_id
        frame = :erlang.term_to_binary(call_message(id, module, function, encoded, policy))

        if byte_size(frame) > @max_frame do
          error =
            Error.new(:bad_call, :frame_too_large,
              field: :args,
              value: byte_size(frame),
              limit: @max_frame,
              message:
                "bad call: frame_too_large: the call's control frame is #{byte_size(frame)} bytes, " <>
                  "limit #{@max_frame} (lower :threshold so large values travel in regions)"
            )

          GenServer.reply(from, {:error, error})
          become_ready(%{state | args: ArgRegions.release(state.args)})
        else
          send_frame(state, frame)
          timer = if deadline == :infinity, do: nil, else: call_timer(id, deadline)
          call = %{id: id, from: from, module: module, function: function}
          %{state | phase: :busy, call: call, timer: timer, next_id: id + 1}
        end

      {:error, error, regions, evicted} ->
        state = detach(%{state | args: ArgRegions.release(regions)}, evicted)
        GenServer.reply(from, {:error, error})
        become_ready(state)
    end
  end

  # SPEC §7.3: the 6-tuple carries the result's format policy; :auto, the
  # worker's default, goes as the 5-tuple every worker reads.
  defp call_message(id, module, function, args, :auto), do: {:call, id, module, function, args}

  defp call_message(id, module, function, args, policy),
    do: {:call, id, module, function, args, %{"format" => Atom.to_string(policy)}}

  defp call_timer(id, deadline),
    do: Process.send_after(self(), {:call_timeout, id}, max(deadline - now(), 0))

  # Tell the worker to drop attachments, then destroy the regions (SPEC §7.3).
  defp detach(state, []), do: state

  defp detach(state, regions) do
    send_frame(state, :erlang.term_to_binary({:detach, Enum.map(regions, & &1.name)}))
    Enum.each(regions, &Region.close/1)
    state
  end

  # A closed port raises; its exit status is on the way and fails the call.
  defp send_frame(%{port: port}, frame) do
    Port.command(port, frame)
  rescue
    ArgumentError -> false
  end

  defp finish_call(state, reply) do
    GenServer.reply(state.call.from, reply)
    cancel(state.timer)
    become_ready(%{state | call: nil, timer: nil, args: ArgRegions.release(state.args)})
  end

  ## Port messages

  @impl true
  def handle_info({port, {:data, bin}}, %{port: port, phase: phase} = state)
      when phase in [:starting, :ready, :busy] do
    case decode_control(bin) do
      {:ok, {:log, stream, data} = log} when stream in [:stdout, :stderr] and is_binary(data) ->
        log(state, log)
        {:noreply, state}

      {:ok, message} ->
        {:noreply, handle_message(message, state)}

      {:error, error} ->
        {:noreply, undecodable(state, bin, error)}
    end
  end

  def handle_info(:drop_result_refs, state) do
    :erlang.garbage_collect()
    {:noreply, state}
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
      argument_regions: ArgRegions.names(state.args),
      result_attachments: ResultRegions.size(state.results)
    }

    {:reply, info, state}
  end

  defp handle_message({:ready, os_pid, {1, _minor}}, %{phase: :starting} = state)
       when is_integer(os_pid) do
    Logger.debug("beambridge worker #{state.id}: ready, os pid #{os_pid}")
    become_ready(ready(state, os_pid))
  end

  defp handle_message({:ok, id, result}, %{phase: :busy, call: %{id: id}} = state) do
    prefix = "/#{state.config.shm_prefix}-#{List.first(state.os_pids)}-"

    case Codec.decode_result(result, state.results, prefix, state.config.verify) do
      {:ok, value, results, leased?} ->
        # This process held the zero-copy result binaries on their way to the caller;
        # once the caller drops them, they must not stay leased (and the worker's
        # region busy) until this quiet process happens to collect garbage.
        if leased?, do: send(self(), :drop_result_refs)
        finish_call(%{state | results: results}, {:ok, value})

      # Well-formed frames whose value cannot be rebuilt here (records with
      # unknown atom keys, custom types without a serializer, ...): the
      # caller's error, the worker is kept (SPEC §8.1, formats/custom.md).
      {:error, %Error{kind: :bad_call} = error, results} ->
        send(self(), :drop_result_refs)
        finish_call(%{state | results: results}, {:error, error})

      {:error, error, results} ->
        violation(%{state | results: results}, error)
    end
  end

  defp handle_message(
         {:error, id, {:python_exception, type, message, tb}},
         %{
           phase: :busy,
           call: %{id: id}
         } = state
       ) do
    finish_call(state, {:error, Error.python_exception(text(type), text(message), text(tb))})
  end

  defp handle_message(
         {:error, id, {:bad_call, reason, message}},
         %{
           phase: :busy,
           call: %{id: id}
         } = state
       )
       when is_atom(reason) do
    error =
      Error.new(:bad_call, reason,
        field: :call,
        value: {state.call.module, state.call.function},
        message: "bad call: #{reason}: #{text(message)}"
      )

    finish_call(state, {:error, error})
  end

  defp handle_message(other, state) do
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

  # A frame that breaks SPEC §7: fail the call in flight and kill the worker.
  # A frame [:safe] refused. If it is a well-formed answer to the call in flight
  # whose only problem is atoms this VM does not have, that is the handler's mistake:
  # the caller gets a :bad_call saying so and the worker carries on. Anything else is
  # a broken peer.
  defp undecodable(%{phase: :busy, call: %{id: id}} = state, bin, error)
       when byte_size(bin) <= @max_frame do
    case Bridge.ETF.classify(bin) do
      {:unknown_atoms, names, {:ok, ^id}} ->
        finish_call(state, {:error, unknown_atoms_error(names)})

      _ ->
        violation(state, error)
    end
  end

  defp undecodable(state, _bin, error), do: violation(state, error)

  defp unknown_atoms_error(names) do
    shown = Enum.map_join(names, ", ", &(":" <> &1))

    Error.new(:bad_call, :unknown_atom,
      field: :result,
      value: names,
      message:
        "bad call: the result names atoms that do not exist in this VM (#{shown}); " <>
          "return them as str (they arrive as binaries), or make sure the atoms exist " <>
          "on the BEAM before the call (the bridge never creates atoms for a peer)"
    )
  end

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

  # SPEC §7.5: the BEAM's argument regions are closed (unlinked), cached
  # attachments dropped, and the dead worker's result regions reaped.
  defp reclaim(state) do
    {_names, args} = ArgRegions.close_all(state.args)
    results = ResultRegions.close_all(state.results)
    _ = Region.reap_stale(prefix: state.config.shm_prefix)
    %{state | args: args, results: results, port: nil, os_pids: [], phase: :down, timer: nil}
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
      if state.phase == :ready, do: send_frame(state, :erlang.term_to_binary(:shutdown))

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

  # SPEC §7.1/§7.2: a size cap, then the safe decoder (no new atoms, no funs).
  defp decode_control(bin) when byte_size(bin) > @max_frame do
    {:error,
     Error.new(:bad_frame, :frame_too_large,
       field: :control_frame,
       value: byte_size(bin),
       limit: @max_frame
     )}
  end

  defp decode_control(bin) do
    {:ok, :erlang.binary_to_term(bin, [:safe])}
  rescue
    ArgumentError ->
      {:error,
       Error.new(:bad_frame, :bad_term,
         field: :control_frame,
         value: byte_size(bin),
         message:
           "bad frame: bad_term: a #{byte_size(bin)}-byte control frame is not a safe ETF term " <>
             "(unknown atoms, funs or malformed data)"
       )}
  end

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
