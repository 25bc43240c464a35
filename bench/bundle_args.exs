# A 256 MiB tensor bundle (4 x 64 MiB float32) sent from Elixir to Python:
#   MIX_ENV=test mix run bench/bundle_args.exs
# Prints the median of 7 Bridge.call round trips (the handler returns len(bundle)).
# Used to measure writing a bundle's tensors into the region part by part (iodata)
# against joining them into one binary first; run it on both trees to compare.
Logger.configure(level: :info)

{:ok, _} =
  Bridge.start_link(
    name: BundleBench,
    python: Path.expand(".venv/bin/python"),
    python_path: [Path.expand("bench/handlers")],
    pool_size: 1,
    timeout: 60_000
  )

n = 16 * 1024 * 1024

tensor = fn i ->
  %Bridge.Tensor{
    dtype: {:f, 32},
    shape: {n},
    order: :c,
    data: :binary.copy(<<i::float-32-little>>, n)
  }
end

bundle = Bridge.Tensor.Bundle.new!(Map.new(1..4, &{"t#{&1}", tensor.(&1)}))
call = fn -> Bridge.call({:bench_handlers, :size_of}, [bundle], pool: BundleBench) end
{:ok, 4} = call.()

times =
  for _ <- 1..7 do
    {us, {:ok, 4}} = :timer.tc(call)
    us
  end

IO.puts("256 MiB bundle Elixir -> Python: median #{div(Enum.at(Enum.sort(times), 3), 1000)} ms")
