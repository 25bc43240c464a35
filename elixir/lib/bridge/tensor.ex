defmodule Bridge.Tensor do
  @moduledoc """
  A dense tensor: an element type, a shape and the elements as one binary, in
  row-major (C) order, little-endian — the layout of Nx's binary backend, so
  `Nx.from_binary(t.data, t.dtype) |> Nx.reshape(t.shape)` rebuilds it and
  `%Bridge.Tensor{dtype: Nx.type(x), shape: Nx.shape(x), data: Nx.to_binary(x)}`
  makes one.

  It crosses the bridge as a read-only `numpy.ndarray` (protocol/SPEC.md §9,
  §10); an `ndarray` result comes back as a `%Bridge.Tensor{}` whose `data` is,
  at or above the threshold, a zero-copy binary over the worker's slice.

  `order` is `:c` (row-major, the default and Nx's layout) or `:f` (Fortran,
  column-major: what a Fortran-ordered `ndarray` keeps when it crosses).

  Element types are Nx-style tuples; `numpy_dtype/1` and `from_numpy_dtype/1`
  are where they meet NumPy's dtype strings:

  | dtype | NumPy |
  |---|---|
  | `{:s, 8}` `{:s, 16}` `{:s, 32}` `{:s, 64}` | `"\\|i1"` `"<i2"` `"<i4"` `"<i8"` |
  | `{:u, 8}` `{:u, 16}` `{:u, 32}` `{:u, 64}` | `"\\|u1"` `"<u2"` `"<u4"` `"<u8"` |
  | `{:f, 16}` `{:f, 32}` `{:f, 64}` | `"<f2"` `"<f4"` `"<f8"` |
  | `{:c, 64}` `{:c, 128}` | `"<c8"` `"<c16"` |

  Every other fixed-size NumPy dtype (bool, big-endian, datetime64/timedelta64,
  `S`, `U`, `V`, records) is `{:numpy, descr}` holding NumPy's raw bytes, so it
  round-trips without loss (`Bridge.Tensor.Dtype`). `{:bf, 16}` is refused:
  NumPy has no bfloat16. Named tensors travel as `Bridge.Tensor.Bundle`, sparse
  arrays as `Bridge.Tensor.COO`; protocol/formats/tensor.md is the wire format.

  ## Examples

      iex> {:ok, t} = Bridge.Tensor.new(<<1::little-32, 2::little-32>>, {:s, 32}, {2})
      iex> {t.dtype, t.shape, Bridge.Tensor.size(t)}
      {{:s, 32}, {2}, 2}
  """

  alias Bridge.Error
  alias Bridge.Tensor.Dtype

  @enforce_keys [:dtype, :shape, :data]
  defstruct [:dtype, :shape, :data, order: :c]

  @type dtype ::
          {:s, 8 | 16 | 32 | 64}
          | {:u, 8 | 16 | 32 | 64}
          | {:f, 16 | 32 | 64}
          | {:c, 64 | 128}
          | {:numpy, Dtype.descr()}
  @type order :: :c | :f
  @type t :: %__MODULE__{dtype: dtype(), shape: tuple(), data: binary(), order: order()}

  # The Nx dtypes and their NumPy spellings: one table, in Bridge.Tensor.Dtype.
  @dtypes Dtype.nx_table()

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
  @spec new(binary(), dtype(), tuple(), keyword()) :: {:ok, t()} | {:error, Error.t()}
  def new(data, dtype, shape, opts \\ []) do
    with {:ok, dtype} <- Dtype.normalize(dtype) do
      tensor = %__MODULE__{data: data, dtype: dtype, shape: shape, order: opts[:order] || :c}
      # an array contiguous both ways (one dimension longer than 1, or empty) is :c,
      # as NumPy records it
      with :ok <- validate(tensor), do: {:ok, %{tensor | order: Bridge.Tensor.Wire.order(tensor)}}
    end
  end

  @doc """
  Like `new/3` but returns the tensor or raises `Bridge.Error`.

  ## Examples

      iex> Bridge.Tensor.new!(<<7>>, {:u, 8}, {}).shape
      {}
  """
  @spec new!(binary(), dtype(), tuple(), keyword()) :: t()
  def new!(data, dtype, shape, opts \\ []) do
    case new(data, dtype, shape, opts) do
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
  def validate(%__MODULE__{dtype: dtype, shape: shape, data: data, order: order}) do
    cond do
      match?({:error, _}, Dtype.normalize(dtype)) ->
        Dtype.normalize(dtype)

      Dtype.normalize(dtype) != {:ok, dtype} ->
        {:error, bad(:dtype, dtype, "the canonical form #{inspect(Dtype.normalize(dtype))}")}

      order not in [:c, :f] ->
        {:error, bad(:order, order, ":c or :f")}

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
  @spec numpy_dtype(term()) :: Dtype.descr() | nil
  for {dtype, str} <- @dtypes do
    def numpy_dtype(unquote(Macro.escape(dtype))), do: unquote(str)
  end

  def numpy_dtype({:numpy, _} = dtype) do
    case Dtype.normalize(dtype) do
      {:ok, canonical} -> Dtype.to_descr(canonical)
      {:error, _} -> nil
    end
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

  @doc """
  Builds a C-order tensor from a flat list of elements in row-major order.

  Elements by dtype: integers for `{:s, _}`, `{:u, _}` and integer NumPy types
  (also datetime64/timedelta64, as counts of their unit); floats (or `:nan`,
  `:infinity`, `:neg_infinity`) for floats; `{re, im}` for complex; booleans
  for `{:numpy, "|b1"}`; binaries of at most n bytes for `"|Sn"` (NUL-padded);
  UTF-8 strings for `"<Un"`/`">Un"`; the raw item bytes for `"|Vn"` and records.
  A value that does not fit the dtype is an error, never truncated.

  ## Examples

      iex> t = Bridge.Tensor.from_list!([1.5, -2.0], {:f, 32}, {2})
      iex> t.data == <<1.5::float-32-little, -2.0::float-32-little>>
      true
      iex> {:error, e} = Bridge.Tensor.from_list([256], {:u, 8}, {1})
      iex> {e.reason, e.field, e.value}
      {:bad_tensor, :data, 256}
  """
  @spec from_list(list(), dtype(), tuple()) :: {:ok, t()} | {:error, Error.t()}
  def from_list(list, dtype, shape) when is_list(list) do
    with {:ok, dtype} <- Dtype.normalize(dtype),
         true <-
           valid_shape?(shape) || {:error, bad(:shape, shape, "a tuple of non-negative integers")},
         n = shape |> Tuple.to_list() |> Enum.product(),
         true <- length(list) == n || {:error, bad(:data, length(list), n)},
         {:ok, data} <- Bridge.Tensor.Elements.encode(dtype, list) do
      new(data, dtype, shape)
    end
  end

  def from_list(list, _dtype, _shape), do: {:error, bad(:data, list, "a list")}

  @doc """
  Like `from_list/3` but returns the tensor or raises `Bridge.Error`.
  """
  @spec from_list!(list(), dtype(), tuple()) :: t()
  def from_list!(list, dtype, shape) do
    case from_list(list, dtype, shape) do
      {:ok, t} -> t
      {:error, e} -> raise e
    end
  end

  @doc """
  The elements as a flat list in row-major order (whatever the tensor's
  `order`), with the element values of `from_list/3`.

  ## Examples

      iex> t = Bridge.Tensor.new!(<<1, 2, 3, 4, 5, 6>>, {:u, 8}, {2, 3}, order: :f)
      iex> Bridge.Tensor.to_list(t)
      [1, 3, 5, 2, 4, 6]
      iex> Bridge.Tensor.to_list(Bridge.Tensor.new!(<<1, 0>>, {:numpy, "|b1"}, {2}))
      [true, false]
  """
  @spec to_list(t()) :: list()
  def to_list(%__MODULE__{dtype: dtype, shape: shape, data: data, order: order}) do
    elements = Bridge.Tensor.Elements.decode(dtype, data)

    case {order, tuple_size(shape)} do
      {:f, n} when n > 1 -> permute(List.to_tuple(elements), row_major_offsets(shape, :f))
      _ -> elements
    end
  end

  @doc """
  The same tensor with its data laid out in `order` (`:c` is Nx's layout): the
  tensor itself when it already is, else a copy.

  ## Examples

      iex> t = Bridge.Tensor.new!(<<1, 2, 3, 4, 5, 6>>, {:u, 8}, {2, 3}, order: :f)
      iex> Bridge.Tensor.to_order(t, :c).data
      <<1, 3, 5, 2, 4, 6>>
      iex> Bridge.Tensor.to_order(Bridge.Tensor.to_order(t, :c), :f) == t
      true
  """
  @spec to_order(t(), order()) :: t()
  def to_order(%__MODULE__{order: order} = t, order), do: t

  def to_order(%__MODULE__{shape: shape} = t, order) when order in [:c, :f] do
    if tuple_size(shape) < 2 do
      %{t | order: order}
    else
      size = Dtype.itemsize(t.dtype)
      items = List.to_tuple(for <<item::binary-size(size) <- t.data>>, do: item)

      offsets =
        case order do
          # row-major enumeration over Fortran storage
          :c -> row_major_offsets(shape, :f)
          # column-major enumeration over C storage
          :f -> column_major_offsets(shape)
        end

      %{t | order: order, data: IO.iodata_to_binary(permute(items, offsets))}
    end
  end

  defp permute(items, offsets), do: Enum.map(offsets, &elem(items, &1))

  # Storage offsets of the elements in row-major order, for `storage` layout.
  defp row_major_offsets(shape, :f) do
    dims = Tuple.to_list(shape)
    strides = dims |> Enum.scan(1, &(&1 * &2)) |> then(&[1 | Enum.drop(&1, -1)])
    offsets(dims, strides, 0)
  end

  # Storage offsets (C layout) of the elements in column-major order.
  defp column_major_offsets(shape) do
    dims = Tuple.to_list(shape)
    c_strides = dims |> Enum.reverse() |> Enum.scan(1, &(&1 * &2)) |> Enum.reverse()
    c_strides = Enum.drop(c_strides, 1) ++ [1]
    offsets(Enum.reverse(dims), Enum.reverse(c_strides), 0)
  end

  defp offsets([], [], base), do: [base]

  defp offsets([d | ds], [s | ss], base),
    do: Enum.flat_map(0..(d - 1)//1, fn i -> offsets(ds, ss, base + i * s) end)

  @doc false
  # Builds a tensor from the wire form {dtype string, shape list, data}.
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

  defp valid_shape?(shape) when is_tuple(shape), do: Dtype.valid_dims?(Tuple.to_list(shape))

  defp valid_shape?(_), do: false

  defp byte_count(dtype, shape),
    do: Dtype.itemsize(dtype) * (shape |> Tuple.to_list() |> Enum.product())

  defp bad(field, value, limit),
    do: Error.new(:bad_call, :bad_tensor, field: field, value: value, limit: limit)
end
