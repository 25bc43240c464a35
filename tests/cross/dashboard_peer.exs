# The BEAM's half of tests/cross/test_dashboard.py (MIX_ENV=test mix run
# tests/cross/dashboard_peer.exs): a pool with a dashboard on a free port,
# calls of several sizes and formats (one slowed down 10x to raise an alert),
# a stream, results held, memory sampled; then prints the dashboard's address
# and serves it until its standard input closes.
{:ok, _} =
  Bridge.start_link(
    name: DashboardPeer,
    python: Path.expand(".venv/bin/python"),
    python_path: [Path.expand("elixir/test/handlers")],
    pool_size: 1,
    threshold: 4096,
    dashboard: [port: 0]
  )

call = fn f, args -> {:ok, _} = Bridge.call({:bbt_handlers, f}, args, pool: DashboardPeer) end
alias Bridge.Metrics.Monitor

call.(:sleep, [0, :ok])
Monitor.sample_now()

for size <- [100, 2_000, 20_000, 300_000, 2_000_000],
    _ <- 1..6,
    do: call.(:identity, [:binary.copy("d", size)])

for _ <- 1..3 do
  for _ <- 1..25, do: call.(:sleep, [0.002, :ok])
  Monitor.sample_now()
end

for _ <- 1..25, do: call.(:sleep, [0.02, :ok])
held = for i <- 1..70, do: elem(call.(:make_bytes, [8192, i]), 1)
[_ | _] = Enum.to_list(Bridge.stream({:bbt_streams, :count}, [50], pool: DashboardPeer))
Monitor.sample_now()

IO.puts("DASHBOARD #{Bridge.Dashboard.url(DashboardPeer)}")
IO.read(:stdio, :eof)
length(held)
