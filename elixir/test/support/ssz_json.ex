defmodule Bridge.Test.SSZJSON do
  @moduledoc false
  # Typed schemas described in JSON (protocol/vectorgen/ssz.py): field types and
  # values as the Elixir side holds them, and schema modules compiled from a
  # description (for schemas the Python side drew at random).

  # The JSON of a field type.
  def type_json({:list, t, max: n}), do: %{"list" => [type_json(t), n]}
  def type_json({:vector, t, n}), do: %{"vector" => [type_json(t), n]}
  def type_json({:optional, t}), do: %{"optional" => type_json(t)}
  def type_json({:union, ts}), do: %{"union" => Enum.map(ts, &(&1 && type_json(&1)))}
  def type_json(t) when t in [:bytes, :string], do: Atom.to_string(t)

  def type_json(t) do
    if Code.ensure_loaded?(t) and function_exported?(t, :__schema__, 1),
      do: %{"schema" => t.__schema__(:name)},
      else: Atom.to_string(t)
  end

  # A value in JSON as the type's Elixir value.
  def value(:bytes, %{"hex" => hex}), do: Base.decode16!(hex, case: :lower)

  def value(module, j) when is_atom(module) and is_map(j) do
    fields = for {n, t} <- module.__schema__(:fields), do: {n, value(t, j[Atom.to_string(n)])}
    struct(module, fields)
  end

  def value({tag, t, _}, j) when tag in [:list, :vector], do: Enum.map(j, &value(t, &1))
  def value({:optional, _t}, nil), do: nil
  def value({:optional, t}, j), do: value(t, j)
  def value({:union, ts}, [i, v]), do: {i, v && value(Enum.at(ts, i), v)}
  def value(t, j) when t in [:float32, :float64], do: j / 1
  def value(_t, j), do: j

  # Compiles a module for each schema of `schemas` (name => %{"version", "fields"}),
  # nested ones first; returns name => module. Modules are named `prefix` + the
  # schema's last segment.
  def define(schemas, prefix) do
    Enum.reduce(Map.keys(schemas), %{}, &define(&1, schemas, prefix, &2))
  end

  defp define(name, schemas, prefix, made) do
    if Map.has_key?(made, name) do
      made
    else
      spec = Map.fetch!(schemas, name)
      nested = for [_f, t] <- spec["fields"], n <- schema_names(t), do: n
      made = Enum.reduce(nested, made, &define(&1, schemas, prefix, &2))
      module = Module.concat(prefix, name |> String.split(".") |> List.last())

      fields =
        Enum.map_join(spec["fields"], "\n", fn [f, t] ->
          "  field :#{f}, #{type_source(t, made)}"
        end)

      Code.compile_string("""
      defmodule #{inspect(module)} do
        use Bridge.Schema, name: #{inspect(name)}, version: #{inspect(spec["version"])}
      #{fields}
      end
      """)

      Map.put(made, name, module)
    end
  end

  defp schema_names(%{"schema" => n}), do: [n]
  defp schema_names(%{"list" => [t, _]}), do: schema_names(t)
  defp schema_names(%{"vector" => [t, _]}), do: schema_names(t)
  defp schema_names(%{"optional" => t}), do: schema_names(t)
  defp schema_names(%{"union" => ts}), do: Enum.flat_map(ts, &((&1 && schema_names(&1)) || []))
  defp schema_names(_t), do: []

  defp type_source(%{"schema" => n}, made), do: inspect(Map.fetch!(made, n))
  defp type_source(%{"list" => [t, n]}, made), do: "{:list, #{type_source(t, made)}, max: #{n}}"
  defp type_source(%{"vector" => [t, n]}, made), do: "{:vector, #{type_source(t, made)}, #{n}}"
  defp type_source(%{"optional" => t}, made), do: "{:optional, #{type_source(t, made)}}"

  defp type_source(%{"union" => ts}, made),
    do: "{:union, [#{Enum.map_join(ts, ", ", &((&1 && type_source(&1, made)) || "nil"))}]}"

  defp type_source(t, _made) when is_binary(t), do: ":" <> t
end
