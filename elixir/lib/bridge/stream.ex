defmodule Bridge.Stream do
  @moduledoc """
  Streams between Elixir and Python, through shared memory, in bounded memory
  (protocol/SPEC.md §8.6).

  **Python to Elixir.** `Bridge.stream/3` calls a handler that returns a
  generator, an async generator, any iterator or iterable, a `pyarrow.Table`
  (sent as its record batches) or a `RecordBatchReader`, and gives a lazy
  Elixir stream of its elements. Each element crosses as a call result would:
  bytes, `%Bridge.Tensor{}`, `%Bridge.Table{}` or plain terms.

      Bridge.stream({:reader, :batches}, ["data.parquet"], window: 4)
      |> Stream.each(&handle/1)
      |> Stream.run()

  **Elixir to Python.** `from/2` wraps an enumerable; passed as an argument of
  `Bridge.call/3` or `Bridge.stream/3`, it arrives in the handler as a
  `beambridge.Stream`, an iterator whose elements are sent as the handler asks
  for them:

      Bridge.call({:hasher, :sha256}, [Bridge.Stream.from(File.stream!(path, [], 4_194_304))])

  A handler that takes a stream and yields one is a transform: both directions
  run at once.

  **Flow control.** At most `window` elements are on their way in each
  direction: a slow consumer slows the producer, and memory stays bounded
  whatever the total size. Results live in the worker's shared memory until the
  consumer's process lets go of them; the consumer collects its garbage after
  twice a window of them (between 4 and 64 MiB), so a loop that drops them keeps
  the worker's arenas small.

  **Stopping early.** When the consumer stops (`Enum.take/2`, a `Stream` that
  halts, a process that exits), the Python generator is closed, its `finally`
  runs, and the worker serves the next call.

  **Checkpoints and resume.** A Python producer marks points it can resume from
  with `beambridge.checkpoint(value, token)`. If the worker dies mid-stream,
  enumeration raises `%Bridge.Error{kind: :worker_died, checkpoint: checkpoint}`,
  a `Bridge.Stream.Checkpoint` of what the consumer took. `resume: checkpoint`
  starts a new stream after it: the handler is called again with
  `checkpoint=token` (the last token taken) and the elements taken after that
  token are skipped, so nothing is delivered twice or lost. `resume: :auto`
  does this by itself, up to `max_resumes` times (default 3). A producer that
  never marks checkpoints is resumed from the start, skipping what was taken
  (it must yield the same elements again).

  **Integrity.** Both ends count the elements and keep a running checksum of
  them; the payloads in shared memory carry checksums verified on arrival. An
  element out of order, a count or checksum that disagrees at the end, or a
  corrupted chunk is a `Bridge.Error` (`:stream_broken`, `:checksum_mismatch`),
  never silent.
  """

  @enforce_keys [:enumerable]
  defstruct [:enumerable, window: 4, fails_call: false]

  @typedoc """
  An enumerable to send to Python as an argument stream (`from/2`). `fails_call`
  is set by beambridge on the streams it makes of a long list (SPEC §8.6,
  "Pieces"), which no handler reads: a `Bridge.Error` raised making an element, or
  one that stops an element being sent, is then the call's answer.
  """
  @type t :: %__MODULE__{enumerable: Enumerable.t(), window: pos_integer(), fails_call: boolean()}

  @max_window 1024

  @doc """
  Wraps `enumerable` to be passed to Python as an iterator. Option `:window`
  (default 4, at most 1024): how many elements may be on their way to the
  worker, not yet taken by the handler.

  ## Examples

      iex> s = Bridge.Stream.from(1..3, window: 2)
      iex> {s.enumerable, s.window}
      {1..3, 2}
      iex> Bridge.Stream.from(1..3, window: 0)
      ** (ArgumentError) Bridge.Stream.from/2: window must be an integer from 1 to 1024, got 0
  """
  @spec from(Enumerable.t(), keyword()) :: t()
  def from(enumerable, opts \\ []) do
    window = Keyword.get(opts, :window, 4)

    unless is_integer(window) and window in 1..@max_window do
      raise ArgumentError,
            "Bridge.Stream.from/2: window must be an integer from 1 to #{@max_window}, " <>
              "got #{inspect(window)}"
    end

    %__MODULE__{enumerable: enumerable, window: window}
  end

  @chunk 4 * 1024 * 1024

  @doc false
  # A binary as the lazy list of its chunks (sub-binaries of at most 4 MiB),
  # for a value that goes as a stream (SPEC §8.6, chunked values).
  @spec chunks(binary()) :: Enumerable.t()
  def chunks(binary) do
    Stream.unfold(0, fn
      at when at >= byte_size(binary) -> nil
      at -> {binary_part(binary, at, min(@chunk, byte_size(binary) - at)), at + @chunk}
    end)
  end

  @doc false
  # The inline terms whose payload (last element) may come in chunks (SPEC §8.6),
  # for the encoder that chunks it and the decoder that reads it.
  @spec chunkable_tags() :: [atom()]
  def chunkable_tags, do: Bridge.Registry.chunkable_tags()

  @doc false
  @spec max_window() :: pos_integer()
  def max_window, do: @max_window

  @doc false
  # The stream chain after element `seq` whose body is `body` (SPEC §8.6):
  # xxh3_64(le64(previous) <> le64(seq) <> le64(xxh3_64(body))).
  @spec chain(non_neg_integer(), pos_integer(), binary()) :: non_neg_integer()
  def chain(previous, seq, body) do
    {:ok, digest} = Bridge.NIF.xxh3_64(body)
    {:ok, next} = Bridge.NIF.xxh3_64(<<previous::little-64, seq::little-64, digest::little-64>>)
    next
  end
end
