defmodule Bridge.DashboardTest do
  # Bridge.Dashboard: started by the pool option, on a free port of 127.0.0.1,
  # serving the page, /metrics and /data.json over real HTTP; refused options,
  # a taken port, and the stop with the pool. (tests/cross/test_dashboard.py
  # parses /metrics with Prometheus' parser and renders the page in chromium.)
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  @moduletag timeout: 120_000

  # A plain HTTP/1.1 request (Connection: close) over a socket to the address in `url` (:httpc
  # would start the VM's resolver program, which outlives the test).
  defp get(url, method \\ "GET", host_header \\ nil) do
    %URI{host: host, port: port, path: path, query: query} = URI.parse(url)
    {:ok, ip} = :inet.parse_address(String.to_charlist(host))
    target = if query, do: "#{path}?#{query}", else: path

    case :gen_tcp.connect(ip, port, [:binary, active: false], 5_000) do
      {:ok, socket} ->
        :ok =
          :gen_tcp.send(
            socket,
            "#{method} #{target} HTTP/1.1\r\nHost: #{host_header || host}\r\nContent-Length: 0\r\n" <>
              "Connection: close\r\n\r\n"
          )

        response = recv_all(socket, "")
        :gen_tcp.close(socket)
        [head, body] = String.split(response, "\r\n\r\n", parts: 2)
        [status_line | headers] = String.split(head, "\r\n")
        [_, status | _] = String.split(status_line, " ")

        type =
          Enum.find_value(headers, "", fn h ->
            case String.split(h, ":", parts: 2) do
              [k, v] -> if String.downcase(k) == "content-type", do: String.trim(v)
              _ -> nil
            end
          end)

        {String.to_integer(status), type, body}

      {:error, reason} ->
        {:error, reason}
    end
  end

  defp recv_all(socket, acc) do
    case :gen_tcp.recv(socket, 0, 10_000) do
      {:ok, data} -> recv_all(socket, acc <> data)
      {:error, :closed} -> acc
    end
  end

  test "port 0 picks a free port on 127.0.0.1; the page, /metrics and /data.json are served" do
    start_supervised!({Bridge, bridge_opts(Dash, pool_size: 1, dashboard: [port: 0])})
    url = Bridge.Dashboard.url(Dash)
    assert url =~ ~r{^http://127\.0\.0\.1:\d+/$}
    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Dash)

    {200, "text/html" <> _, html} = get(url)
    assert html =~ ~s(<svg id="latency") and html =~ ~s(<svg id="memory") and html =~ "data.json"

    {200, "text/plain; version=0.0.4" <> _, text} = get(url <> "metrics")
    assert text =~ ~s(beambridge_calls_total{pool="Dash",function="bbt_handlers.add"} 1\n)

    {200, "application/json", json} = get(url <> "data.json?x=1")
    data = Bridge.JSON.decode!(json)

    assert [%{"function" => "bbt_handlers.add", "pool" => "Dash", "calls" => 1}] =
             Enum.filter(data["functions"], &(&1["pool"] == "Dash"))

    assert [_ | _] = data["memory"]
    assert is_map(List.last(data["memory"])["pools"]["Dash"])

    {404, _, missing} = get(url <> "nope")
    assert missing =~ "try /, /metrics, /data.json"
    assert {405, _, _} = get(url <> "metrics", "POST")
    assert {200, "text/plain" <> _, ""} = get(url <> "metrics", "HEAD")

    # a page of another site, through a name it points at 127.0.0.1, is refused
    assert {421, _, _} = get(url <> "data.json", "GET", "evil.example:80")
    assert {200, _, _} = get(url <> "data.json", "GET", "localhost")

    # bound to the loopback address only: another address of this machine is refused
    port = url |> URI.parse() |> Map.fetch!(:port)

    with {:ok, addrs} <- :inet.getifaddrs(),
         [ip | _] <-
           for({_, opts} <- addrs, {:addr, {a, _, _, _} = ip} <- opts, a != 127, do: ip) do
      assert {:error, _} = :gen_tcp.connect(ip, port, [], 2_000)
    end

    # it stops with the pool
    stop_supervised!(Dash)
    assert Bridge.Dashboard.url(Dash) == nil
    assert {:error, _} = get(url)
  end

  test "a dashboard killed is restarted on its port by the pool" do
    {:ok, listen} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(listen)
    :gen_tcp.close(listen)

    sup =
      start_supervised!({Bridge, bridge_opts(DashKill, pool_size: 1, dashboard: [port: port])})

    url = Bridge.Dashboard.url(DashKill)
    assert url == "http://127.0.0.1:#{port}/"

    [dashboard] = for {Bridge.Dashboard, pid, _, _} <- Supervisor.which_children(sup), do: pid
    ref = Process.monitor(dashboard)
    Process.exit(dashboard, :kill)
    assert_receive {:DOWN, ^ref, :process, _, :killed}

    wait = fn wait, n ->
      case List.keyfind(Supervisor.which_children(sup), Bridge.Dashboard, 0) do
        {_, pid, _, _} when is_pid(pid) and pid != dashboard -> pid
        _ when n > 0 -> Process.sleep(20) && wait.(wait, n - 1)
      end
    end

    wait.(wait, 100)
    assert Bridge.Dashboard.url(DashKill) == url
    assert {200, _, _} = get(url <> "metrics")
  end

  test "bad dashboard options are refused with what is expected; a taken port is a clear error" do
    for bad <- [[port: -1], [port: 70_000], [bogus: 1], [bind: "not an address"], :yes] do
      assert {:error, %Bridge.Error{kind: :bad_call, reason: :bad_option, field: :dashboard} = e} =
               Bridge.Config.new(dashboard: bad)

      assert Exception.message(e) =~ "[port: 0..65535, bind: an IP address string]"
    end

    {:ok, listen} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, taken} = :inet.port(listen)

    Process.flag(:trap_exit, true)

    ExUnit.CaptureLog.capture_log(fn ->
      assert {:error, reason} =
               Bridge.start_link(bridge_opts(DashTaken, pool_size: 1, dashboard: [port: taken]))

      assert inspect(reason) =~ "choose another port"
      assert inspect(reason) =~ "dashboard_unavailable"
    end)

    :gen_tcp.close(listen)
  end
end
