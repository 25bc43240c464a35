defmodule Bridge.Encoder.Chunked do
  @moduledoc false
  # Arguments that go as a stream of chunks (protocol/SPEC.md §8.6, chunked
  # values): a binary no slice can take and no control frame can carry, when
  # the call can have streams; so may the payload (last element) of an inline
  # tensor, table, packed list, records or custom term. Bridge.Encoder decides
  # with chunks?/4 and sends what split/3 gives.

  alias Bridge.Control

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
end
