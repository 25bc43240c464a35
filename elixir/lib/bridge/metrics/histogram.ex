defmodule Bridge.Metrics.Histogram do
  @moduledoc """
  A log-bucketed histogram of non-negative integers (microseconds, bytes): four
  buckets per power of two, so a bucket's upper bound is at most 19% above its
  lower bound, whatever the scale. Histograms of the same quantity merge by
  adding their buckets (`merge/2`), across workers, pools or nodes.

  A histogram is a map: `count`, `sum`, and `buckets` (bucket index => count).

  ## Examples

      iex> h = Enum.reduce([1, 2, 3, 100, 1000], Bridge.Metrics.Histogram.new(), &Bridge.Metrics.Histogram.add(&2, &1))
      iex> {h.count, h.sum}
      {5, 1106}
      iex> Bridge.Metrics.Histogram.quantile(h, 0.5)
      3
      iex> Bridge.Metrics.Histogram.quantile(h, 1.0) >= 1000
      true
  """

  import Bitwise

  @type t :: %{
          count: non_neg_integer(),
          sum: non_neg_integer(),
          buckets: %{non_neg_integer() => pos_integer()}
        }

  @doc "An empty histogram."
  @spec new() :: t()
  def new, do: %{count: 0, sum: 0, buckets: %{}}

  @doc "`h` with one more value."
  @spec add(t(), non_neg_integer()) :: t()
  def add(%{count: c, sum: s, buckets: b}, v) when is_integer(v) and v >= 0,
    do: %{count: c + 1, sum: s + v, buckets: Map.update(b, bucket(v), 1, &(&1 + 1))}

  @doc "The sum of two histograms."
  @spec merge(t(), t()) :: t()
  def merge(a, b) do
    %{
      count: a.count + b.count,
      sum: a.sum + b.sum,
      buckets: Map.merge(a.buckets, b.buckets, fn _, x, y -> x + y end)
    }
  end

  @doc """
  `a` less `b`, where `a` was taken after `b` from the same counters (the
  values recorded in between).
  """
  @spec subtract(t(), t()) :: t()
  def subtract(a, b) do
    buckets =
      Enum.reduce(b.buckets, a.buckets, fn {i, n}, acc ->
        case Map.get(acc, i, 0) - n do
          left when left > 0 -> Map.put(acc, i, left)
          _ -> Map.delete(acc, i)
        end
      end)

    %{count: max(a.count - b.count, 0), sum: max(a.sum - b.sum, 0), buckets: buckets}
  end

  @doc """
  The bucket of `v`: 0 for 0; values 1..3 have buckets of their own; from 4 on,
  four per power of two.

      iex> Enum.map([0, 1, 2, 3, 4, 5, 7, 8, 1_000_000], &Bridge.Metrics.Histogram.bucket/1)
      [0, 1, 2, 3, 4, 5, 7, 8, 75]
  """
  @spec bucket(non_neg_integer()) :: non_neg_integer()
  def bucket(v) when v < 4, do: v

  def bucket(v) do
    e = bit_length(v) - 1
    4 * (e - 1) + (v >>> (e - 2) &&& 3)
  end

  @doc "The largest value of bucket `i` (its upper bound)."
  @spec upper(non_neg_integer()) :: non_neg_integer()
  def upper(i) when i < 4, do: i

  def upper(i) do
    e = div(i, 4) + 1
    sub = rem(i, 4)
    ((4 + sub + 1) <<< (e - 2)) - 1
  end

  @doc """
  The value below which a fraction `q` of the values lie, to the bucket's upper
  bound (`nil` for an empty histogram).
  """
  @spec quantile(t(), float()) :: non_neg_integer() | nil
  def quantile(%{count: 0}, _q), do: nil

  def quantile(%{count: count, buckets: buckets}, q) when q >= 0 and q <= 1 do
    rank = max(1, ceil(q * count))

    buckets
    |> Enum.sort()
    |> Enum.reduce_while(0, fn {i, n}, seen ->
      if seen + n >= rank, do: {:halt, {:found, upper(i)}}, else: {:cont, seen + n}
    end)
    |> case do
      {:found, v} -> v
      _ -> upper(buckets |> Map.keys() |> Enum.max())
    end
  end

  # The number of bits of v > 0, by halving comparisons (no allocation).
  defp bit_length(v), do: bits(v, 0)

  for shift <- [32, 16, 8, 4, 2, 1] do
    defp bits(v, acc) when v >= unquote(1 <<< shift) and unquote(shift) > 0,
      do: bits(v >>> unquote(shift), acc + unquote(shift))
  end

  defp bits(1, acc), do: acc + 1
  defp bits(0, acc), do: acc
end
