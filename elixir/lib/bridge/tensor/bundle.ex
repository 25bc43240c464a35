defmodule Bridge.Tensor.Bundle do
  @moduledoc """
  Named tensors — a map of name (a UTF-8 binary) to `Bridge.Tensor`, like a
  model's state dict — that cross the bridge together: in one slice with one
  header and a descriptor per tensor, every tensor 64-byte aligned
  (protocol/formats/tensor.md, schema 2), or inline below the threshold.

  On the Python side it is a `beambridge.formats.tensor.Bundle`, a `dict`
  subclass of `str` name -> read-only `ndarray`; a handler returns one
  (`Bundle(state_dict)`) to send a `%Bridge.Tensor.Bundle{}` back. Tensors of a
  bundle read from a slice are sub-binaries of that slice (zero-copy).

  A plain map of tensors is not a bundle: it travels as a map (`bytes` keys in
  Python), each tensor on its own.

  ## Examples

      iex> w = Bridge.Tensor.from_list!([1.0, 2.0], {:f, 32}, {2})
      iex> {:ok, b} = Bridge.Tensor.Bundle.new(%{"w" => w})
      iex> Map.keys(b.tensors)
      ["w"]
      iex> {:error, e} = Bridge.Tensor.Bundle.new(%{w: w})
      iex> e.field
      :name
  """

  alias Bridge.{Error, Tensor}

  @enforce_keys [:tensors]
  defstruct [:tensors]

  @type t :: %__MODULE__{tensors: %{String.t() => Tensor.t()}}

  @max_name 1024
  @max_tensors 65_536

  @doc """
  Builds a bundle, checking every name and tensor.
  """
  @spec new(map()) :: {:ok, t()} | {:error, Error.t()}
  def new(tensors) when is_map(tensors) do
    bundle = %__MODULE__{tensors: tensors}
    with :ok <- validate(bundle), do: {:ok, bundle}
  end

  def new(other), do: {:error, bad(:tensors, other, "a map of name => %Bridge.Tensor{}")}

  @doc """
  Like `new/1` but raises `Bridge.Error`.
  """
  @spec new!(map()) :: t()
  def new!(tensors) do
    case new(tensors) do
      {:ok, b} -> b
      {:error, e} -> raise e
    end
  end

  @doc """
  Checks names (non-empty UTF-8 binaries of at most 1024 bytes) and tensors.
  """
  @spec validate(t()) :: :ok | {:error, Error.t()}
  def validate(%__MODULE__{tensors: tensors}) when is_map(tensors) do
    if map_size(tensors) > @max_tensors do
      {:error, bad(:tensors, map_size(tensors), @max_tensors)}
    else
      Enum.reduce_while(tensors, :ok, fn {name, t}, :ok ->
        cond do
          not (is_binary(name) and byte_size(name) in 1..@max_name and String.valid?(name)) ->
            {:halt, {:error, bad(:name, name, "a UTF-8 binary of 1 to #{@max_name} bytes")}}

          not is_struct(t, Tensor) ->
            {:halt, {:error, bad(:tensors, t, "a %Bridge.Tensor{}")}}

          true ->
            case Tensor.validate(t) do
              :ok -> {:cont, :ok}
              error -> {:halt, error}
            end
        end
      end)
    end
  end

  def validate(other), do: {:error, bad(:tensors, other, "a %Bridge.Tensor.Bundle{}")}

  defp bad(field, value, limit),
    do: Error.new(:bad_call, :bad_tensor, field: field, value: value, limit: limit)
end
