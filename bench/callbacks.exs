# Callbacks into Elixir (issue 16's bench row, protocol/SPEC.md §8.8). A step of
# `make bench` (bench/run.exs loads this file); alone:
#   MIX_ENV=test mix run bench/callbacks.exs [--quick]
#
# Rows, each against a plain call measured interleaved with it (call by call, so both
# see the same machine):
#   * a small call whose handler makes one callback (Python -> Elixir -> Python: add
#     two integers) vs the same small call without it: p50 of each, the callback's
#     own cost (the difference) and the ratio;
#   * 1,000 callbacks in one call: the cost of one callback without a call around it;
#   * a call whose handler sends its 64 MiB argument to Elixir in a callback and gets
#     it back, vs the same call without the callback (a 64 MiB echo, its result a view
#     of the argument): the difference is the callback's own 64 MiB each way, through
#     shared memory both ways, reported as time and GB/s moved.
defmodule BenchCallbacks do
  @mib 1_048_576

  # The functions the bench's handlers call back.
  def add(a, b), do: a + b
  # the bytes Python sent, back (a view of the worker's memory here; written into
  # the bridge's arena to go back), as the echo call returns its argument
  def same_size(data), do: data

  @doc false
  def allowed, do: [{__MODULE__, :add, 2}, {__MODULE__, :same_size, 1}]

  def main(argv) do
    quick? = "--quick" in argv

    {:ok, sup} =
      Bridge.start_link(
        name: BenchCallbacksBridge,
        python: Path.expand(".venv/bin/python"),
        python_path: [Path.expand("bench/handlers")],
        pool_size: 1,
        timeout: 120_000,
        callbacks: allowed()
      )

    try do
      print(run(BenchCallbacksBridge, quick?))
    after
      Supervisor.stop(sup)
    end
  end

  def run(pool, quick?) do
    n = if quick?, do: 500, else: 4_000
    call = fn f, args -> Bridge.call({:bench_handlers, f}, args, pool: pool) end

    plain = fn -> {:ok, 3} = call.(:add, [1, 2]) end
    with_callback = fn -> {:ok, 3} = call.(:callback_add, [1, 2]) end

    Enum.each(1..200, fn _ ->
      plain.()
      with_callback.()
    end)

    small = interleaved(n, plain: plain, callback: with_callback)

    loops = if quick?, do: 3, else: 9
    per_call = 1_000

    loop_us =
      for _ <- 1..loops do
        {us, {:ok, _}} = :timer.tc(fn -> call.(:callback_loop, [per_call]) end)
        us / per_call
      end

    size = if quick?, do: 16 * @mib, else: 64 * @mib
    data = :binary.copy(<<7>>, size)

    echo = fn ->
      {:ok, back} = call.(:echo, [data])
      ^size = byte_size(back)
    end

    big = fn -> {:ok, ^size} = call.(:callback_bytes, [data]) end
    echo.()
    big.()
    large = interleaved(if(quick?, do: 5, else: 15), echo: echo, callback: big)

    %{
      "small_plain_p50_us" => small.plain,
      "small_callback_p50_us" => small.callback,
      "callback_round_trip_us" => Float.round(small.callback - small.plain, 1),
      "small_ratio" => Float.round(small.callback / small.plain, 2),
      "loop_callback_p50_us" => Float.round(BenchEcho.percentile(loop_us, 50), 1),
      "large_bytes" => size,
      "large_echo_p50_ms" => Float.round(large.echo / 1000, 1),
      "large_callback_p50_ms" => Float.round(large.callback / 1000, 1),
      "large_ratio" => Float.round(large.callback / large.echo, 2),
      # the callback's own two transfers of `size` bytes
      "large_callback_gb_per_s" =>
        Float.round(2 * size / max(large.callback - large.echo, 1) / 1000, 2)
    }
  end

  # p50 (µs) of each fun, run in turns: one of each per round.
  defp interleaved(n, funs) do
    samples =
      for _ <- 1..n, {key, fun} <- funs do
        t = System.monotonic_time(:nanosecond)
        fun.()
        {key, (System.monotonic_time(:nanosecond) - t) / 1000}
      end

    Map.new(funs, fn {key, _} ->
      {key, Float.round(BenchEcho.percentile(for({^key, us} <- samples, do: us), 50) / 1, 1)}
    end)
  end

  def print(r) do
    IO.puts("\nCallbacks into Elixir (each against a plain call, interleaved)")

    IO.puts(
      "  small call p50: #{r["small_plain_p50_us"]} µs plain, #{r["small_callback_p50_us"]} µs " <>
        "with one callback (#{r["small_ratio"]}x): a callback round trip adds " <>
        "#{r["callback_round_trip_us"]} µs"
    )

    IO.puts("  1,000 callbacks in one call: #{r["loop_callback_p50_us"]} µs each (p50 of runs)")

    IO.puts(
      "  #{div(r["large_bytes"], @mib)} MiB: echo call #{r["large_echo_p50_ms"]} ms, the same call " <>
        "sending it to Elixir and back in a callback #{r["large_callback_p50_ms"]} ms " <>
        "(#{r["large_ratio"]}x): the callback moves #{r["large_callback_gb_per_s"]} GB/s"
    )
  end
end

unless Process.get(:bench_callbacks_as_lib) do
  Code.require_file("echo.exs", __DIR__)
  BenchCallbacks.main(System.argv())
end
