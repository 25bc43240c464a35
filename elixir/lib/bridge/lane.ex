defmodule Bridge.Lane do
  @moduledoc false
  # A worker's lane (protocol/SPEC.md §8.5): a sealed shared object, made here for
  # each interpreter and written by both sides, that carries a call and its answer
  # while both sides poll for them, so that neither is woken through the pipe (on a
  # virtual CPU a wake-up costs tens of microseconds, most of a small call).
  #
  # Bridge.Worker sends a call's batch of frames here instead of on the port when
  # the worker says it is awake, then polls for the answer for up to the pool's
  # `spin_us`. A side that stopped polling is rung with a `:lane` frame on the pipe.
  # A batch is the frames exactly as they would cross the pipe: a 4-byte length,
  # then the frame. Everything read from the lane is a copy, checked like a frame
  # from the pipe.

  alias Bridge.{Error, NIF}

  @auto_spin_us 50

  @doc false
  # Microseconds each side polls for the other: the pool's `:spin_us`; `:auto` is
  # #{@auto_spin_us} when this VM runs more than one scheduler, else 0 (polling on
  # the only CPU would keep the worker from it). 0: no lane.
  @spec spin_us(:auto | non_neg_integer()) :: non_neg_integer()
  def spin_us(:auto), do: if(System.schedulers_online() > 1, do: @auto_spin_us, else: 0)
  def spin_us(us) when is_integer(us), do: us

  @stretch 4
  @max_spin_us 1_000

  @doc false
  # How long to poll for the next answer, from how long the last one took: up to
  # #{@stretch}x `base` (at most #{@max_spin_us} µs) to cover it with a margin of
  # half, `base` again when it took longer than that (the worker's side:
  # beambridge.spin).
  @spec stretch(non_neg_integer(), non_neg_integer()) :: non_neg_integer()
  def stretch(base, took_us) do
    cap = min(base * @stretch, @max_spin_us)
    if took_us > cap, do: base, else: min(cap, max(base, div(took_us * 3, 2)))
  end

  @typedoc "A lane (NIF handle)."
  @type t :: reference()

  @spec new() :: {:ok, t()} | {:error, Error.t()}
  def new do
    case NIF.lane_new() do
      {:ok, lane} -> {:ok, lane}
      {:error, reason} -> {:error, Error.new(:arena, reason, field: :lane)}
    end
  end

  @doc false
  # `{:object, :lane, owner_pid, fd, id, size, nonce}` (SPEC §8.3).
  @spec announcement(t()) :: tuple()
  def announcement(lane) do
    {:ok, {id, fd, size, nonce}} = NIF.lane_info(lane)
    {:object, :lane, Bridge.Arena.os_pid(), fd, id, size, nonce}
  end

  @doc false
  # Publishes `frames` (each iodata, without its length) as the next call:
  # `{:ok, seq, still_awake}` (false: ring the worker), `:asleep` (nothing was
  # written: send them on the pipe) or `:too_large` (the same).
  @spec send_batch(t(), [iodata()]) :: {:ok, pos_integer(), boolean()} | :asleep | :too_large
  def send_batch(lane, frames) do
    batch = Enum.map(frames, &[<<IO.iodata_length(&1)::32>> | &1])

    case NIF.lane_send(lane, batch) do
      {:ok, seq, awake} -> {:ok, seq, awake}
      :asleep -> :asleep
      {:error, :too_large} -> :too_large
    end
  end

  @doc false
  # The answer to `seq` after polling up to `spin_us`: `{:ok, frames}` (`[]`: it
  # went on the pipe), `:pending` (this side parked; a `:lane` frame will ring),
  # or `{:error, reason}` for a batch that breaks the protocol.
  @spec wait(t(), pos_integer(), non_neg_integer()) ::
          {:ok, [binary()]} | :pending | {:error, term()}
  def wait(lane, seq, spin_us), do: answer(NIF.lane_wait(lane, seq, spin_us), :pending)

  @doc false
  # The answer to `seq` if it is there: `{:ok, frames}`, `:none` or `{:error, reason}`.
  @spec take(t(), pos_integer()) :: {:ok, [binary()]} | :none | {:error, term()}
  def take(lane, seq), do: answer(NIF.lane_take(lane, seq), :none)

  defp answer({:ok, batch}, _), do: split(batch, [])
  defp answer({:error, reason}, _), do: {:error, {reason, :batch_length}}
  defp answer(other, other), do: other

  defp split(<<>>, acc), do: {:ok, Enum.reverse(acc)}

  defp split(<<size::32, frame::binary-size(size), rest::binary>>, acc),
    do: split(rest, [frame | acc])

  defp split(rest, _acc), do: {:error, {:bad_term, byte_size(rest)}}
end
