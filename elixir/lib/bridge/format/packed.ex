defmodule Bridge.Format.Packed do
  @moduledoc false
  # The packed form of a number list (protocol/SPEC.md §10.1): which lists are
  # number lists, the narrowest dtype of an integer list, packing into and
  # unpacking from the little-endian payload, and the slice frame (tensor
  # format, schema 0, metadata {dtype, [length]}). The dtypes are those of
  # protocol/registry.json (`Bridge.Registry.packed_dtypes/0`): every clause
  # below is generated from that list, narrowest first. Bridge.Format decides
  # when a list goes packed; this module only knows how.

  import Bitwise

  alias Bridge.Registry

  @i64_min bsl(-1, 63)
  @i64_max (1 <<< 63) - 1
  @u64_max (1 <<< 64) - 1
  @float_dtype "<f8"

  # {dtype, :i | :u | :f, bits}: "|" and "<" are little-endian (and one byte
  # has no order); a dtype this module cannot read fails the build.
  @dtypes (for dtype <- Registry.packed_dtypes() do
             case Regex.run(~r/\A[|<]([iuf])(1|2|4|8)\z/, dtype) do
               [_, kind, size] when kind != "f" or size in ["4", "8"] ->
                 {dtype, String.to_atom(kind), String.to_integer(size) * 8}

               _ ->
                 raise CompileError,
                   description:
                     "protocol/registry.json: packed dtype #{inspect(dtype)} is not one " <>
                       "Bridge.Format.Packed reads (little-endian i1-i8, u1-u8, f4, f8)"
             end
           end)

  unless List.keymember?(@dtypes, @float_dtype, 0),
    do:
      raise(CompileError, description: "protocol/registry.json: no packed dtype #{@float_dtype}")

  @sizes Map.new(@dtypes, fn {dtype, _, bits} -> {dtype, div(bits, 8)} end)

  # The frame of a packed slice: the format and schemas of handle kind :packed.
  @frame_format Registry.handle_kinds()[:packed]
  @frame_code Registry.formats()[@frame_format]
  @frame_schemas Registry.handle_kind_schemas()[:packed]

  # {dtype, lo, hi} of the integer dtypes, in registry order (narrowest first,
  # signed first at equal size).
  @int_ranges for {dtype, kind, bits} <- @dtypes,
                  kind != :f,
                  do:
                    if(kind == :i,
                      do: {dtype, -(1 <<< (bits - 1)), (1 <<< (bits - 1)) - 1},
                      else: {dtype, 0, (1 <<< bits) - 1}
                    )

  @typedoc "A number list's scan: its integers' count and range, its floats' count."
  @type scan :: {:ints, pos_integer(), integer(), integer()} | {:floats, pos_integer()}

  @doc false
  # Whether `list` is a number list (SPEC §10.1): {:ints, n, lo, hi} or
  # {:floats, n}; {:unsuitable, code, detail} for numbers that are not one
  # (integers mixed with floats, integers of no 64-bit type); :no for a list
  # of anything else, or of fewer than 2 elements.
  @spec scan(list()) :: scan() | {:unsuitable, atom(), String.t()} | :no
  def scan([h | t]) when is_integer(h), do: ints(t, h, h, 1)
  def scan([h | t]) when is_float(h), do: floats(t, 1)
  def scan(_), do: :no

  defp ints([h | t], lo, hi, n) when is_integer(h) and h < lo, do: ints(t, h, hi, n + 1)
  defp ints([h | t], lo, hi, n) when is_integer(h) and h > hi, do: ints(t, lo, h, n + 1)
  defp ints([h | t], lo, hi, n) when is_integer(h), do: ints(t, lo, hi, n + 1)
  defp ints([], _lo, _hi, n) when n < 2, do: :no

  defp ints([], lo, hi, n) do
    cond do
      lo < @i64_min ->
        {:unsuitable, :integer_range, "#{lo} is below the int64 range"}

      hi > @u64_max ->
        {:unsuitable, :integer_range, "#{hi} is beyond the uint64 range"}

      lo < 0 and hi > @i64_max ->
        {:unsuitable, :integer_range,
         "#{lo} and #{hi} fit in no one integer type (int64 nor uint64)"}

      true ->
        {:ints, n, lo, hi}
    end
  end

  defp ints([h | _], _lo, _hi, n) when is_float(h),
    do: {:unsuitable, :mixed_numbers, "element #{n} is the float #{h} in a list of integers"}

  defp ints(_, _lo, _hi, _n), do: :no

  defp floats([h | t], n) when is_float(h), do: floats(t, n + 1)
  defp floats([], n) when n >= 2, do: {:floats, n}
  defp floats([], _n), do: :no

  defp floats([h | _], n) when is_integer(h),
    do: {:unsuitable, :mixed_numbers, "element #{n} is the integer #{h} in a list of floats"}

  defp floats(_, _n), do: :no

  @doc false
  # The narrowest packed dtype holding the integers `lo..hi`, or nil.
  @spec int_dtype(integer(), integer()) :: String.t() | nil
  for {dtype, min, max} <- @int_ranges do
    def int_dtype(lo, hi) when lo >= unquote(min) and hi <= unquote(max), do: unquote(dtype)
  end

  def int_dtype(_lo, _hi), do: nil

  @doc false
  # The dtype and payload of a number list `scan/1` found.
  @spec pack(list(), scan()) :: {String.t(), binary()}
  def pack(list, {:ints, _n, lo, hi}) do
    dtype = int_dtype(lo, hi)
    {dtype, pack_ints(list, @sizes[dtype] * 8)}
  end

  def pack(list, {:floats, _n}), do: {@float_dtype, pack_floats(list, <<>>)}

  # Hand-unrolled appends: about five times faster than a binary comprehension.
  defp pack_ints(list, 8), do: pack8(list, <<>>)
  defp pack_ints(list, 16), do: pack16(list, <<>>)
  defp pack_ints(list, 32), do: pack32(list, <<>>)
  defp pack_ints(list, 64), do: pack64(list, <<>>)

  for w <- [8, 16, 32, 64] do
    name = :"pack#{w}"

    defp unquote(name)([a, b, c, d | t], acc),
      do:
        unquote(name)(
          t,
          <<acc::binary, a::little-size(unquote(w)), b::little-size(unquote(w)),
            c::little-size(unquote(w)), d::little-size(unquote(w))>>
        )

    defp unquote(name)([a | t], acc),
      do: unquote(name)(t, <<acc::binary, a::little-size(unquote(w))>>)

    defp unquote(name)([], acc), do: acc
  end

  defp pack_floats([a, b, c, d | t], acc),
    do:
      pack_floats(
        t,
        <<acc::binary, a::float-little-64, b::float-little-64, c::float-little-64,
          d::float-little-64>>
      )

  defp pack_floats([a | t], acc), do: pack_floats(t, <<acc::binary, a::float-little-64>>)
  defp pack_floats([], acc), do: acc

  @doc false
  # The list a packed payload stands for (see Bridge.Format.unpack/2).
  @spec unpack(term(), term()) :: {:ok, [number()]} | {:error, String.t()}
  def unpack(dtype, data) when is_binary(data) and is_map_key(@sizes, dtype) do
    size = @sizes[dtype]

    if rem(byte_size(data), size) == 0,
      do: items(dtype, data),
      else: {:error, "#{byte_size(data)} bytes is not a whole number of #{dtype} items"}
  end

  def unpack(dtype, data) when is_binary(data),
    do: {:error, "dtype #{inspect(dtype)} is not one of #{inspect(Map.keys(@sizes))}"}

  def unpack(_dtype, data), do: {:error, "data #{inspect(data, limit: 5)} is not a binary"}

  for {dtype, kind, bits} <- @dtypes do
    case {kind, bits} do
      {:u, 8} ->
        defp items(unquote(dtype), d), do: {:ok, :binary.bin_to_list(d)}

      {:u, _} ->
        defp items(unquote(dtype), d),
          do: {:ok, for(<<x::little-size(unquote(bits)) <- d>>, do: x)}

      {:i, _} ->
        defp items(unquote(dtype), d),
          do: {:ok, for(<<x::little-signed-size(unquote(bits)) <- d>>, do: x)}

      {:f, _} ->
        defp items(unquote(dtype), d) do
          # A comprehension skips what its pattern does not match: NaN and infinities.
          list = for <<x::float-little-size(unquote(bits)) <- d>>, do: x

          if length(list) * unquote(div(bits, 8)) == byte_size(d),
            do: {:ok, list},
            else: {:error, "a float that is not finite (NaN or an infinity)"}
        end
    end
  end

  @doc false
  # A packed slice frame: tensor format, schema 0, metadata {dtype, [length]}.
  @spec unpack_frame(Bridge.Frame.t()) :: {:ok, [number()]} | {:error, String.t()}
  def unpack_frame(%Bridge.Frame{header: h, metadata: metadata, payload: payload}) do
    with :ok <-
           expect(
             h.format == @frame_code and h.codec == 0,
             "a #{@frame_format} (#{@frame_code}) frame without codec"
           ),
         :ok <-
           expect(
             h.schema_id in @frame_schemas and h.schema_version == 0,
             "schema #{Enum.join(@frame_schemas, " or ")} version 0"
           ),
         {:ok, {dtype, [n]}} when is_integer(n) <- Bridge.Format.safe_term(metadata),
         {:ok, list} <- unpack(dtype, payload),
         :ok <- expect(length(list) == n, "#{n} elements in the payload") do
      {:ok, list}
    else
      {:ok, other} -> {:error, "metadata #{inspect(other, limit: 5)} is not {dtype, [length]}"}
      {:error, why} -> {:error, why}
    end
  end

  defp expect(true, _what), do: :ok
  defp expect(false, what), do: {:error, "expected #{what}"}
end
