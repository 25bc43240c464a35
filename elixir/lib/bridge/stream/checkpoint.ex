defmodule Bridge.Stream.Checkpoint do
  @moduledoc """
  Where a result stream can be resumed (`Bridge.stream/3`'s `resume:`).

    * `token` — the last checkpoint token the consumer took (a binary), or
      `nil` when the producer marked none yet (the stream then restarts from
      its beginning);
    * `taken` — the elements the consumer took in all;
    * `skip` — how many of those came after `token` (the resumed producer's
      first `skip` elements are dropped);
    * `checksum` — the running checksum over the elements taken, which the
      resumed stream continues, so its end is checked against the whole.

  It is plain data: keep it (in a file, a database) to resume in another run.
  """

  defstruct token: nil, taken: 0, skip: 0, checksum: 0

  @type t :: %__MODULE__{
          token: binary() | nil,
          taken: non_neg_integer(),
          skip: non_neg_integer(),
          checksum: non_neg_integer()
        }

  @doc false
  # The call option "stream" of a stream that resumes from `checkpoint`.
  @spec option(t() | nil, pos_integer()) :: map()
  def option(nil, window), do: %{"window" => window}

  def option(%__MODULE__{} = c, window) do
    base = %{"window" => window, "seq" => c.taken, "checksum" => c.checksum, "skip" => c.skip}
    if c.token == nil, do: base, else: Map.put(base, "checkpoint", c.token)
  end

  @doc false
  # After the consumer took element `seq` carrying `token` (or nil) with the
  # running checksum `checksum`.
  @spec took(t(), pos_integer(), binary() | nil, non_neg_integer()) :: t()
  def took(%__MODULE__{} = c, seq, nil, checksum),
    do: %{c | taken: seq, skip: c.skip + 1, checksum: checksum}

  def took(%__MODULE__{} = c, seq, token, checksum),
    do: %{c | token: token, taken: seq, skip: 0, checksum: checksum}
end
