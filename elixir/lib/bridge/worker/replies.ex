defmodule Bridge.Worker.Replies do
  @moduledoc false
  # What a worker answers its caller with (protocol/SPEC.md §8.3): a result
  # whose slices are resolved outside the worker's heap, the errors an answer
  # carries, and the errors of a call's life (timeout, death).

  alias Bridge.Error
  alias Bridge.Worker.Objects

  @typedoc """
  When the worker process sent the call on (native monotonic time), and the
  interpreter's own `{decode, run, encode}` microseconds (SPEC §8.3, from 2.5;
  nil from an older worker).
  """
  @type timing ::
          {integer(), {non_neg_integer(), non_neg_integer(), non_neg_integer()} | nil}

  @doc false
  # The answer goes to the caller with its body and its slices resolved. Leases
  # and binaries over slices are made by a process of their own, which ends right
  # after replying: no long-lived heap keeps them (and the memory under them).
  @spec answer(GenServer.from(), binary(), [tuple()], port() | reference(), timing()) ::
          :ok | pid()
  def answer(from, body, [], _port, timing),
    do: GenServer.reply(from, {:ok, {body, {}, self(), timing}})

  def answer(from, body, plan, port, timing) do
    worker = self()

    spawn(fn ->
      case Objects.resolve(plan) do
        {:ok, resolved, sealed} ->
          if sealed != [], do: GenServer.cast(worker, {:sealed_mapped, port, sealed})
          GenServer.reply(from, {:ok, {body, resolved, worker, timing}})

        {:error, error} ->
          GenServer.reply(from, {:error, error})
          Bridge.Worker.bad_answer(worker, error)
      end
    end)
  end

  @doc false
  # The answer to a call whose caller was already told :timeout (SPEC §8.7): its
  # slices are resolved, and let go, by a process of their own; nobody hears of it.
  @spec discard([tuple()], port() | reference()) :: :ok | pid()
  def discard([], _port), do: :ok

  def discard(plan, port) do
    worker = self()

    spawn(fn ->
      case Objects.resolve(plan) do
        {:ok, _resolved, [_ | _] = sealed} ->
          GenServer.cast(worker, {:sealed_mapped, port, sealed})

        _ ->
          :ok
      end
    end)
  end

  @doc false
  # The reply to an {:error, id, error, released} answer, or :unexpected when
  # `error` is no error of §8.3.
  @spec error(map(), term()) :: {:ok, {:error, Error.t()}} | :unexpected
  def error(_call, {:python_exception, type, message, tb}),
    do: {:ok, {:error, Error.python_exception(text(type), text(message), text(tb))}}

  def error(call, {:bad_call, reason, message}) when is_atom(reason) do
    {:ok,
     {:error,
      Error.new(:bad_call, reason,
        field: :call,
        value: {call.module, call.function},
        message: "bad call: #{reason}: #{text(message)}"
      )}}
  end

  def error(_call, _other), do: :unexpected

  @doc false
  @spec timeout_error(String.t(), :queued | :running | :cancelled) :: Error.t()
  def timeout_error(worker_id, where) do
    Error.new(:timeout, :timeout,
      field: :timeout,
      message: "timeout: the call did not finish within its timeout (#{where(worker_id, where)})"
    )
  end

  defp where(_worker_id, :queued), do: "while queued"
  defp where(worker_id, :running), do: "worker #{worker_id} was restarted"
  defp where(worker_id, :cancelled), do: "its handler in worker #{worker_id} was interrupted"

  @doc false
  @spec died_error(String.t(), term()) :: Error.t()
  def died_error(worker_id, status) do
    Error.new(:worker_died, :worker_died,
      field: :exit_status,
      value: status,
      message:
        "worker died: the Python interpreter of worker #{worker_id} exited " <>
          "(status #{inspect(status)}) during the call"
    )
  end

  @doc false
  # A frame from the worker that is no message it may send now.
  @spec unexpected_error(String.t(), term(), atom(), pos_integer() | nil) :: Error.t()
  def unexpected_error(worker_id, other, phase, call_id) do
    Error.new(:bad_frame, :unexpected_message,
      field: :control_frame,
      value: other,
      message:
        "bad frame: unexpected_message: worker #{worker_id} sent " <>
          "#{inspect(other, limit: 8, printable_limit: 200)} while #{describe(phase, call_id)}"
    )
  end

  defp describe(:busy, id), do: "call #{id} was in flight"
  defp describe(phase, _id), do: "#{phase}"

  defp text(bin) when is_binary(bin), do: bin
  defp text(other), do: inspect(other)
end
