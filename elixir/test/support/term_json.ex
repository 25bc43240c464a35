defmodule Bridge.Test.TermJSON do
  @moduledoc false
  # The term JSON of protocol/SPEC.md §14, which the control and data-term golden
  # vectors use for values: {"int": n}, {"float": x}, {"atom": name}, {"bin": hex},
  # {"list": [...]}, {"tuple": [...]}, {"map": [[key, value], ...]} and
  # {"tensor": {"dtype", "shape", "order", "bin"}}. The files are read with the
  # library's strict decoder (Bridge.JSON).
  #
  # A vector's map pairs are sorted by the JSON text of their keys; normalize/1
  # sorts pairs by Erlang term order instead, so a rendering and a vector's JSON
  # compare equal exactly when they hold the same pairs.

  alias Bridge.Tensor
  alias Bridge.Tensor.Dtype

  @spec decode_file!(Path.t()) :: Bridge.JSON.value()
  def decode_file!(path), do: path |> File.read!() |> Bridge.JSON.decode!()

  @doc false
  # A value as the BEAM holds it, rendered.
  @spec render(term()) :: map()
  def render(i) when is_integer(i), do: %{"int" => i}
  def render(f) when is_float(f), do: %{"float" => f}
  def render(a) when is_atom(a), do: %{"atom" => Atom.to_string(a)}
  def render(b) when is_binary(b), do: %{"bin" => Base.encode16(b, case: :lower)}
  def render(l) when is_list(l), do: %{"list" => Enum.map(l, &render/1)}
  def render(t) when is_tuple(t), do: %{"tuple" => t |> Tuple.to_list() |> Enum.map(&render/1)}

  def render(%Tensor{dtype: dtype, shape: shape, order: order, data: data}) do
    %{
      "tensor" => %{
        "dtype" => Dtype.to_descr(dtype),
        "shape" => Tuple.to_list(shape),
        "order" => if(order == :f, do: "F", else: "C"),
        "bin" => Base.encode16(data, case: :lower)
      }
    }
  end

  def render(m) when is_map(m) and not is_struct(m),
    do: %{"map" => Enum.map(m, fn {k, v} -> [render(k), render(v)] end)}

  @doc false
  # The term a rendering stands for (not tensors); atoms are created, since the
  # vectors are trusted files.
  @spec from_json(map()) :: term()
  def from_json(%{"int" => i}) when is_integer(i), do: i
  def from_json(%{"float" => f}) when is_float(f), do: f
  def from_json(%{"atom" => name}) when is_binary(name), do: String.to_atom(name)
  def from_json(%{"bin" => hex}) when is_binary(hex), do: Base.decode16!(hex, case: :lower)
  def from_json(%{"list" => l}) when is_list(l), do: Enum.map(l, &from_json/1)

  def from_json(%{"tuple" => l}) when is_list(l),
    do: l |> Enum.map(&from_json/1) |> List.to_tuple()

  def from_json(%{"map" => pairs}) when is_list(pairs),
    do: Map.new(pairs, fn [k, v] -> {from_json(k), from_json(v)} end)

  @doc false
  # Creates the atoms a rendering names: a result from Python may only name atoms
  # that exist on the BEAM (SPEC §10), as a real caller's would.
  @spec ensure_atoms(term()) :: :ok
  def ensure_atoms(%{"atom" => name}) when is_binary(name) do
    _ = String.to_atom(name)
    :ok
  end

  def ensure_atoms(%{"tensor" => _}), do: :ok
  def ensure_atoms(%{} = json), do: json |> Map.values() |> ensure_atoms()
  def ensure_atoms(list) when is_list(list), do: Enum.each(list, &ensure_atoms/1)
  def ensure_atoms(_), do: :ok

  @doc false
  # A rendering with every map's pairs in Erlang term order.
  @spec normalize(term()) :: term()
  def normalize(%{"map" => pairs}),
    do: %{
      "map" => pairs |> Enum.map(fn [k, v] -> [normalize(k), normalize(v)] end) |> Enum.sort()
    }

  def normalize(%{"list" => l}), do: %{"list" => Enum.map(l, &normalize/1)}
  def normalize(%{"tuple" => l}), do: %{"tuple" => Enum.map(l, &normalize/1)}
  def normalize(other), do: other
end
