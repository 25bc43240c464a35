defmodule Bridge.Dashboard do
  @moduledoc """
  A web page of the node's bridge metrics, and a Prometheus endpoint, served
  by OTP's own `:inets` HTTP server. Off by default; the pool option
  `dashboard: [port: p]` starts it with the pool (`port: 0` picks a free
  port) and it stops with the pool. It listens on 127.0.0.1 unless told
  otherwise (`bind: "0.0.0.0"`, say): the page names your functions and shows
  your errors.

    * `/` — the dashboard: latency by size and format, memory over time,
      calls per function, streams, recommendations and alerts;
    * `/metrics` — `Bridge.Metrics.Prometheus.render/1` of
      `Bridge.Metrics.snapshot/0`, as Prometheus text format 0.0.4;
    * `/data.json` — what the page draws (`Bridge.Dashboard.Data`).

  ## Examples

      {:ok, _} = Bridge.start_link(name: MyBridge, dashboard: [port: 0])
      Bridge.Dashboard.url(MyBridge)   #=> "http://127.0.0.1:41231/"
  """

  use GenServer

  require Logger

  @doc false
  def child_spec(config),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [config]}, shutdown: 5_000}

  @doc false
  def start_link(config), do: GenServer.start_link(__MODULE__, config)

  @doc """
  The address of the dashboard of `pool` (`"http://host:port/"`), or nil when
  it has none.
  """
  @spec url(atom()) :: String.t() | nil
  def url(pool \\ Bridge), do: :persistent_term.get({__MODULE__, pool}, nil)

  @impl true
  def init(config) do
    Process.flag(:trap_exit, true)
    opts = config.dashboard
    bind = Keyword.get(opts, :bind, "127.0.0.1")
    {:ok, address} = :inet.parse_address(String.to_charlist(bind))
    # httpd wants a server root; nothing is read from it (Handler answers all)
    root =
      Path.join(
        System.tmp_dir!(),
        "beambridge-dashboard-#{System.pid()}-#{System.unique_integer([:positive])}"
      )

    :ok = File.mkdir_p(root)

    with {:ok, _} <- Application.ensure_all_started(:inets),
         :ok <- stop_left(config.name),
         {:ok, pid} <-
           :inets.start(:httpd,
             port: Keyword.get(opts, :port, 0),
             bind_address: address,
             server_name: ~c"beambridge",
             server_root: String.to_charlist(root),
             document_root: String.to_charlist(root),
             modules: [Bridge.Dashboard.Handler],
             ipfamily: if(tuple_size(address) == 8, do: :inet6, else: :inet)
           ) do
      [port: port] = :httpd.info(pid, [:port])
      host = if tuple_size(address) == 8, do: "[#{bind}]", else: bind
      url = "http://#{host}:#{port}/"
      :persistent_term.put({__MODULE__, config.name}, url)
      :persistent_term.put({__MODULE__, config.name, :httpd}, pid)
      Logger.info("beambridge dashboard of #{inspect(config.name)}: #{url}")
      {:ok, %{pid: pid, pool: config.name, root: root}}
    else
      {:error, reason} ->
        File.rm_rf(root)

        {:stop,
         Bridge.Error.new(:start_failed, :dashboard_unavailable,
           field: :dashboard,
           value: opts,
           message:
             "start failed: the dashboard could not listen on #{bind}:" <>
               "#{Keyword.get(opts, :port, 0)}: #{inspect(reason)}; choose another port " <>
               "(port: 0 picks a free one)"
         )}
    end
  end

  # The server a dashboard of this pool left running when it was killed (no
  # terminate/2 ran): stopped, so that its port is free again.
  defp stop_left(pool) do
    case :persistent_term.get({__MODULE__, pool, :httpd}, nil) do
      nil -> :ok
      pid -> _ = :inets.stop(:httpd, pid)
    end

    :ok
  end

  @impl true
  def terminate(_reason, state) do
    :persistent_term.erase({__MODULE__, state.pool})
    :persistent_term.erase({__MODULE__, state.pool, :httpd})
    :inets.stop(:httpd, state.pid)
    File.rm_rf(state.root)
    :ok
  end
end
