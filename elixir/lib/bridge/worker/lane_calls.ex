defmodule Bridge.Worker.LaneCalls do
  @moduledoc false
  # How Bridge.Worker uses its interpreter's lane (protocol/SPEC.md §8.5): a
  # call's frames go there when the worker polls for them and nothing written to
  # the port earlier is still queued (that must arrive first); the answer is
  # polled for, as long as the last one took (Bridge.Lane.stretch/2: never less
  # than spin_us, the worker's lane_spin_us until a first answer); a call whose answer did not come meanwhile is parked and looked at
  # again a millisecond later (an answer published just as this side parked may
  # come with no ring) and whenever the worker rings. Every function takes and
  # returns the %Bridge.Worker{} state; what an answer's frames mean is the
  # worker's.

  alias Bridge.{Control, Error, Lane}
  alias Bridge.Worker.Interpreter

  @typedoc "What a look at the lane found: its frames, nothing yet, or a broken batch."
  @type found ::
          {:frames, [binary()], struct()} | {:none, struct()} | {:error, Error.t(), struct()}

  @doc false
  # Publishes the call's frames: {:sent, state}, or :pipe (send them there).
  @spec send(struct(), [iodata()]) :: {:sent, struct()} | :pipe
  def send(%{lane: nil}, _frames), do: :pipe

  def send(%{lane: lane} = state, frames) do
    with {:queue_size, 0} <- Port.info(state.port, :queue_size),
         {:ok, seq, awake} <- Lane.send_batch(lane, frames) do
      if not awake, do: Interpreter.send_frame(state, Control.frame(:lane))
      now = System.monotonic_time(:microsecond)
      {:sent, %{state | lane_seq: seq, lane_calls: state.lane_calls + 1, lane_sent_at: now}}
    else
      _ -> :pipe
    end
  end

  @doc false
  # Polls for the answer to the call just sent; parks when it does not come.
  @spec await(struct()) :: found()
  def await(state) do
    case Lane.wait(state.lane, state.lane_seq, state.lane_spin_us) do
      :pending ->
        Process.send_after(self(), {:lane_check, state.lane, state.lane_seq}, 1)
        {:none, %{state | lane_parked: state.lane_parked + 1}}

      answer ->
        found(state, answer)
    end
  end

  @doc false
  # Looks once (a ring, or the second look after parking).
  @spec take(struct()) :: found()
  def take(%{lane_seq: nil} = state), do: {:none, state}
  def take(state), do: found(state, Lane.take(state.lane, state.lane_seq))

  defp found(state, :none), do: {:none, state}

  defp found(state, {:ok, frames}) do
    took = System.monotonic_time(:microsecond) - state.lane_sent_at
    {:frames, frames, %{state | lane_seq: nil, lane_spin_us: Lane.stretch(state.spin_us, took)}}
  end

  defp found(state, {:error, {reason, value}}) do
    error =
      Error.new(:bad_frame, reason,
        field: :lane,
        value: value,
        message: "bad frame: #{reason}: worker #{state.id} left a malformed batch in its lane"
      )

    {:error, error, %{state | lane_seq: nil}}
  end
end
