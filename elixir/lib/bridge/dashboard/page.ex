defmodule Bridge.Dashboard.Page do
  @moduledoc false
  # The dashboard's page: page.html, beside this file, read at compile time.
  # It draws /data.json into SVG charts with its own script (no library, no
  # network) and reloads it every five seconds.

  @path Path.join(__DIR__, "page.html")
  @external_resource @path
  @html File.read!(@path)

  @doc false
  @spec html() :: String.t()
  def html, do: @html
end
