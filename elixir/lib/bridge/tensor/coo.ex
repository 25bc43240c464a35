defmodule Bridge.Tensor.COO do
  @moduledoc """
  A sparse array in coordinate format: `indices`, an integer tensor of shape
  `{ndim, nnz}`; `values`, a tensor of shape `{nnz}`; and the dense `shape`.
  It crosses the bridge as one frame (protocol/formats/tensor.md, schema 3) or
  inline, and arrives in Python as a `beambridge.formats.tensor.COO` (whose
  `todense()` builds the array). Both parts keep their dtypes.

  ## Examples

      iex> idx = Bridge.Tensor.from_list!([0, 1, 2, 0], {:s, 64}, {2, 2})
      iex> vals = Bridge.Tensor.from_list!([5.0, 7.0], {:f, 64}, {2})
      iex> {:ok, coo} = Bridge.Tensor.COO.new(idx, vals, {2, 3})
      iex> coo.shape
      {2, 3}
      iex> {:error, e} = Bridge.Tensor.COO.new(idx, vals, {2})
      iex> e.field
      :shape
  """

  alias Bridge.{Error, Tensor}

  @enforce_keys [:indices, :values, :shape]
  defstruct [:indices, :values, :shape]

  @type t :: %__MODULE__{indices: Tensor.t(), values: Tensor.t(), shape: tuple()}

  @doc """
  Builds a sparse array, checking that the parts agree (shapes and an integer
  index dtype; index bounds are checked by the Python reader).
  """
  @spec new(Tensor.t(), Tensor.t(), tuple()) :: {:ok, t()} | {:error, Error.t()}
  def new(indices, values, shape) do
    coo = %__MODULE__{indices: indices, values: values, shape: shape}
    with :ok <- validate(coo), do: {:ok, coo}
  end

  @doc """
  Like `new/3` but raises `Bridge.Error`.
  """
  @spec new!(Tensor.t(), Tensor.t(), tuple()) :: t()
  def new!(indices, values, shape) do
    case new(indices, values, shape) do
      {:ok, c} -> c
      {:error, e} -> raise e
    end
  end

  @doc """
  Checks the parts of a sparse array.
  """
  @spec validate(t()) :: :ok | {:error, Error.t()}
  def validate(%__MODULE__{indices: %Tensor{} = i, values: %Tensor{} = v, shape: shape}) do
    with :ok <- Tensor.validate(i),
         :ok <- Tensor.validate(v) do
      cond do
        not integer_dtype?(i.dtype) ->
          {:error, bad(:indices, i.dtype, "an integer dtype")}

        not (is_tuple(shape) and Bridge.Tensor.Dtype.valid_dims?(Tuple.to_list(shape))) ->
          {:error, bad(:shape, shape, "a tuple of non-negative integers")}

        tuple_size(i.shape) != 2 or elem(i.shape, 0) != tuple_size(shape) ->
          {:error, bad(:shape, shape, "one dimension per row of indices #{inspect(i.shape)}")}

        v.shape != {elem(i.shape, 1)} ->
          {:error, bad(:values, v.shape, {elem(i.shape, 1)})}

        true ->
          :ok
      end
    end
  end

  def validate(other),
    do: {:error, bad(:indices, other, "a %Bridge.Tensor.COO{} of two %Bridge.Tensor{}")}

  defp integer_dtype?({kind, _}) when kind in [:s, :u], do: true
  defp integer_dtype?({:numpy, <<_, k, _::binary>>}) when k in [?i, ?u], do: true
  defp integer_dtype?(_), do: false

  defp bad(field, value, limit),
    do: Error.new(:bad_call, :bad_tensor, field: field, value: value, limit: limit)
end
