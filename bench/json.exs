# Shared by bench/run.exs and bench/formats.exs.
defmodule Bench.JSON do
  @moduledoc false
  # Just enough JSON for the results file (no hex packages here, so no Jason).
  def encode(map) when is_map(map) do
    inner =
      map
      |> Enum.sort()
      |> Enum.map_join(", ", fn {k, v} -> encode(to_string(k)) <> ": " <> encode(v) end)

    "{" <> inner <> "}"
  end

  def encode(list) when is_list(list), do: "[" <> Enum.map_join(list, ", ", &encode/1) <> "]"
  def encode(nil), do: "null"
  def encode(b) when is_boolean(b), do: to_string(b)
  def encode(n) when is_integer(n), do: Integer.to_string(n)
  def encode(f) when is_float(f), do: :erlang.float_to_binary(f, [:short])
  def encode(s) when is_binary(s), do: inspect(s)
end
