defmodule Bridge.Arrow.Tensors do
  @moduledoc false
  # A numeric column, or a (nested) fixed-size list column of numbers, as one
  # Bridge.Tensor of shape {rows, size, ...}: for Bridge.Table.to_tensor/2.
  # The data of a one-chunk column is a sub-binary of the column's buffer (of
  # the slice it was decoded from); several chunks are concatenated.

  alias Bridge.Arrow.{Array, Errors, Type}
  alias Bridge.Tensor

  @doc false
  @spec to_tensor([Array.t()], Type.t(), String.t()) ::
          {:ok, Tensor.t()} | {:error, Bridge.Error.t()}
  def to_tensor(chunks, type, name) do
    Errors.catching(fn ->
      {dtype, dims} = shape_of(type, name)
      rows = chunks |> Enum.map(& &1.length) |> Enum.sum()
      per_row = Enum.product(dims) * Type.byte_width(dtype)

      data =
        case Enum.map(chunks, &values(&1, per_row, name)) do
          [one] -> one
          many -> IO.iodata_to_binary(many)
        end

      {:ok, %Tensor{dtype: dtype, shape: List.to_tuple([rows | dims]), data: data}}
    end)
  end

  defp shape_of({s, _} = t, _name) when s in [:s, :u, :f], do: {t, []}

  defp shape_of({:fixed_size_list, %{type: child}, size}, name) do
    {dtype, dims} = shape_of(child, name)
    {dtype, [size | dims]}
  end

  defp shape_of(type, name) do
    Errors.fail_value(:not_a_tensor,
      field: :type,
      value: Type.describe(type),
      at: "column #{inspect(name)}",
      hint:
        "only integer and float columns, and fixed-size lists of them, are tensors; read it with column/3"
    )
  end

  # The bytes of the first `rows` rows of an array, `per_row` bytes each; none
  # of those rows may be null (a child longer than its parent may have nulls
  # past what the parent uses).
  defp values(%Array{length: n} = a, per_row, name), do: values(a, n, per_row, name)

  defp values(a, rows, per_row, name) do
    if nulls_in?(a, rows), do: nulls!(a, name)

    case a do
      %Array{type: {:fixed_size_list, _, size}, children: [child]} ->
        child
        |> values(rows * size, div(per_row, max(size, 1)), name)
        |> binary_part(0, rows * per_row)

      %Array{data: data} ->
        binary_part(data, 0, rows * per_row)
    end
  end

  defp nulls_in?(%Array{null_count: 0}, _rows), do: false
  defp nulls_in?(%Array{validity: nil}, _rows), do: false
  defp nulls_in?(%Array{validity: v}, rows), do: false in Array.bits(v, rows)

  defp nulls!(%Array{null_count: nulls}, name) do
    Errors.fail_value(:has_nulls,
      field: :null_count,
      value: nulls,
      at: "column #{inspect(name)}",
      hint: "a tensor has no nulls: fill them first, or read the column with column/3"
    )
  end
end
