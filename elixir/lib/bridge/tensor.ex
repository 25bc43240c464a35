defmodule Bridge.Tensor do
  @moduledoc """
  A dense tensor: an element type, a shape and the elements as one binary, in
  row-major (C) order, little-endian — the layout of Nx's binary backend, so
  `Nx.from_binary(t.data, t.dtype) |> Nx.reshape(t.shape)` rebuilds it and
  `%Bridge.Tensor{dtype: Nx.type(x), shape: Nx.shape(x), data: Nx.to_binary(x)}`
  makes one.

  It crosses the bridge as a read-only `numpy.ndarray` (protocol/SPEC.md §7.4,
  §8); an `ndarray` result comes back as a `%Bridge.Tensor{}` whose `data` is,
  at or above the threshold, a zero-copy binary over the worker's region.

  Element types are Nx-style tuples; `numpy_dtype/1` and `from_numpy_dtype/1`
  are the one place where they meet NumPy's dtype strings:

  | dtype | NumPy |
  |---|---|
  | `{:s, 8}` `{:s, 16}` `{:s, 32}` `{:s, 64}` | `"\\|i1"` `"<i2"` `"<i4"` `"<i8"` |
  | `{:u, 8}` `{:u, 16}` `{:u, 32}` `{:u, 64}` | `"\\|u1"` `"<u2"` `"<u4"` `"<u8"` |
  | `{:f, 16}` `{:f, 32}` `{:f, 64}` | `"<f2"` `"<f4"` `"<f8"` |
  | `{:c, 64}` `{:c, 128}` | `"<c8"` `"<c16"` |

  ## Examples

      iex> {:ok, t} = Bridge.Tensor.new(<<1::little-32, 2::little-32>>, {:s, 32}, {2})
      iex> {t.dtype, t.shape, Bridge.Tensor.size(t)}
      {{:s, 32}, {2}, 2}
  """

  alias Bridge.Error

  @enforce_keys [:dtype, :shape, :data]
  defstruct [:dtype, :shape, :data]

  @type dtype ::
          {:s, 8 | 16 | 32 | 64}
          | {:u, 8 | 16 | 32 | 64}
          | {:f, 16 | 32 | 64}
          | {:c, 64 | 128}
  @type t :: %__MODULE__{dtype: dtype(), shape: tuple(), data: binary()}

  @dtypes [
    {{:s, 8}, "|i1"},
    {{:s, 16}, "<i2"},
    {{:s, 32}, "<i4"},
    {{:s, 64}, "<i8"},
    {{:u, 8}, "|u1"},
    {{:u, 16}, "<u2"},
    {{:u, 32}, "<u4"},
    {{:u, 64}, "<u8"},
    {{:f, 16}, "<f2"},
    {{:f, 32}, "<f4"},
    {{:f, 64}, "<f8"},
    {{:c, 64}, "<c8"},
    {{:c, 128}, "<c16"}
  ]

  @doc """
  Builds a tensor, checking that `data` holds exactly the elements of `shape`.

  ## Examples

      iex> Bridge.Tensor.new(<<0::64>>, {:f, 32}, {2}) |> elem(0)
      :ok
      iex> {:error, e} = Bridge.Tensor.new(<<0::64>>, {:f, 32}, {3})
      iex> {e.kind, e.reason, e.field, e.value, e.limit}
      {:bad_call, :bad_tensor, :data, 8, 12}
      iex> {:error, e} = Bridge.Tensor.new(<<>>, {:f, 8}, {0})
      iex> {e.reason, e.field}
      {:bad_tensor, :dtype}
  """
  @spec new(binary(), dtype(), tuple()) :: {:ok, t()} | {:error, Error.t()}
  def new(data, dtype, shape) do
    tensor = %__MODULE__{data: data, dtype: dtype, shape: shape}
    with :ok <- validate(tensor), do: {:ok, tensor}
  end

  @doc """
  Like `new/3` but returns the tensor or raises `Bridge.Error`.

  ## Examples

      iex> Bridge.Tensor.new!(<<7>>, {:u, 8}, {}).shape
      {}
  """
  @spec new!(binary(), dtype(), tuple()) :: t()
  def new!(data, dtype, shape) do
    case new(data, dtype, shape) do
      {:ok, t} -> t
      {:error, e} -> raise e
    end
  end

  @doc """
  Checks a tensor struct: a known dtype, a shape of non-negative integers and
  a binary of exactly `size * element size` bytes.

  ## Examples

      iex> Bridge.Tensor.validate(%Bridge.Tensor{dtype: {:u, 8}, shape: {2, 0}, data: ""})
      :ok
      iex> {:error, e} = Bridge.Tensor.validate(%Bridge.Tensor{dtype: {:u, 8}, shape: [1], data: "a"})
      iex> e.field
      :shape
  """
  @spec validate(t()) :: :ok | {:error, Error.t()}
  def validate(%__MODULE__{dtype: dtype, shape: shape, data: data}) do
    cond do
      numpy_dtype(dtype) == nil ->
        {:error, bad(:dtype, dtype, "one of #{inspect(Enum.map(@dtypes, &elem(&1, 0)))}")}

      not valid_shape?(shape) ->
        {:error, bad(:shape, shape, "a tuple of non-negative integers")}

      not is_binary(data) ->
        {:error, bad(:data, data, "a binary")}

      byte_size(data) != byte_count(dtype, shape) ->
        {:error, bad(:data, byte_size(data), byte_count(dtype, shape))}

      true ->
        :ok
    end
  end

  def validate(other), do: {:error, bad(:tensor, other, "a %Bridge.Tensor{}")}

  @doc """
  The number of elements.

  ## Examples

      iex> Bridge.Tensor.size(Bridge.Tensor.new!(<<0::96>>, {:s, 32}, {1, 3}))
      3
  """
  @spec size(t()) :: non_neg_integer()
  def size(%__MODULE__{shape: shape}), do: shape |> Tuple.to_list() |> Enum.product()

  @doc """
  The NumPy dtype string of an element type, or `nil` for an unknown one.

  ## Examples

      iex> Bridge.Tensor.numpy_dtype({:f, 32})
      "<f4"
      iex> Bridge.Tensor.numpy_dtype({:u, 8})
      "|u1"
      iex> Bridge.Tensor.numpy_dtype({:bf, 16})
      nil
  """
  @spec numpy_dtype(term()) :: String.t() | nil
  for {dtype, str} <- @dtypes do
    def numpy_dtype(unquote(Macro.escape(dtype))), do: unquote(str)
  end

  def numpy_dtype(_), do: nil

  @doc """
  The element type of a NumPy dtype string, or `nil` for one that has no
  counterpart (big-endian, object, strings, booleans…).

  ## Examples

      iex> Bridge.Tensor.from_numpy_dtype("<c16")
      {:c, 128}
      iex> Bridge.Tensor.from_numpy_dtype(">i4")
      nil
  """
  @spec from_numpy_dtype(term()) :: dtype() | nil
  for {dtype, str} <- @dtypes do
    def from_numpy_dtype(unquote(str)), do: unquote(Macro.escape(dtype))
  end

  def from_numpy_dtype(_), do: nil

  @doc false
  # Builds a tensor from the wire form {dtype string, shape list, data}; used by
  # Bridge.Codec for inline and region results.
  @spec from_wire(term(), term(), binary()) :: {:ok, t()} | {:error, Error.t()}
  def from_wire(dtype_str, shape, data) when is_list(shape) and is_binary(data) do
    case from_numpy_dtype(dtype_str) do
      nil ->
        {:error, bad(:dtype, dtype_str, "one of #{inspect(Enum.map(@dtypes, &elem(&1, 1)))}")}

      dtype ->
        new(data, dtype, List.to_tuple(shape))
    end
  end

  def from_wire(_dtype_str, shape, _data), do: {:error, bad(:shape, shape, "a list")}

  defp valid_shape?(shape) when is_tuple(shape),
    do: shape |> Tuple.to_list() |> Enum.all?(&(is_integer(&1) and &1 >= 0))

  defp valid_shape?(_), do: false

  defp byte_count({_, bits}, shape),
    do: div(bits, 8) * (shape |> Tuple.to_list() |> Enum.product())

  defp bad(field, value, limit),
    do: Error.new(:bad_call, :bad_tensor, field: field, value: value, limit: limit)
end
