defmodule Bridge.Dashboard.Handler do
  @moduledoc false
  # The :httpd module (its `do/1` callback) of Bridge.Dashboard: GET /, /data.json
  # and /metrics; 404 for anything else, 405 for other methods. On a loopback
  # address a request must name a loopback host (Host:), so that a web page of
  # another site cannot read the dashboard through a name it points at
  # 127.0.0.1 (DNS rebinding): 421 otherwise.

  require Record

  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  # `do` is a keyword in Elixir: the callback is defined by its atom.
  @doc false
  def unquote(:do)(request) do
    method = mod(request, :method)
    path = request |> mod(:request_uri) |> to_string() |> String.split("?") |> hd()

    {status, type, body} =
      if host_ok?(request),
        do: respond(method, path),
        else: {421, "text/plain; charset=utf-8", "this dashboard answers to 127.0.0.1 only\n"}

    body = if method == ~c"HEAD", do: "", else: body

    head = [
      code: status,
      content_type: String.to_charlist(type),
      content_length: Integer.to_charlist(byte_size(body)),
      cache_control: ~c"no-store"
    ]

    {:proceed, [{:response, {:response, head, [body]}}]}
  rescue
    e ->
      text = "dashboard error: " <> Exception.message(e)
      {:proceed, [{:response, {500, String.to_charlist(text)}}]}
  end

  defp host_ok?(request) do
    loopback? =
      case :inet.sockname(mod(request, :socket)) do
        {:ok, {{127, _, _, _}, _}} -> true
        {:ok, {{0, 0, 0, 0, 0, 0, 0, 1}, _}} -> true
        _ -> false
      end

    host =
      request
      |> mod(:parsed_header)
      |> List.keyfind(~c"host", 0)
      |> case do
        {_, value} -> value |> to_string() |> String.downcase()
        nil -> ""
      end

    not loopback? or Regex.match?(~r/\A(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?\z/, host)
  end

  defp respond(m, path) when m in [~c"GET", ~c"HEAD"] do
    case path do
      "/" ->
        {200, "text/html; charset=utf-8", Bridge.Dashboard.Page.html()}

      "/data.json" ->
        {200, "application/json", Bridge.JSON.encode(Bridge.Dashboard.Data.all())}

      "/metrics" ->
        {200, "text/plain; version=0.0.4; charset=utf-8", prometheus()}

      _ ->
        {404, "text/plain; charset=utf-8", "not found: #{path} (try /, /metrics, /data.json)\n"}
    end
  end

  defp respond(_method, _path), do: {405, "text/plain; charset=utf-8", "only GET\n"}

  defp prometheus, do: Bridge.Metrics.Prometheus.render(Bridge.Metrics.snapshot())
end
