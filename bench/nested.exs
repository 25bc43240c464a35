# Nested Arrow data into Elixir (issue 14's bench row): 1M rows of a
# list<struct<sku, qty, price>> column and a fixed_size_list<float32, 768> embedding
# column (3 GiB), written by pyarrow (bench/nested_table.py), decoded by Bridge.Arrow,
# against the same data as an ETF list of maps decoded by binary_to_term. A step of
# `make bench`; alone:
#   MIX_ENV=test mix run bench/nested.exs [--quick]
#
# The ETF baseline is generous to ETF: each row's embedding is a 3,072-byte float32
# binary, not a list of 768 floats (1M such lists would be ~24 GB of terms, more than
# this machine has). Three figures, each the median of 3 runs interleaved:
#   * decode: Bridge.Arrow.decode/1 to a %Bridge.Table{} (every buffer checked, columns
#     zero-copy, nested values made when asked for);
#   * decode + values: that, then the items column as Elixir lists of maps
#     (Bridge.Table.column!/2) and the embeddings as one {n, 768} tensor
#     (Bridge.Table.to_tensor/2, a sub-binary): every value in Elixir, as the ETF
#     baseline has them;
#   * ETF: :erlang.binary_to_term/1 of the list of maps.
defmodule BenchNested do
  alias Bridge.{Arrow, Table}

  @dim 768

  def main(argv) do
    quick? = "--quick" in argv
    result = run(Path.expand(".venv/bin/python"), quick?)
    print(result)
  end

  def run(python, quick?) do
    n = if quick?, do: 100_000, else: 1_000_000
    path = Path.join(System.tmp_dir!(), "beambridge_bench_nested_#{System.os_time()}.arrows")

    stream =
      try do
        {_, 0} = System.cmd(python, ["bench/nested_table.py", "#{n}", path])
        File.read!(path)
      after
        File.rm(path)
      end

    etf = etf_baseline(stream)
    check_same_values(stream, etf)

    decode = fn ->
      {:ok, t} = Arrow.decode(stream)
      t.num_rows
    end

    values = fn ->
      {:ok, t} = Arrow.decode(stream)
      items = Table.column!(t, "items")
      {:ok, %Bridge.Tensor{shape: {rows, @dim}}} = Table.to_tensor(t, "emb")
      ^rows = length(items)
    end

    from_etf = fn -> length(:erlang.binary_to_term(etf)) end

    samples =
      for _ <- 1..3 do
        Enum.map([decode, values, from_etf], fn f ->
          {us, ^n} = :timer.tc(f)
          :erlang.garbage_collect()
          us
        end)
      end

    [decode_us, values_us, etf_us] = samples |> Enum.zip() |> Enum.map(&median(Tuple.to_list(&1)))

    %{
      "rows" => n,
      "stream_bytes" => byte_size(stream),
      "etf_bytes" => byte_size(etf),
      "arrow_decode_us" => decode_us,
      "arrow_decode_values_us" => values_us,
      "etf_us" => etf_us,
      "speedup" => Float.round(etf_us / decode_us, 2),
      "speedup_with_values" => Float.round(etf_us / values_us, 2)
    }
  end

  # The same rows as an ETF list of maps: %{"items" => [%{"sku", "qty", "price"}],
  # "emb" => <<3,072 bytes>>}.
  defp etf_baseline(stream) do
    {:ok, t} = Arrow.decode(stream)
    {:ok, emb} = Table.to_tensor(t, "emb")

    Table.column!(t, "items")
    |> Enum.with_index()
    |> Enum.map(fn {items, i} ->
      %{"items" => items, "emb" => binary_part(emb.data, i * @dim * 4, @dim * 4)}
    end)
    |> :erlang.term_to_binary()
  end

  # Both sides hold the same values (the first 1,000 rows compared in full).
  defp check_same_values(stream, etf) do
    {:ok, t} = Arrow.decode(stream)
    {:ok, emb} = Table.to_tensor(t, "emb")
    rows = :erlang.binary_to_term(etf)
    true = length(rows) == t.num_rows

    rows
    |> Enum.take(1000)
    |> Enum.zip(Enum.take(Table.column!(t, "items"), 1000))
    |> Enum.with_index()
    |> Enum.each(fn {{row, items}, i} ->
      true = row["items"] == items
      true = row["emb"] == binary_part(emb.data, i * @dim * 4, @dim * 4)
    end)
  end

  defp median(list), do: list |> Enum.sort() |> Enum.at(div(length(list), 2))

  def print(r) do
    IO.puts(
      "Nested table, #{r["rows"]} rows of list<struct> + fixed_size_list<float32, #{@dim}> " <>
        "(#{div(r["stream_bytes"], 1_048_576)} MiB Arrow, #{div(r["etf_bytes"], 1_048_576)} MiB ETF), into Elixir:"
    )

    IO.puts(
      "  Bridge.Arrow.decode #{r["arrow_decode_us"]} µs; with every value made " <>
        "(items as lists of maps, embeddings as a tensor) #{r["arrow_decode_values_us"]} µs; " <>
        "ETF list of maps #{r["etf_us"]} µs"
    )

    verdict = if r["speedup"] >= 10, do: "met", else: "MISSED"

    IO.puts(
      "  Arrow decode >= 10x faster than an ETF list of maps: #{r["speedup"]}x -> #{verdict} " <>
        "(with every value made: #{r["speedup_with_values"]}x)"
    )

    IO.puts("")
  end
end

unless Process.get(:bench_nested_as_lib), do: BenchNested.main(System.argv())
