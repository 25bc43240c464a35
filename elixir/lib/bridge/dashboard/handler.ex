defmodule Bridge.Dashboard.Handler do
  @moduledoc false
  # The :httpd module (its `do/1` callback) of Bridge.Dashboard: GET /, /data.json
  # and /metrics; 404 for anything else, 405 for other methods.

  require Record

  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  # `do` is a keyword in Elixir: the callback is defined by its atom.
  @doc false
  def unquote(:do)(request) do
    method = mod(request, :method)
    path = request |> mod(:request_uri) |> to_string() |> String.split("?") |> hd()
    {status, type, body} = respond(method, path)

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
