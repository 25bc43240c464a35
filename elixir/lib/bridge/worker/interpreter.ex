defmodule Bridge.Worker.Interpreter do
  @moduledoc false
  # The life of the Python interpreter behind one Bridge.Worker: the Port that
  # runs `python -m beambridge.worker` (open, the first {:ready, ...} frame),
  # killing it (SIGTERM, SIGKILL after a grace period, closing the port when no
  # exit status comes), what its exit ends (every lease it held on this node's
  # slices), restarting it with exponential backoff, and shutting it down when
  # the worker stops. Its stdout and stderr arrive as {:log, ...} frames and are
  # logged here.
  #
  # Every function takes and returns the %Bridge.Worker{} state and runs in the
  # worker's process; timers are messages to it ({:start_timeout, port},
  # {:escalate, port}, {:give_up, port}, :restart) that Bridge.Worker hands
  # back to the functions here. What a death means for the call in flight and
  # for the pool is Bridge.Worker's: it calls kill/2 and exited/2 after it has
  # dealt with those.

  require Logger

  alias Bridge.{Config, Control, Error, Lane}
  alias Bridge.Worker.Objects

  @term_grace 500
  @kill_grace 2_000
  @shutdown_wait 1_000
  @backoff_min 50
  @backoff_max 5_000
  @healthy_ms 10_000

  @doc false
  @spec backoff_min() :: pos_integer()
  def backoff_min, do: @backoff_min

  ## Start

  @doc false
  # The first start is synchronous so that a broken interpreter or worker
  # module fails Bridge.start_link with :start_failed instead of looping.
  @spec start_sync(struct()) :: {:ok, struct()} | {:error, Error.t()}
  def start_sync(state) do
    case open(state) do
      {:ok, state} -> wait_ready(state, now() + state.config.start_timeout, [])
      {:error, _} = error -> error
    end
  end

  defp wait_ready(%{port: port} = state, deadline, output) do
    receive do
      {^port, {:data, bin}} ->
        case Control.split(bin) do
          {:ok, {:ready, os_pid, {2, minor}}, _} when is_integer(os_pid) and is_integer(minor) ->
            {:ok, ready(state, os_pid, minor)}

          {:ok, {:ready, _, {major, minor}}, _} when is_integer(major) and is_integer(minor) ->
            stop_port(state)
            {:error, start_failed(state, Control.other_major(major, minor), output)}

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

  defp open(state) do
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
        state = %{state | port: port, phase: :starting, os_pids: List.wrap(os_pid), lane: nil}
        # the lease table comes before the first call (protocol/SPEC.md §8.3)
        send_frame(state, announcement)
        {:ok, %{state | objects: objects}}
      rescue
        e in [ArgumentError, ErlangError] ->
          {:error,
           start_failed(state, "the port could not be opened: #{Exception.message(e)}", "")}
      end
    end
  end

  defp env(%{config: %Config{} = config, id: id}) do
    [
      {"PYTHONPATH", Bridge.Python.pythonpath(config)},
      {"PYTHONUNBUFFERED", "1"},
      # the working directory never comes before python_path (Python 3.11+; the
      # worker drops it itself on 3.10)
      {"PYTHONSAFEPATH", "1"},
      {"BEAMBRIDGE_WORKER_ID", id},
      {"BEAMBRIDGE_THRESHOLD", Integer.to_string(config.threshold)},
      {"BEAMBRIDGE_ARENA_LIMIT", Integer.to_string(config.arena_limit)},
      {"BEAMBRIDGE_MIN_ARENA", Integer.to_string(config.min_arena)},
      {"BEAMBRIDGE_VERIFY", if(config.verify, do: "1", else: "0")},
      {"BEAMBRIDGE_UNTRUSTED", if(config.untrusted, do: "1", else: "0")},
      {"BEAMBRIDGE_SPIN_US", spin(config.spin_us)},
      {"BEAMBRIDGE_HEAP_KEEP", Integer.to_string(config.heap_keep)},
      {"BEAMBRIDGE_PROTOCOL", Bridge.Control.protocol_version()},
      {"BEAMBRIDGE_NODE", Atom.to_string(node())}
    ]
    |> Kernel.++(huge_pages(config.huge_pages, System.get_env("GLIBC_TUNABLES")))
    |> Enum.map(fn
      {k, false} -> {String.to_charlist(k), false}
      {k, v} -> {String.to_charlist(k), String.to_charlist(v)}
    end)
  end

  # :auto leaves it to the worker (polls only when it may use more than one CPU);
  # `false` removes a value inherited from the BEAM's environment.
  defp spin(:auto), do: false
  defp spin(us), do: Integer.to_string(us)

  # glibc's malloc asks for transparent huge pages on the memory it maps: a 64 MiB
  # `bytes` argument is then 32 page faults, not 16,384 (README "Benchmark").
  # A tunable the user set already is left as it is.
  defp huge_pages(false, _tunables), do: []

  defp huge_pages(true, nil), do: [{"GLIBC_TUNABLES", "glibc.malloc.hugetlb=1"}]

  defp huge_pages(true, tunables) do
    if tunables =~ "glibc.malloc.hugetlb",
      do: [],
      else: [{"GLIBC_TUNABLES", tunables <> ":glibc.malloc.hugetlb=1"}]
  end

  @doc false
  # The interpreter sent {:ready, os_pid, {2, minor}}: the phase is :ready (the
  # worker tells the pool). A worker of 2.2 or later gets a lane of its own
  # (SPEC §8.5) when this pool polls at all (spin_us > 0).
  @spec ready(struct(), pos_integer(), non_neg_integer()) :: struct()
  def ready(state, os_pid, minor) do
    cancel(state.timer)
    Bridge.Config.note_peer_minor(state.config.name, minor)

    %{
      state
      | phase: :ready,
        minor: minor,
        os_pids: Enum.uniq([os_pid | state.os_pids]),
        ready_at: now(),
        timer: nil
    }
    |> give_lane(minor >= 2 and state.spin_us > 0)
  end

  defp give_lane(state, false), do: state

  defp give_lane(state, true) do
    case Lane.new() do
      {:ok, lane} ->
        send_frame(state, Control.frame(Lane.announcement(lane)))
        %{state | lane: lane, lane_seq: nil}

      {:error, error} ->
        Logger.warning(
          "beambridge worker #{state.id}: no lane (#{Exception.message(error)}); " <>
            "calls use the pipe"
        )

        state
    end
  end

  ## The port

  @doc false
  # A closed port raises; its exit status is on the way and fails the call.
  @spec send_frame(struct(), iodata()) :: boolean()
  def send_frame(%{port: port}, frame) do
    Port.command(port, frame)
  rescue
    ArgumentError -> false
  end

  @doc false
  # A {:log, :stdout | :stderr, data} frame: what a handler wrote.
  @spec log(struct(), {:log, atom(), binary()}) :: :ok
  def log(state, {:log, stream, data}) do
    text = "beambridge worker #{state.id} #{stream}: #{String.trim_trailing(data, "\n")}"

    case stream do
      :stdout -> Logger.info(text, worker: state.id)
      _ -> Logger.warning(text, worker: state.id)
    end
  end

  ## Death and restart

  @doc false
  # True when the interpreter has exited or is exiting (reaped; a zombie whose
  # exit status the port has not yet reported; or still in the kernel's exit
  # path, PF_EXITING in the flags of /proc/PID/stat, where its files may
  # already be closed): what it sent last may name objects that can no longer
  # be opened through /proc.
  @spec dead?(struct()) :: boolean()
  def dead?(%{os_pids: [os_pid | _]}) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> exiting?(stat)
      {:error, _} -> true
    end
  end

  def dead?(_state), do: false

  @pf_exiting 0x4

  @doc false
  # /proc/PID/stat after the command's closing parenthesis: state is the
  # first field, flags the seventh (proc(5))
  @spec exiting?(binary()) :: boolean()
  def exiting?(stat) do
    [state, _ppid, _pgrp, _session, _tty, _tpgid, flags | _] =
      stat |> String.split(") ") |> List.last() |> String.split(" ")

    state in ["Z", "X"] or Bitwise.band(String.to_integer(flags), @pf_exiting) != 0
  end

  @doc false
  # SIGTERM now, SIGKILL after @term_grace ({:escalate, port}); `after_exit`
  # (:restart_now | :restart_backoff) says what exited/2 does next.
  @spec kill(struct(), :restart_now | :restart_backoff) :: struct()
  def kill(state, after_exit) do
    cancel(state.timer)
    Enum.each(state.os_pids, &Bridge.NIF.kill(&1, :term))
    timer = Process.send_after(self(), {:escalate, state.port}, @term_grace)
    %{state | phase: :killing, after_exit: after_exit, timer: timer, lane: nil, lane_seq: nil}
  end

  @doc false
  # SIGTERM was not enough: SIGKILL, and give up after @kill_grace ({:give_up, port}).
  @spec escalate(struct()) :: struct()
  def escalate(%{port: port} = state) do
    Enum.each(state.os_pids, &Bridge.NIF.kill(&1, :kill))
    %{state | timer: Process.send_after(self(), {:give_up, port}, @kill_grace)}
  end

  @doc false
  # No exit status after SIGKILL: the port is closed; the worker then handles
  # the death as an exit of status :unknown.
  @spec give_up(struct()) :: :ok
  def give_up(%{port: port} = state) do
    Logger.error("beambridge worker #{state.id}: no exit status after SIGKILL; closing the port")
    safe_close(port)
    :ok
  end

  @doc false
  # The interpreter exited (the call in flight, if any, has been failed): its
  # leases end, and a new one starts, at once after a deliberate kill for
  # :restart_now, else after the backoff.
  @spec exited(struct(), term()) :: struct()
  def exited(state, status) do
    cancel(state.timer)
    deliberate = state.phase == :killing

    if not deliberate do
      Logger.error(
        "beambridge worker #{state.id}: interpreter exited with status #{inspect(status)}"
      )
    end

    state = reclaim(%{state | lane: nil, lane_seq: nil})

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

  @doc false
  # Opens a new interpreter (the :restart timer); it has start_timeout to be
  # ready ({:start_timeout, port}).
  @spec restart(struct()) :: struct()
  def restart(state) do
    case open(%{state | phase: :down}) do
      {:ok, state} ->
        timer =
          Process.send_after(self(), {:start_timeout, state.port}, state.config.start_timeout)

        %{state | timer: timer}

      {:error, error} ->
        Logger.error("beambridge worker #{state.id}: #{Exception.message(error)}")
        schedule_restart(%{state | phase: :down})
    end
  end

  ## Stop

  @doc false
  # The worker stops: a ready interpreter is asked to finish (:shutdown), then
  # SIGTERM, then SIGKILL, then the port is closed, each after its grace time.
  @spec shutdown(struct()) :: struct()
  def shutdown(state) do
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
  end

  defp wait_exit(port, timeout) do
    receive do
      {^port, {:exit_status, _}} -> :ok
      {^port, {:data, _}} -> wait_exit(port, timeout)
    after
      timeout -> :timeout
    end
  end

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
