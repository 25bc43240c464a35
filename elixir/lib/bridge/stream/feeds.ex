defmodule Bridge.Stream.Feeds do
  @moduledoc false
  # The argument streams of a call (protocol/SPEC.md §8.6), in the caller's
  # process: each %Bridge.Stream{} enumerable is walked one element at a time
  # (suspended between elements, so a File.stream! reads only what is sent),
  # each element encoded as an argument is (Bridge.Encoder: big values in
  # slices of the bridge's arenas) and sent through the worker, at most
  # `window` elements ahead of the interpreter's acknowledgements. An element's
  # slices are this process's until the interpreter acknowledges it; then they
  # are released. When the enumerable ends, {:done, id, sid, count, checksum}
  # follows; when it raises, {:abort, id, sid, message}. Of a stream that
  # `fails_call` (the pieces of a long list, Bridge.Schema.Batch.pieces/5), the
  # Bridge.Error that ended it is the call's answer (failure/1): no handler saw it.

  alias Bridge.{Arena, Control, Encoder, Error}

  @type feed :: %{
          next: {:start, Enumerable.t()} | {:cont, Enumerable.continuation()} | :ended,
          window: pos_integer(),
          sent: non_neg_integer(),
          acked: non_neg_integer(),
          chain: non_neg_integer(),
          pending: [{pos_integer(), [Arena.Slice.t()]}],
          fails_call: boolean(),
          failed: Error.t() | nil
        }
  @type t :: %{pos_integer() => feed()}

  @doc false
  @spec new([{pos_integer(), Bridge.Stream.t()}]) :: t()
  def new(streams) do
    Map.new(streams, fn {sid, %Bridge.Stream{enumerable: enum, window: window} = s} ->
      {sid,
       %{
         next: {:start, enum},
         window: window,
         sent: 0,
         acked: 0,
         chain: 0,
         pending: [],
         fails_call: s.fails_call,
         failed: nil
       }}
    end)
  end

  @doc false
  # Sends what every stream's window allows. `ctx`: %{worker, id, config, format}.
  @spec push(t(), map()) :: t()
  def push(feeds, ctx), do: Map.new(feeds, fn {sid, f} -> {sid, fill(f, sid, ctx)} end)

  @doc false
  # The interpreter took elements of `sid` up to `seq`: their slices go, and
  # more may be sent.
  @spec ack(t(), pos_integer(), non_neg_integer(), map()) :: t()
  def ack(feeds, sid, seq, ctx) do
    case feeds do
      %{^sid => f} when seq > f.acked and seq <= f.sent ->
        {done, pending} = Enum.split_with(f.pending, fn {s, _} -> s <= seq end)
        Enum.each(done, fn {_, slices} -> Enum.each(slices, &Arena.release/1) end)
        Map.put(feeds, sid, fill(%{f | acked: seq, pending: pending}, sid, ctx))

      _ ->
        feeds
    end
  end

  @doc false
  # The call is over: enumerables not walked to their end are halted (a file
  # stream closes its file), every slice still held is released.
  @spec close(t()) :: :ok
  def close(feeds) do
    Enum.each(feeds, fn {_sid, f} ->
      halt(f.next)
      Enum.each(f.pending, fn {_, slices} -> Enum.each(slices, &Arena.release/1) end)
    end)
  end

  @doc false
  # The error a stream of the call failed with that is the call's answer, if any.
  @spec failure(t()) :: Error.t() | nil
  def failure(feeds) do
    feeds |> Enum.sort() |> Enum.find_value(fn {_sid, f} -> f.failed end)
  end

  defp fill(%{next: :ended} = f, _sid, _ctx), do: f

  defp fill(f, sid, ctx) do
    if f.sent - f.acked >= f.window do
      f
    else
      case step(f.next) do
        {:element, value, next} ->
          %{f | next: next} |> send_element(sid, value, ctx) |> fill(sid, ctx)

        :done ->
          finish(f, sid, ctx, {:done, ctx.id, sid, f.sent, f.chain})

        {:raised, message, error} ->
          f |> finish(sid, ctx, {:abort, ctx.id, sid, message}) |> failed(error)
      end
    end
  end

  defp finish(f, _sid, ctx, envelope) do
    GenServer.cast(ctx.worker, {:stream, ctx.id, {:send, Control.frame(envelope)}})
    %{f | next: :ended}
  end

  defp failed(%{fails_call: true} = f, %Error{} = error), do: %{f | failed: error}
  defp failed(f, _error), do: f

  defp send_element(f, sid, value, ctx) do
    %{config: config} = ctx

    case Encoder.encode_args([value], config.arena, config.threshold, format: ctx.format) do
      {:ok, [term], slices} ->
        seq = f.sent + 1
        body = :erlang.term_to_binary(term)
        frame = Control.frame({:element, ctx.id, sid, seq, nil, Encoder.entries(slices)}, body)
        GenServer.cast(ctx.worker, {:stream, ctx.id, {:feed, frame, slices}})
        chain = Bridge.Stream.chain(f.chain, seq, body)
        %{f | sent: seq, chain: chain, pending: f.pending ++ [{seq, slices}]}

      {:error, %Error{} = e} ->
        # the handler's iterator raises with this; the rest is not sent
        halt(f.next)
        message = "element #{f.sent + 1} cannot be sent: #{Exception.message(e)}"
        f |> finish(sid, ctx, {:abort, ctx.id, sid, message}) |> failed(e)
    end
  end

  # An enumerable walked one element at a time: each step returns the element
  # and the continuation that takes the next; or how it failed, and the
  # exception it raised (if any).
  defp step(next) do
    result =
      case next do
        {:start, enum} -> Enumerable.reduce(enum, {:cont, nil}, fn x, _ -> {:suspend, x} end)
        {:cont, cont} -> cont.({:cont, nil})
      end

    case result do
      {:suspended, value, cont} -> {:element, value, {:cont, cont}}
      {:done, _} -> :done
      {:halted, _} -> :done
    end
  rescue
    e ->
      banner = Exception.format_banner(:error, e, __STACKTRACE__)
      {:raised, String.slice(banner, 0, 4000), e}
  catch
    kind, reason ->
      {:raised, Exception.format_banner(kind, reason) |> String.slice(0, 4000), nil}
  end

  # A suspended enumerable is told to halt, so it frees what it holds.
  defp halt({:cont, cont}) do
    cont.({:halt, nil})
    :ok
  catch
    _, _ -> :ok
  end

  defp halt(_next), do: :ok
end
