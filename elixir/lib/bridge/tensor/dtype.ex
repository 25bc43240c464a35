defmodule Bridge.Tensor.Dtype do
  @moduledoc """
  Element types of `Bridge.Tensor` and their NumPy descriptors
  (protocol/formats/tensor.md, "dtype grammar").

  Two shapes of dtype:

    * Nx-style tuples for the types Nx has, with Nx's binary layout
      (native = little-endian): `{:s, 8..64}`, `{:u, 8..64}`, `{:f, 16 | 32 | 64}`,
      `{:c, 64 | 128}`.
    * `{:numpy, descr}` for every other fixed-size NumPy dtype, carried as raw
      bytes exactly as NumPy lays them out: `{:numpy, "|b1"}` (bool),
      `{:numpy, ">f4"}` (big-endian), `{:numpy, "<M8[ns]"}` (datetime64),
      `{:numpy, "<m8[10ms]"}`, `{:numpy, "|S5"}`, `{:numpy, "<U3"}`,
      `{:numpy, "|V8"}`, and records:
      `{:numpy, {"struct", itemsize, [{name, descr, offset}, ...]}}` where a
      field's descr may be `{"subarray", descr, [dims]}` and a field may carry a
      fourth element, its title.

  `{:numpy, descr}` of a type Nx has is normalised to the Nx tuple
  (`{:numpy, "<f4"}` is `{:f, 32}`). `{:bf, 16}` is refused: NumPy has no
  bfloat16, and sending it as anything else would change the values.

  ## Examples

      iex> Bridge.Tensor.Dtype.normalize({:numpy, "<f4"})
      {:ok, {:f, 32}}
      iex> Bridge.Tensor.Dtype.itemsize({:numpy, "<U3"})
      12
      iex> {:error, e} = Bridge.Tensor.Dtype.normalize({:bf, 16})
      iex> e.message =~ "bfloat16"
      true
  """

  alias Bridge.Error

  @nx [
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

  @simple ~r/\A([<>|])([biufcmMSUV])([1-9][0-9]{0,9})(?:\[([1-9][0-9]{0,9})?(Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])?\z/
  @sizes %{
    "b" => [1],
    "i" => [1, 2, 4, 8],
    "u" => [1, 2, 4, 8],
    "f" => [2, 4, 8],
    "c" => [8, 16],
    "m" => [8],
    "M" => [8]
  }
  @max_depth 8
  @max_fields 4096
  @max_name 1024
  @max_itemsize 2_147_483_647
  @max_ndim 32

  @type nx ::
          {:s, 8 | 16 | 32 | 64} | {:u, 8 | 16 | 32 | 64} | {:f, 16 | 32 | 64} | {:c, 64 | 128}
  @type descr :: String.t() | tuple()
  @type t :: nx() | {:numpy, descr()}

  @doc false
  def nx_table, do: @nx

  @doc """
  The canonical form of a dtype, or an error naming what is wrong.

  ## Examples

      iex> Bridge.Tensor.Dtype.normalize({:numpy, ">i4"})
      {:ok, {:numpy, ">i4"}}
      iex> {:error, e} = Bridge.Tensor.Dtype.normalize({:numpy, "|O"})
      iex> {e.reason, e.field}
      {:bad_tensor, :dtype}
  """
  @spec normalize(term()) :: {:ok, t()} | {:error, Error.t()}
  for {nx, _} <- @nx do
    def normalize(unquote(Macro.escape(nx)) = d), do: {:ok, d}
  end

  def normalize({:bf, 16} = d),
    do:
      {:error,
       bad(
         d,
         "NumPy has no bfloat16: convert first (Nx.as_type(t, :f32)) or send the raw bits " <>
           "as {:u, 16} and view them as bfloat16 in Python (e.g. with ml_dtypes)"
       )}

  def normalize({:numpy, descr} = d) do
    case check(descr, 0) do
      {:ok, _size} -> {:ok, from_descr!(descr)}
      {:error, why} -> {:error, bad(d, why)}
    end
  end

  def normalize(d),
    do:
      {:error,
       bad(
         d,
         "not a tensor dtype: one of #{inspect(Enum.map(@nx, &elem(&1, 0)))} or " <>
           "{:numpy, descr} (see Bridge.Tensor.Dtype)"
       )}

  @doc """
  The NumPy descriptor (dtype string or record term) of a canonical dtype.

  ## Examples

      iex> Bridge.Tensor.Dtype.to_descr({:u, 16})
      "<u2"
      iex> Bridge.Tensor.Dtype.to_descr({:numpy, "|b1"})
      "|b1"
  """
  @spec to_descr(t()) :: descr()
  for {nx, str} <- @nx do
    def to_descr(unquote(Macro.escape(nx))), do: unquote(str)
  end

  def to_descr({:numpy, descr}), do: descr

  @doc """
  The dtype of a descriptor received from the peer (Nx tuple when Nx has the
  type), or an error.

  ## Examples

      iex> Bridge.Tensor.Dtype.from_descr("<c16")
      {:ok, {:c, 128}}
      iex> Bridge.Tensor.Dtype.from_descr("<M8[ns]")
      {:ok, {:numpy, "<M8[ns]"}}
  """
  @spec from_descr(term()) :: {:ok, t()} | {:error, Error.t()}
  def from_descr(descr) do
    case check(descr, 0) do
      {:ok, _} -> {:ok, from_descr!(descr)}
      {:error, why} -> {:error, bad(descr, why)}
    end
  end

  for {nx, str} <- @nx do
    defp from_descr!(unquote(str)), do: unquote(Macro.escape(nx))
  end

  defp from_descr!(descr), do: {:numpy, descr}

  @doc """
  Bytes per element of a canonical dtype.

  ## Examples

      iex> Bridge.Tensor.Dtype.itemsize({:c, 64})
      8
      iex> Bridge.Tensor.Dtype.itemsize({:numpy, {"struct", 12, [{"a", "<f8", 0}, {"b", "<i4", 8}]}})
      12
  """
  @spec itemsize(t()) :: pos_integer()
  def itemsize({:numpy, descr}) do
    {:ok, size} = check(descr, 0)
    size
  end

  def itemsize({_, bits}), do: div(bits, 8)

  @doc false
  # True for the dtypes the original 4-tuple `$bb_tensor` form had (the Nx types).
  def nx?({:numpy, _}), do: false
  def nx?(_), do: true

  # {:ok, itemsize} | {:error, why}
  defp check(descr, depth) when is_binary(descr) do
    case Regex.run(@simple, descr, capture: :all_but_first) do
      [bo, kind, size | unit] ->
        size = String.to_integer(size)
        simple(bo, kind, size, unit)

      nil ->
        {:error, "#{inspect(descr)} is not a NumPy dtype string of the grammar"}
    end
    |> depth_ok(depth)
  end

  defp check({"struct", itemsize, fields}, depth)
       when is_integer(itemsize) and itemsize >= 1 and itemsize <= @max_itemsize and
              is_list(fields) and fields != [] and length(fields) <= @max_fields and
              depth < @max_depth do
    fields
    |> Enum.reduce_while({:ok, MapSet.new()}, fn field, {:ok, seen} ->
      case check_field(field, itemsize, depth + 1) do
        {:ok, name} ->
          if MapSet.member?(seen, name),
            do: {:halt, {:error, "field #{inspect(name)} appears twice"}},
            else: {:cont, {:ok, MapSet.put(seen, name)}}

        error ->
          {:halt, error}
      end
    end)
    |> case do
      {:ok, _} -> {:ok, itemsize}
      error -> error
    end
  end

  defp check(descr, _depth),
    do:
      {:error,
       "#{inspect(descr, limit: 8)} is not a dtype string or {\"struct\", itemsize, fields} " <>
         "(nested at most #{@max_depth} levels)"}

  defp depth_ok(result, _depth), do: result

  defp check_field(field, itemsize, depth) do
    {name, fdescr, offset, title} =
      case field do
        {n, d, o} -> {n, d, o, nil}
        {n, d, o, t} -> {n, d, o, t}
        _ -> {nil, nil, nil, nil}
      end

    with true <- name_ok?(name) || {:error, "field name #{inspect(name)} is not a UTF-8 name"},
         true <- title == nil or name_ok?(title) || {:error, "field title is not a UTF-8 name"},
         {:ok, size} <- check_field_type(fdescr, depth),
         true <-
           (is_integer(offset) and offset >= 0 and offset + size <= itemsize) ||
             {:error,
              "field #{inspect(name)} at #{inspect(offset)} does not fit #{itemsize} bytes"} do
      {:ok, name}
    end
  end

  defp check_field_type({"subarray", base, dims}, depth) when is_list(dims) do
    with true <- valid_dims?(dims) || {:error, "subarray shape #{inspect(dims)}"},
         true <- not match?({"subarray", _, _}, base) || {:error, "a subarray of a subarray"},
         {:ok, size} <- check(base, depth) do
      total = size * Enum.product(dims)
      if total <= @max_itemsize, do: {:ok, total}, else: {:error, "subarray too large"}
    end
  end

  defp check_field_type(descr, depth), do: check(descr, depth)

  defp name_ok?(name),
    do: is_binary(name) and byte_size(name) in 1..@max_name and String.valid?(name)

  @doc false
  def valid_dims?(dims),
    do:
      is_list(dims) and length(dims) <= @max_ndim and
        Enum.all?(dims, &(is_integer(&1) and &1 >= 0))

  defp simple(bo, kind, size, unit) do
    unit_ok =
      case unit do
        [] -> true
        [mult, _unit] -> kind in ["m", "M"] and mult != "1"
      end

    size_ok =
      case Map.fetch(@sizes, kind) do
        {:ok, sizes} -> size in sizes
        :error -> size * if(kind == "U", do: 4, else: 1) <= @max_itemsize
      end

    bytes = if kind == "U", do: 4 * size, else: size
    # NumPy's canonical byte-order character: '|' where order is irrelevant
    bo_ok = if kind in ["b", "S", "V"] or bytes == 1, do: bo == "|", else: bo in ["<", ">"]

    if unit_ok and size_ok and bo_ok,
      do: {:ok, bytes},
      else: {:error, "#{bo}#{kind}#{size} is not a fixed-size dtype NumPy spells this way"}
  end

  defp bad(dtype, why) do
    Error.new(:bad_call, :bad_tensor,
      field: :dtype,
      value: dtype,
      limit: "a dtype of Bridge.Tensor.Dtype",
      message: "bad tensor: dtype #{inspect(dtype, limit: 8)}: #{why}"
    )
  end
end
