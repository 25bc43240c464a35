# The Elixir half of the cross-language format-selection tests (driven by
# test_cross_formats.py).
#
#   mix run tests/cross/formats_peer.exs DIR COUNT THRESHOLD
#
# DIR holds the handler module bbx_formats.py and the examples it serves. For each
# example i < COUNT, with `forced` the form the example is meant for
# (bbx_formats.forced(i)):
#   * Python -> Elixir: load(i) with format: :etf and with format: forced; the two
#     values must be exactly equal (=:=);
#   * Elixir -> Python: canon(value) with format: :etf and with format: forced, where
#     canon is Python's canonical text of what the handler received, and expected(i),
#     that text for the value the type mapping predicts.
# Prints "EX i SAME|DIFF <etf> <forced> <expected>" (canonical texts in hex; or
# "EX i ERROR ...")
# per example, then "STATS form count" for every form results and arguments used,
# then "DONE".
defmodule FormatsPeer do
  def main([dir, count, threshold]) do
    {:ok, sup} =
      Bridge.start_link(
        name: FormatsPeerBridge,
        python: Path.expand(".venv/bin/python"),
        python_path: [dir, Path.expand("tests/python/handlers")],
        threshold: String.to_integer(threshold),
        pool_size: 1,
        timeout: 60_000
      )

    # the atoms record keys may use (a result may only hold atoms the BEAM knows)
    {:ok, words} = call(:atoms, [], :etf)
    Enum.each(words, &String.to_atom/1)
    Bridge.reset_format_stats()

    for i <- 0..(String.to_integer(count) - 1) do
      IO.puts(example(i))
    end

    stats =
      Bridge.format_stats()
      |> Enum.group_by(&form/1)
      |> Enum.map(fn {form, entries} -> {form, entries |> Enum.map(&count/1) |> Enum.sum()} end)

    for {form, n} <- Enum.sort(stats), do: IO.puts("STATS #{form} #{n}")
    Supervisor.stop(sup)
    IO.puts("DONE")
  end

  defp example(i) do
    {:ok, forced} = call(:forced, [i], :etf)
    forced = String.to_existing_atom(forced)

    with {:ok, a} <- call(:load, [i], :etf),
         {:ok, b} <- call(:load, [i], forced),
         {:ok, ca} <- call(:canon, [a], :etf),
         {:ok, cb} <- call(:canon, [a], forced),
         {:ok, expected} <- call(:expected, [i], :etf) do
      same = if a === b, do: "SAME", else: "DIFF"
      "EX #{i} #{same} #{Base.encode16(ca)} #{Base.encode16(cb)} #{Base.encode16(expected)}"
    else
      {:error, e} -> "EX #{i} ERROR #{inspect(Exception.message(e))}"
    end
  end

  defp call(fun, args, format),
    do: Bridge.call({:bbx_formats, fun}, args, pool: FormatsPeerBridge, format: format)

  # Bridge.format_stats/0 entries: {{direction, form, reason}, count, bytes} or maps.
  defp form(%{form: form}), do: form
  defp form({{_dir, form, _reason}, _count, _bytes}), do: form
  defp count(%{count: n}), do: n
  defp count({_key, n, _bytes}), do: n
end

FormatsPeer.main(System.argv())
