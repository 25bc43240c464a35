# Where automatic format selection should switch forms (protocol/SPEC.md §8.1):
#   MIX_ENV=test mix run bench/formats.exs [--quick]
# (also a step of `make bench`, which loads this file).
#
# For number lists (int32-range integers, 0..255 integers, floats) and record lists
# (rows of id :: int, x :: float, flag :: bool, name :: binary) of growing size, both
# directions: the same call with `format: :etf` against the forced transport form
# (`:packed` / `:arrow`), medians, in one run. The receiver's value is the same either
# way (that is the point of the forms), so this measures transport only. The smallest
# size from which the form stays faster is the crossover the defaults are set from.
# Format decisions are logged at debug level, one line per argument: measure the
# bridge, not the console.
Logger.configure(level: :info)

defmodule BenchFormats do
  import Bitwise

  @python Path.expand(".venv/bin/python")
  @handlers Path.expand("bench/handlers")

  @kinds [
    {"ints", :packed, [16, 64, 128, 256, 1024, 16_384, 262_144, 1_048_576]},
    {"bytes", :packed, [1024, 65_535, 65_536, 262_144, 1_048_576]},
    {"floats", :packed, [16, 64, 128, 256, 1024, 16_384, 262_144, 1_048_576]},
    {"rows", :arrow, [4, 16, 64, 256, 1024, 4096, 16_384, 100_000]}
  ]

  def main(argv) do
    quick? = "--quick" in argv

    {:ok, sup} =
      Bridge.start_link(
        name: BenchFormatsBridge,
        python: @python,
        python_path: [@handlers],
        pool_size: 1,
        timeout: 300_000
      )

    rows = run(BenchFormatsBridge, quick?)
    Supervisor.stop(sup)
    print(rows)
    File.mkdir_p!("bench/results")
    File.write!("bench/results/formats.json", Bench.JSON.encode(%{"formats" => rows}) <> "\n")
  end

  @doc "Measures every kind and size on the bridge `pool`; one map per (kind, size)."
  def run(pool, quick?) do
    for {kind, form, sizes} <- @kinds,
        n <- if(quick?, do: Enum.take_every(sizes, 2), else: sizes) do
      value = value(kind, n)
      reps = reps(n)

      to_python =
        for format <- [:etf, form], into: %{} do
          call = fn ->
            {:ok, ^n} =
              Bridge.call({:bench_handlers, :size_of}, [value], pool: pool, format: format)
          end

          {format, median_us(reps, call)}
        end

      from_python =
        for format <- [:etf, form], into: %{} do
          call = fn ->
            {:ok, got} =
              Bridge.call({:bench_handlers, :make}, [kind, n], pool: pool, format: format)

            ^n = length(got)
          end

          {format, median_us(reps, call)}
        end

      %{
        "kind" => kind,
        "form" => Atom.to_string(form),
        "n" => n,
        "to_python_etf_us" => to_python[:etf],
        "to_python_form_us" => to_python[form],
        "to_python_speedup" => ratio(to_python[:etf], to_python[form]),
        "from_python_etf_us" => from_python[:etf],
        "from_python_form_us" => from_python[form],
        "from_python_speedup" => ratio(from_python[:etf], from_python[form])
      }
    end
  end

  def print(rows) do
    IO.puts(
      "Format selection: ETF vs the packed/records form, medians (speed-up > 1: the form is faster)"
    )

    IO.puts(
      String.pad_trailing("kind", 8) <>
        String.pad_leading("n", 9) <>
        String.pad_leading("E->P etf", 11) <>
        String.pad_leading("form", 11) <>
        String.pad_leading("x", 8) <>
        String.pad_leading("P->E etf", 11) <>
        String.pad_leading("form", 11) <> String.pad_leading("x", 8)
    )

    for r <- rows do
      IO.puts(
        String.pad_trailing(r["kind"], 8) <>
          String.pad_leading(Integer.to_string(r["n"]), 9) <>
          String.pad_leading(fmt(r["to_python_etf_us"]), 11) <>
          String.pad_leading(fmt(r["to_python_form_us"]), 11) <>
          String.pad_leading("#{r["to_python_speedup"]}x", 8) <>
          String.pad_leading(fmt(r["from_python_etf_us"]), 11) <>
          String.pad_leading(fmt(r["from_python_form_us"]), 11) <>
          String.pad_leading("#{r["from_python_speedup"]}x", 8)
      )
    end

    for {kind, _, _} <- @kinds do
      mine = Enum.filter(rows, &(&1["kind"] == kind))

      IO.puts(
        "  #{kind}: form faster from n = #{crossover(mine, "to_python_speedup")} (Elixir -> Python), " <>
          "#{crossover(mine, "from_python_speedup")} (Python -> Elixir)"
      )
    end

    IO.puts("")
  end

  # The smallest n from which every larger size is faster with the form.
  defp crossover(rows, key) do
    rows
    |> Enum.reverse()
    |> Enum.take_while(&(&1[key] != nil and &1[key] > 1.0))
    |> List.last()
    |> case do
      nil -> "never"
      row -> Integer.to_string(row["n"])
    end
  end

  def value("ints", n), do: for(i <- 0..(n - 1), do: rem(i * 7919, 1 <<< 31) - (1 <<< 30))
  def value("bytes", n), do: for(i <- 0..(n - 1), do: rem(i, 256))
  def value("floats", n), do: for(i <- 0..(n - 1), do: i * 0.25)

  def value("rows", n),
    do:
      for(
        i <- 0..(n - 1),
        do: %{"id" => i, "x" => i * 0.5, "flag" => rem(i, 3) == 0, "name" => "name-#{i}"}
      )

  defp reps(n) when n <= 4096, do: 200
  defp reps(n) when n <= 65_536, do: 30
  defp reps(n) when n <= 300_000, do: 7
  defp reps(_), do: 3

  defp median_us(n, fun) do
    fun.()

    samples =
      for _ <- 1..n do
        {us, _} = :timer.tc(fun)
        us
      end

    Enum.at(Enum.sort(samples), div(n, 2))
  end

  defp ratio(a, b) when b > 0, do: Float.round(a / b, 2)
  defp ratio(_, _), do: nil

  defp fmt(us) when us >= 1000, do: "#{Float.round(us / 1000, 1)} ms"
  defp fmt(us), do: "#{us} µs"
end

unless Process.get(:bench_formats_as_lib) do
  Code.require_file("json.exs", __DIR__)
  BenchFormats.main(System.argv())
end
