# Small calls by CPU cost: `make bench` runs this with the BEAM and every Python process
# it starts pinned to one CPU (`taskset -c 0 mix run bench/cpu.exs`).
#
# On this 2-core VM a small call's wall time is mostly wake-ups: each side sleeps while
# the other works, and waking a sleeping vCPU costs tens of microseconds in fast phases
# and in slow ones alike, so two-CPU ratios of small calls drift from run to run (the
# same 1 KiB echo measured 0.3x to 0.8x of ETF over a Port). On one CPU nothing sleeps
# on another core: the figures are the work each call does, and they repeat within a
# few percent. Both are reported; this file writes bench/results/cpu.json.
Logger.configure(level: :info)

defmodule BenchCpu do
  import Bitwise

  @python Path.expand(".venv/bin/python")
  @handlers Path.expand("bench/handlers")
  @reps 3000

  def main do
    {cpus, 0} = System.cmd("nproc", [])

    IO.puts(
      "Small calls on one CPU (#{String.trim(cpus)} CPU visible to this run), median of #{@reps}"
    )

    pools = [
      {:inline, [threshold: 1 <<< 40]},
      {:slice, [threshold: 1]},
      {:default, []}
    ]

    for {name, opts} <- pools do
      {:ok, _} =
        Bridge.start_link(
          [name: pool(name), python: @python, python_path: [@handlers], pool_size: 1] ++ opts
        )
    end

    rows =
      BenchEcho.Port.with_port(@python, ["bench/etf_echo.py"], fn port ->
        for size <- [1024, 16 * 1024] do
          payload = BenchEcho.payload(size)

          times =
            for {key, f} <- [
                  {"etf_port_us", fn -> BenchEcho.etf_echo(port, payload) end},
                  {"bridge_us", fn -> BenchEcho.echo(pool(:default), payload, :plain) end},
                  {"inline_us", fn -> BenchEcho.echo(pool(:inline), payload, :plain) end},
                  {"slice_us", fn -> BenchEcho.echo(pool(:slice), payload, :plain) end}
                ],
                into: %{} do
              Enum.each(1..300, fn _ -> f.() end)
              {key, median(f)}
            end

          row =
            Map.merge(times, %{
              "size" => size,
              "speedup_vs_etf_port" => BenchEcho.ratio(times["etf_port_us"], times["bridge_us"]),
              "slice_over_inline" => BenchEcho.ratio(times["slice_us"], times["inline_us"])
            })

          IO.puts(
            "  #{BenchEcho.human(size)} echo: bridge #{times["bridge_us"]} µs, ETF over Port " <>
              "#{times["etf_port_us"]} µs (#{row["speedup_vs_etf_port"]}x); every payload " <>
              "inline #{times["inline_us"]} µs, in a slice #{times["slice_us"]} µs " <>
              "(#{row["slice_over_inline"]}x)"
          )

          row
        end
      end)

    at = fn size -> Enum.find(rows, &(&1["size"] == size)) end

    target(
      "1 KiB echo >= 1.2x faster than ETF over a Port",
      at.(1024)["speedup_vs_etf_port"],
      &(&1 >= 1.2)
    )

    target(
      "16 KiB echo through slices within 1.5x of inline",
      at.(16_384)["slice_over_inline"],
      &(&1 <= 1.5)
    )

    File.mkdir_p!("bench/results")
    File.write!("bench/results/cpu.json", Bench.JSON.encode(%{"one_cpu" => rows}) <> "\n")
  end

  defp pool(name), do: :"BenchCpu_#{name}"

  defp target(what, figure, ok?) do
    IO.puts(
      "  target (one CPU): #{what}: #{figure}x -> #{if ok?.(figure), do: "met", else: "MISSED"}"
    )
  end

  defp median(f) do
    BenchEcho.percentile(for(_ <- 1..@reps, do: elem(:timer.tc(f), 0)), 50)
  end
end

Code.require_file("json.exs", __DIR__)
Code.require_file("echo.exs", __DIR__)
BenchCpu.main()
