defmodule Bridge.Worker.Cancel do
  @moduledoc false
  # A call past its deadline (protocol/SPEC.md §8.7). The caller is answered
  # :timeout at once. An interpreter of protocol 2.8 or later is sent the cancel
  # signal, which raises CallCancelled in the handler (an async handler's task
  # is cancelled), and the call's streams are stopped as for a caller that
  # exited; the worker then has the pool's `cancel_grace` ms to answer the call.
  # That answer, and anything else the interpreter sends for the call, is let
  # go (Streams.reply/answer of a cancelled call); when it comes the worker is
  # ready again with its interpreter, and its modules' state, as they were.
  # When the grace runs out (a handler in C that holds the GIL, one that
  # swallows the interrupt) the interpreter is killed and replaced, as it is at
  # once for an older interpreter or a `cancel_grace` of 0.

  require Logger

  alias Bridge.{NIF, Registry}
  alias Bridge.Worker.{Replies, Streams}

  # The first protocol minor whose workers handle the cancel signal.
  @since 8

  @doc false
  # Starts cancelling the call in flight: {:ok, state} with the grace timer
  # armed, or :kill when this interpreter cannot be asked (the caller has been
  # told nothing yet then).
  @spec start(map()) :: {:ok, map()} | :kill
  def start(%{call: call, config: config} = state) do
    with true <- config.cancel_grace > 0 and state.minor >= @since,
         [os_pid | _] <- state.os_pids,
         :ok <- NIF.kill(os_pid, Registry.signals().cancel) do
      Logger.warning(
        "beambridge worker #{state.id}: call #{inspect(call.module)}.#{call.function} timed " <>
          "out; interrupting its handler (#{config.cancel_grace} ms to stop)"
      )

      reply = {:error, Replies.timeout_error(state.id, :cancelled)}
      call = Streams.cancel(call, reply)

      streams = if call.streams, do: Streams.caller_down(state, call.streams, call.id), else: nil

      timer = Process.send_after(self(), {:cancel_grace, call.id}, config.cancel_grace)
      {:ok, %{state | call: %{call | streams: streams}, timer: timer}}
    else
      _ -> :kill
    end
  end

  @doc false
  # The grace ran out: a warning for the log before the interpreter is killed.
  @spec gave_up(map()) :: :ok
  def gave_up(%{call: call, config: config} = state) do
    Logger.warning(
      "beambridge worker #{state.id}: the handler of #{inspect(call.module)}.#{call.function} " <>
        "did not stop within cancel_grace (#{config.cancel_grace} ms): stuck in C code " <>
        "that holds the GIL, or it caught CallCancelled; restarting the interpreter"
    )
  end
end
