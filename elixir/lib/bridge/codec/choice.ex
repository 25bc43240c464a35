defmodule Bridge.Codec.Choice do
  @moduledoc """
  What `compress: :auto` does with one payload (protocol/SPEC.md §15.3).

  It compresses the payload's first 64 KiB with LZ4 and, unless that shrank it
  by less than a tenth (then the payload goes as it is, and only the LZ4 pass
  was paid for), with Zstandard. From each sample's ratio (compressed size over
  size) it estimates, per byte of the whole payload, the time of every way to
  move it:

      none:   1 / path
      codec:  1 / compress + ratio / path + 1 / decompress

  where `path` is the bytes per second of the path the payload takes, and
  `compress` and `decompress` the codec's speeds on data that compresses that
  well (a table measured on this machine: what compresses well also
  compresses fast). The cheapest wins. Timing the sample itself would say
  little: at 64 KiB a call's fixed cost is most of the time.

  gzip is never chosen: on every input measured Zstandard at level 1 is both
  smaller and faster; it is there for peers that want it. Paths: across nodes
  the bridge learns each connection's speed from the calls it makes
  (`Bridge.Remote`), starting from 1 GB/s; through shared memory (a memcpy, ~8
  GB/s here) compression never pays, since no codec here decompresses that
  fast, so a local call does not even sample.

  ## Examples

      iex> Bridge.Codec.Choice.choose(:binary.copy("abcd", 1_000_000), 125_000_000) != :none
      true
      iex> Bridge.Codec.Choice.choose(:crypto.strong_rand_bytes(1_000_000), 125_000_000)
      :none
      iex> Bridge.Codec.Choice.choose(:binary.copy("abcd", 1_000_000), Bridge.Codec.Choice.shm_speed())
      :none
  """

  alias Bridge.Codec

  @sample 65_536
  # Bytes/s of the NIF's codecs on this machine (bench/cluster.exs prints them), by
  # the compressed size of the 64 KiB sample over its size: {sample ratio,
  # compress, decompress}. Both speeds depend on the data (what compresses well
  # compresses fast), and the sample's ratio is the one thing known about it;
  # between two points the speeds are interpolated on the ratio's logarithm.
  @speeds %{
    lz4_frame: [{0.02, 2.24e9, 1.21e9}, {0.16, 0.95e9, 1.07e9}, {1.0, 0.92e9, 1.12e9}],
    zstd: [{0.008, 5.72e9, 1.70e9}, {0.04, 0.98e9, 1.13e9}, {1.0, 1.06e9, 1.13e9}]
  }
  @shm_speed 8.0e9

  @doc "The bytes per second the shared-memory path moves (a memcpy)."
  @spec shm_speed() :: float()
  def shm_speed, do: @shm_speed

  @doc """
  The codec to send `payload` with over a path of `path_speed` bytes per
  second: `:none`, `:lz4_frame` or `:zstd`.
  """
  @spec choose(binary(), number()) :: :none | :lz4_frame | :zstd
  def choose(payload, path_speed) when is_binary(payload) and path_speed > 0 do
    sample = binary_part(payload, 0, min(byte_size(payload), @sample))

    with {:ok, lz4} <- ratio(:lz4_frame, sample),
         true <- lz4 < 0.9,
         {:ok, zstd} <- ratio(:zstd, sample) do
      [{:none, 1 / path_speed}, cost(:lz4_frame, lz4, path_speed), cost(:zstd, zstd, path_speed)]
      |> Enum.min_by(&elem(&1, 1))
      |> elem(0)
    else
      _ -> :none
    end
  end

  @doc """
  Seconds per byte of payload to move it with `codec` when its sample
  compresses to `ratio`, over a path of `path_speed` bytes per second.
  """
  @spec cost(Codec.name(), float(), number()) :: {Codec.name(), float()}
  def cost(codec, ratio, path_speed) do
    {compress, decompress} = speeds(codec, ratio)
    {codec, 1 / compress + ratio / path_speed + 1 / decompress}
  end

  @doc """
  The path speed (bytes/s) below which `:auto` compresses `payload`, and the
  codec it then uses; `{:none, 0.0}` when no codec ever pays. A codec whose
  sample shrinks to `ratio` wins over a path of speed `p` when
  `1/p > 1/compress + ratio/p + 1/decompress`, that is below
  `p = (1 - ratio) / (1/compress + 1/decompress)`.

  ## Examples

      iex> {codec, speed} = Bridge.Codec.Choice.crossover(:binary.copy("abcd", 100_000))
      iex> codec in [:lz4_frame, :zstd] and speed > 1.0e8
      true
  """
  @spec crossover(binary()) :: {Codec.name() | :none, float()}
  def crossover(payload) when is_binary(payload) do
    sample = binary_part(payload, 0, min(byte_size(payload), @sample))

    [:lz4_frame, :zstd]
    |> Enum.flat_map(fn codec ->
      case ratio(codec, sample) do
        {:ok, r} when r < 0.9 ->
          {c, d} = speeds(codec, r)
          [{codec, (1 - r) / (1 / c + 1 / d)}]

        _ ->
          []
      end
    end)
    |> Enum.max_by(&elem(&1, 1), fn -> {:none, 0.0} end)
  end

  defp speeds(codec, ratio) do
    points = Map.fetch!(@speeds, codec)

    case Enum.split_while(points, fn {r, _, _} -> r < ratio end) do
      {[], [{_, c, d} | _]} -> {c, d}
      {below, []} -> below |> List.last() |> then(fn {_, c, d} -> {c, d} end)
      {below, [{r1, c1, d1} | _]} -> between(List.last(below), {r1, c1, d1}, ratio)
    end
  end

  defp between({r0, c0, d0}, {r1, c1, d1}, r) do
    t = (:math.log(r) - :math.log(r0)) / (:math.log(r1) - :math.log(r0))
    {c0 + t * (c1 - c0), d0 + t * (d1 - d0)}
  end

  defp ratio(codec, sample) do
    case Codec.compress(codec, sample) do
      {:ok, out} -> {:ok, byte_size(out) / max(byte_size(sample), 1)}
      {:error, _} -> :error
    end
  end
end
