defmodule Bridge.Tensor.Elements do
  @moduledoc false
  # Element values <-> bytes for Bridge.Tensor.from_list/3 and to_list/1. The
  # byte layout is NumPy's (and Nx's for the Nx types): see Bridge.Tensor.Dtype.

  alias Bridge.Error

  @simple ~r/\A([<>|])([biufcmMSUV])([0-9]+)/

  @spec encode(Bridge.Tensor.Dtype.t(), list()) :: {:ok, binary()} | {:error, Error.t()}
  def encode(dtype, list) do
    spec = spec(dtype)

    list
    |> Enum.reduce_while([], fn x, acc ->
      case put(spec, x) do
        {:ok, bin} -> {:cont, [acc | bin]}
        :error -> {:halt, {:error, bad(x, dtype)}}
      end
    end)
    |> case do
      {:error, _} = error -> error
      iodata -> {:ok, IO.iodata_to_binary(iodata)}
    end
  end

  @spec decode(Bridge.Tensor.Dtype.t(), binary()) :: list()
  def decode(dtype, data) do
    spec = spec(dtype)
    size = size(spec)
    for <<item::binary-size(size) <- data>>, do: get(spec, item)
  end

  # {kind, endianness, bytes}
  defp spec({:s, bits}), do: {:int, :little, div(bits, 8)}
  defp spec({:u, bits}), do: {:uint, :little, div(bits, 8)}
  defp spec({:f, bits}), do: {:float, :little, div(bits, 8)}
  defp spec({:c, bits}), do: {:complex, :little, div(bits, 8)}

  defp spec({:numpy, descr}) when is_binary(descr) do
    [bo, kind, n] = Regex.run(@simple, descr, capture: :all_but_first)
    n = String.to_integer(n)
    endian = if bo == ">", do: :big, else: :little

    case kind do
      "b" -> {:bool, :little, 1}
      "i" -> {:int, endian, n}
      "u" -> {:uint, endian, n}
      "f" -> {:float, endian, n}
      "c" -> {:complex, endian, n}
      k when k in ["m", "M"] -> {:int, endian, 8}
      "S" -> {:bytes, :little, n}
      "U" -> {:unicode, endian, 4 * n}
      "V" -> {:raw, :little, n}
    end
  end

  defp spec({:numpy, _record} = dtype), do: {:raw, :little, Bridge.Tensor.Dtype.itemsize(dtype)}

  defp size({_, _, n}), do: n

  defp put({:int, e, n}, x) when is_integer(x) do
    bits = 8 * n
    half = Bitwise.bsl(1, bits - 1)
    if x >= -half and x < half, do: {:ok, int(x, bits, e)}, else: :error
  end

  defp put({:uint, e, n}, x) when is_integer(x) do
    bits = 8 * n
    if x >= 0 and x < Bitwise.bsl(1, bits), do: {:ok, int(x, bits, e)}, else: :error
  end

  defp put({:float, e, n}, x), do: float(x, 8 * n, e)

  defp put({:complex, e, n}, {re, im}) do
    with {:ok, a} <- float(re, 4 * n, e), {:ok, b} <- float(im, 4 * n, e), do: {:ok, a <> b}
  end

  defp put({:bool, _, 1}, true), do: {:ok, <<1>>}
  defp put({:bool, _, 1}, false), do: {:ok, <<0>>}

  defp put({:bytes, _, n}, x) when is_binary(x) and byte_size(x) <= n,
    do: {:ok, x <> :binary.copy(<<0>>, n - byte_size(x))}

  defp put({:unicode, e, n}, x) when is_binary(x) do
    case :unicode.characters_to_binary(x, :utf8, {:utf32, e}) do
      bin when is_binary(bin) and byte_size(bin) <= n ->
        {:ok, bin <> :binary.copy(<<0>>, n - byte_size(bin))}

      _ ->
        :error
    end
  end

  defp put({:raw, _, n}, x) when is_binary(x) and byte_size(x) == n, do: {:ok, x}
  defp put(_spec, _x), do: :error

  defp int(x, bits, :little), do: <<x::little-size(bits)>>
  defp int(x, bits, :big), do: <<x::big-size(bits)>>

  defp float(:nan, bits, e), do: {:ok, special(bits, e, :nan)}
  defp float(:infinity, bits, e), do: {:ok, special(bits, e, :infinity)}
  defp float(:neg_infinity, bits, e), do: {:ok, special(bits, e, :neg_infinity)}

  defp float(x, bits, e) when is_number(x) do
    bin = if e == :big, do: <<x::float-big-size(bits)>>, else: <<x::float-little-size(bits)>>
    # a finite number too big for the width would silently become infinity
    if is_atom(read_float(bin, bits, e)), do: :error, else: {:ok, bin}
  rescue
    ArgumentError -> :error
  end

  defp float(_x, _bits, _e), do: :error

  # exponent all ones: quiet NaN or +-infinity
  defp special(bits, e, which) do
    {exp_bits, frac_bits} = %{16 => {5, 10}, 32 => {8, 23}, 64 => {11, 52}}[bits]
    sign = if which == :neg_infinity, do: 1, else: 0
    frac = if which == :nan, do: Bitwise.bsl(1, frac_bits - 1), else: 0
    exp = Bitwise.bsl(1, exp_bits) - 1
    <<value::size(bits)>> = <<sign::1, exp::size(exp_bits), frac::size(frac_bits)>>
    int(value, bits, e)
  end

  defp get({:int, :little, n}, item), do: :binary.decode_unsigned(item, :little) |> signed(8 * n)
  defp get({:int, :big, n}, item), do: :binary.decode_unsigned(item, :big) |> signed(8 * n)
  defp get({:uint, e, _}, item), do: :binary.decode_unsigned(item, e)
  defp get({:float, e, n}, item), do: read_float(item, 8 * n, e)

  defp get({:complex, e, n}, item) do
    half = div(n, 2)
    <<re::binary-size(half), im::binary-size(half)>> = item
    {read_float(re, 8 * half, e), read_float(im, 8 * half, e)}
  end

  defp get({:bool, _, _}, item), do: item != <<0>>
  defp get({:bytes, _, _}, item), do: strip_nuls(item, 1)

  defp get({:unicode, e, _}, item),
    do: :unicode.characters_to_binary(strip_nuls(item, 4), {:utf32, e}, :utf8)

  defp get({:raw, _, _}, item), do: item

  defp signed(u, bits) do
    if u >= Bitwise.bsl(1, bits - 1), do: u - Bitwise.bsl(1, bits), else: u
  end

  defp read_float(item, bits, :little) do
    case item do
      <<x::float-little-size(bits)>> -> x
      _ -> float_special(:binary.decode_unsigned(item, :little), bits)
    end
  end

  defp read_float(item, bits, :big) do
    case item do
      <<x::float-big-size(bits)>> -> x
      _ -> float_special(:binary.decode_unsigned(item, :big), bits)
    end
  end

  defp float_special(u, bits) do
    {_exp_bits, frac_bits} = %{16 => {5, 10}, 32 => {8, 23}, 64 => {11, 52}}[bits]
    frac = Bitwise.band(u, Bitwise.bsl(1, frac_bits) - 1)
    negative = Bitwise.bsr(u, bits - 1) == 1

    cond do
      frac != 0 -> :nan
      negative -> :neg_infinity
      true -> :infinity
    end
  end

  # NumPy's S and U drop trailing NULs
  defp strip_nuls(item, unit) do
    chunks = for <<c::binary-size(unit) <- item>>, do: c
    zero = :binary.copy(<<0>>, unit)

    chunks
    |> Enum.reverse()
    |> Enum.drop_while(&(&1 == zero))
    |> Enum.reverse()
    |> IO.iodata_to_binary()
  end

  defp bad(x, dtype) do
    Error.new(:bad_call, :bad_tensor,
      field: :data,
      value: x,
      limit: dtype,
      message: "bad tensor: element #{inspect(x, limit: 5)} does not fit dtype #{inspect(dtype)}"
    )
  end
end
