defmodule Bridge.Encoder.Chunked do
  @moduledoc false
  # Arguments that go as a stream of chunks (protocol/SPEC.md §8.6, chunked
  # values): a binary no slice can take and no control frame can carry, when
  # the call can have streams; so may the payload (last element) of an inline
  # tensor, table, packed list, records or custom term. Bridge.Encoder decides
  # with chunks?/4 and sends what send_chunks/6 gives; a value that cannot go as
  # chunks goes inline when a control frame can carry it (send_inline/5).

  alias Bridge.{Control, Encoder, Error, FormatStats}

  @chunkable Bridge.Stream.chunkable_tags()

  @doc false
  # Whether a value of handle kind `kind` (`inline` its inline term), `size`
  # bytes, goes as chunks in a call whose encoding so far is `ctx`.
  @spec chunks?(atom(), term(), non_neg_integer(), map()) :: boolean()
  def chunks?(kind, inline, size, ctx) do
    is_list(ctx.streams) and ctx.inline + size > Control.max_frame() - 65_536 and
      (kind in [:binary, :buffer] or payload_term?(inline))
  end

  @doc false
  # The bytes that go as chunks, and the term that stands for the value given
  # the stream's sid.
  @spec split(atom(), binary(), tuple()) :: {binary(), (pos_integer() -> tuple())}
  def split(kind, payload, _inline) when kind in [:binary, :buffer],
    do: {payload, &{:"$bb_chunked", kind, &1, byte_size(payload)}}

  def split(_kind, _payload, inline) do
    last = tuple_size(inline) - 1
    bin = elem(inline, last)
    {bin, &put_elem(inline, last, {:"$bb_chunked", :binary, &1, byte_size(bin)})}
  end

  defp payload_term?(t),
    do: is_tuple(t) and elem(t, 0) in @chunkable and is_binary(elem(t, tuple_size(t) - 1))

  @doc false
  # A binary no slice can take and no control frame can carry goes as a stream
  # of chunks (chunks?/4 said so): its term, and the encoding `ctx` with the
  # stream added.
  @spec send_chunks(atom(), iodata(), term(), map(), {atom(), term()}, Error.t()) ::
          {tuple(), map()}
  def send_chunks(kind, payload, inline, ctx, {form, what}, %Error{reason: cause} = error) do
    {bin, term} = split(kind, payload, inline)
    size = byte_size(bin)
    sid = length(ctx.streams) + 1
    stream = Bridge.Stream.from(Bridge.Stream.chunks(bin), window: 2)

    FormatStats.warn({:to_python, :chunked, cause}, fn ->
      "beambridge: a #{size}-byte argument went as a stream of chunks (#{cause}): " <>
        Exception.message(error)
    end)

    ctx = %{
      Encoder.note(ctx, form, :chunked, size, what)
      | streams: [{sid, stream} | ctx.streams]
    }

    {term.(sid), ctx}
  end

  @doc false
  # A value no slice could take goes inline when a control frame can carry it;
  # else the call's error is thrown as Bridge.Encoder throws it.
  @spec send_inline(term(), non_neg_integer(), map(), {atom(), term()}, Error.t()) ::
          {term(), map()}
  def send_inline(inline, size, ctx, {form, what}, %Error{reason: cause} = error) do
    if ctx.inline + size > Control.max_frame() - 65_536 do
      message = String.replace_prefix(error.message, "arena error", "bad call")
      throw({:bad_arg, %{error | kind: :bad_call, message: message}, ctx})
    else
      FormatStats.warn({:to_python, cause}, fn ->
        "beambridge: a #{size}-byte argument went inline over the Port, not through " <>
          "shared memory (#{cause}): " <> Exception.message(error)
      end)

      {inline, %{Encoder.note(ctx, form, cause, size, what) | inline: ctx.inline + size}}
    end
  end
end
