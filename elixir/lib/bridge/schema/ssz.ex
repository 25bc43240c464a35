defmodule Bridge.Schema.SSZ do
  @moduledoc false
  # The SSZ bytes of field types (protocol/formats/ssz.md), for what a schema
  # module's generated code does not do itself: variable-size and composite fields.
  # Types: :uint8..:uint64, :int8..:int64, :float32, :float64, :boolean, :bytes,
  # :string, {:list, t, max: n}, {:vector, t, n}, {:optional, t}, {:union, [t]},
  # and schema modules. Errors are thrown as {:ssz, Bridge.Error} and caught by
  # Bridge.Schema.

  import Bitwise, only: [band: 2, bsr: 2]

  alias Bridge.Error

  @uints %{uint8: 8, uint16: 16, uint32: 32, uint64: 64}
  @ints %{int8: 8, int16: 16, int32: 32, int64: 64}
  @floats %{float32: 32, float64: 64}
  @float32_max 3.4028234663852886e38

  @doc false
  # Bytes of a fixed-size type, or nil.
  @spec fixed_size(term()) :: non_neg_integer() | nil
  for {t, bits} <- Map.merge(@uints, @ints) |> Map.merge(@floats),
      do: def(fixed_size(unquote(t)), do: unquote(div(bits, 8)))

  def fixed_size(:boolean), do: 1
  def fixed_size({:vector, t, n}), do: (s = fixed_size(t)) && s * n
  def fixed_size(m) when is_atom(m) and m not in [:bytes, :string], do: m.__schema__(:fixed_size)
  def fixed_size(_t), do: nil

  @doc false
  # The type checked (raises ArgumentError naming what is wrong with it).
  @spec check_type!(term()) :: term()
  def check_type!(t) when is_map_key(@uints, t) or is_map_key(@ints, t), do: t
  def check_type!(t) when is_map_key(@floats, t) or t in [:boolean, :bytes, :string], do: t

  def check_type!({:list, t, opts}) when is_list(opts) do
    case Keyword.fetch(opts, :max) do
      {:ok, n} when is_integer(n) and n >= 0 -> {:list, check_type!(t), max: n}
      _ -> raise ArgumentError, "{:list, t, max: n}: n is a non-negative integer"
    end
  end

  def check_type!({:vector, t, n}) when is_integer(n) and n > 0, do: {:vector, check_type!(t), n}

  def check_type!({:optional, t}) do
    t = check_type!(t)
    if union?(t), do: raise(ArgumentError, "{:optional, t}: SSZ does not nest unions")
    {:optional, t}
  end

  def check_type!({:union, [_ | _] = ts}) when length(ts) <= 128 do
    ts =
      Enum.map(ts, fn
        nil -> nil
        t -> check_type!(t)
      end)

    cond do
      nil in tl(ts) -> raise ArgumentError, "{:union, ts}: only the first option may be nil"
      Enum.any?(ts, &union?/1) -> raise ArgumentError, "{:union, ts}: SSZ does not nest unions"
      true -> {:union, ts}
    end
  end

  def check_type!(m) when is_atom(m) do
    Code.ensure_compiled!(m)

    if function_exported?(m, :__schema__, 1),
      do: m,
      else: raise(ArgumentError, "#{inspect(m)} is no field type (use Bridge.Schema in it)")
  end

  def check_type!(t), do: raise(ArgumentError, "#{inspect(t)} is no field type")

  # Valid UTF-8 (no surrogates), checked by the VM's C code: three times
  # String.valid?/1's speed.
  defp utf8?(bin), do: is_binary(:unicode.characters_to_binary(bin))

  defp union?(t), do: match?({:optional, _}, t) or match?({:union, _}, t)

  ## Writing

  @doc false
  # The checked value of a number or boolean (for a struct field).
  @spec check(atom(), term(), String.t()) :: term()
  def check(t, v, path) when is_map_key(@uints, t) do
    max = Bitwise.bsl(1, @uints[t]) - 1

    if is_integer(v) and v >= 0 and v <= max,
      do: v,
      else: bad_value(path, v, "#{t} (0 to #{max})")
  end

  def check(t, v, path) when is_map_key(@ints, t) do
    half = Bitwise.bsl(1, @ints[t] - 1)

    if is_integer(v) and v >= -half and v < half,
      do: v,
      else: bad_value(path, v, "#{t} (#{-half} to #{half - 1})")
  end

  def check(:float32, v, _path) when is_number(v) and abs(v) <= @float32_max, do: v / 1
  def check(:float64, v, _path) when is_float(v), do: v
  def check(:float64, v, _path) when is_integer(v) and abs(v) < 9_007_199_254_740_992, do: v / 1
  def check(t, v, path) when is_map_key(@floats, t), do: bad_value(path, v, "a finite #{t}")
  def check(:boolean, v, _path) when is_boolean(v), do: v
  def check(:boolean, v, path), do: bad_value(path, v, "a boolean")

  @doc false
  # The bytes of `v` of type `t`, as iodata.
  @spec encode(term(), term(), String.t()) :: iodata()
  def encode(t, v, path) when is_map_key(@uints, t),
    do: <<check(t, v, path)::little-unsigned-size(@uints[t])>>

  def encode(t, v, path) when is_map_key(@ints, t),
    do: <<check(t, v, path)::little-signed-size(@ints[t])>>

  def encode(t, v, path) when is_map_key(@floats, t),
    do: <<check(t, v, path)::little-float-size(@floats[t])>>

  def encode(:boolean, v, path), do: if(check(:boolean, v, path), do: <<1>>, else: <<0>>)
  def encode(:bytes, v, _path) when is_binary(v), do: v
  def encode(:bytes, v, path), do: bad_value(path, v, "a binary")

  def encode(:string, v, path) when is_binary(v) do
    if utf8?(v), do: v, else: bad_value(path, v, "a UTF-8 string")
  end

  def encode(:string, v, path), do: bad_value(path, v, "a string")

  def encode({:list, t, max: n} = type, v, path) when is_list(v) do
    if length(v) > n do
      throw(
        {:ssz,
         error(
           :bad_value,
           render(path),
           "#{render(path)} has #{length(v)} elements, expected #{show(type)} (at most #{n})"
         )}
      )
    end

    sequence(t, v, path)
  end

  def encode({:vector, t, n}, v, path) when is_list(v) and length(v) == n,
    do: sequence(t, v, path)

  def encode({tag, _, _} = type, v, path) when tag in [:list, :vector],
    do: bad_value(path, v, show(type))

  def encode({:optional, _t}, nil, _path), do: <<0>>
  def encode({:optional, t}, v, path), do: [<<1>>, encode(t, v, path)]

  def encode({:union, ts}, {i, v}, path) when is_integer(i) and i >= 0 and i < length(ts) do
    case Enum.at(ts, i) do
      nil when v == nil -> <<0>>
      nil -> bad_value(path, v, "nil (option 0 of the union)")
      t -> [<<i>>, encode(t, v, path)]
    end
  end

  def encode({:union, _} = type, v, path),
    do: bad_value(path, v, "#{show(type)} as {index, value}")

  def encode(module, v, path) when is_atom(module), do: module.__bb_encode__(v, path)

  # Numbers: packed in one pass when every one fits (else each is checked, so the
  # first that does not is named). One function per number type, made here.
  # {type, bits, binary segment spec, guard that `x` fits}: the guard is the one the
  # generated container code uses (Bridge.Schema.Codegen.fits/2).
  @number_segments ((for {t, bits} <- @uints do
                       {t, bits, quote(do: little - unsigned - size(unquote(bits)))}
                     end) ++
                      (for {t, bits} <- @ints do
                         {t, bits, quote(do: little - signed - size(unquote(bits)))}
                       end) ++
                      [
                        {:float32, 32, quote(do: little - float - size(32))},
                        {:float64, 64, quote(do: little - float - size(64))}
                      ])
                   |> Enum.map(fn {t, bits, spec} ->
                     {t, bits, spec, Bridge.Schema.Codegen.fits(t, quote(do: var!(x)))}
                   end)

  for {t, bits, spec, fits} <- @number_segments do
    defp sequence(unquote(t), items, path) do
      if fit?(unquote(t), items),
        do: :erlang.list_to_binary(bytes(unquote(t), items)),
        else: each(unquote(t), items, path)
    end

    defp fit?(unquote(t), [var!(x) | rest]) when unquote(fits), do: fit?(unquote(t), rest)
    defp fit?(unquote(t), []), do: true
    defp fit?(unquote(t), _items), do: false

    # the items' bytes as a list for list_to_binary/1 (an integer's bytes one by one,
    # a float as a binary): several times faster than appending to a binary
    cond do
      t == :uint8 ->
        defp bytes(:uint8, items), do: items

      t in [:float32, :float64] ->
        defp bytes(unquote(t), [x | rest]), do: [<<x::unquote(spec)>> | bytes(unquote(t), rest)]
        defp bytes(unquote(t), []), do: []

      true ->
        x = Macro.var(:x, __MODULE__)

        each_byte =
          for k <- 0..(div(bits, 8) - 1),
              do: quote(do: band(bsr(unquote(x), unquote(8 * k)), 255))

        defp bytes(unquote(t), [unquote(x) | rest]),
          do: [unquote_splicing(each_byte) | bytes(unquote(t), rest)]

        defp bytes(unquote(t), []), do: []
    end
  end

  defp sequence(t, items, path), do: each(t, items, path)

  defp each(t, items, path) do
    parts = items |> Enum.with_index() |> Enum.map(fn {x, i} -> encode(t, x, {path, i}) end)

    if fixed_size(t) do
      parts
    else
      offsets(parts, 4 * length(parts))
    end
  end

  @doc false
  # Variable-size parts after their offsets, the first at `start`.
  @spec offsets([iodata()], non_neg_integer()) :: iodata()
  def offsets(parts, start) do
    {heads, _} =
      Enum.map_reduce(parts, start, fn part, at ->
        {<<at::little-32>>, at + IO.iodata_length(part)}
      end)

    [heads | parts]
  end

  ## Reading

  @doc false
  # The value of type `t` that `bin` holds.
  @spec decode(term(), binary(), String.t()) :: term()
  def decode(t, bin, path) when is_map_key(@uints, t) do
    size = @uints[t]

    case bin do
      <<v::little-unsigned-size(size)>> -> v
      _ -> bad_ssz(path, "#{byte_size(bin)} bytes for a #{t}")
    end
  end

  def decode(t, bin, path) when is_map_key(@ints, t) do
    size = @ints[t]

    case bin do
      <<v::little-signed-size(size)>> -> v
      _ -> bad_ssz(path, "#{byte_size(bin)} bytes for a #{t}")
    end
  end

  def decode(t, bin, path) when is_map_key(@floats, t) do
    size = @floats[t]

    case bin do
      <<v::little-float-size(size)>> -> v
      _ -> bad_ssz(path, "not a finite #{t} (#{byte_size(bin)} bytes)")
    end
  end

  def decode(:boolean, <<0>>, _path), do: false
  def decode(:boolean, <<1>>, _path), do: true
  def decode(:boolean, bin, path), do: bad_ssz(path, "a boolean byte of #{inspect(bin)}")
  def decode(:bytes, bin, _path), do: bin

  def decode(:string, bin, path) do
    if utf8?(bin), do: bin, else: bad_ssz(path, "not UTF-8")
  end

  def decode({:list, t, max: n}, bin, path) do
    items = items(t, bin, path)
    if length(items) > n, do: bad_ssz(path, "#{length(items)} elements, over the maximum of #{n}")
    items
  end

  def decode({:vector, t, n}, bin, path) do
    items = items(t, bin, path)
    if length(items) != n, do: bad_ssz(path, "#{length(items)} elements for a vector of #{n}")
    items
  end

  def decode({:optional, _t}, <<0>>, _path), do: nil
  def decode({:optional, t}, <<1, rest::binary>>, path), do: decode(t, rest, path)

  def decode({:union, ts}, <<i, rest::binary>>, path) when i < length(ts) do
    case Enum.at(ts, i) do
      nil when rest == "" -> {0, nil}
      nil -> bad_ssz(path, "bytes after the nil option")
      t -> {i, decode(t, rest, path)}
    end
  end

  def decode({tag, _}, bin, path) when tag in [:optional, :union],
    do:
      bad_ssz(path, "a union selector of #{inspect(binary_part(bin, 0, min(1, byte_size(bin))))}")

  def decode(module, bin, path) when is_atom(module), do: module.__bb_decode__(bin, path)

  defp items(t, bin, path) do
    case fixed_size(t) do
      nil ->
        variable_items(t, bin, path)

      0 ->
        bad_ssz(path, "elements of no size")

      size when rem(byte_size(bin), size) != 0 ->
        bad_ssz(path, "#{byte_size(bin)} bytes are no whole number of #{show(t)}")

      size ->
        numbers(t, bin) || each_item(t, bin, size, path)
    end
  end

  # A sequence of numbers or booleans in one comprehension, or nil (other element
  # types, a float that is NaN or infinite, a boolean byte over 1: then each is read
  # on its own, and the first bad one named).
  for {t, bits, spec, _fits} <- @number_segments do
    if t in [:float32, :float64] do
      defp numbers(unquote(t), bin) do
        # a NaN or an infinity matches no float segment: the comprehension skips it
        list = for <<x::unquote(spec) <- bin>>, do: x
        if length(list) * unquote(div(bits, 8)) == byte_size(bin), do: list
      end
    else
      defp numbers(unquote(t), bin), do: for(<<x::unquote(spec) <- bin>>, do: x)
    end
  end

  defp numbers(:boolean, bin) do
    list = for <<x <- bin>>, x <= 1, do: x == 1
    if length(list) == byte_size(bin), do: list
  end

  defp numbers(_t, _bin), do: nil

  defp each_item(t, bin, size, path) do
    for <<x::binary-size(size) <- bin>>, reduce: {[], 0} do
      {acc, i} -> {[decode(t, x, {path, i}) | acc], i + 1}
    end
    |> elem(0)
    |> Enum.reverse()
  end

  defp variable_items(_t, "", _path), do: []

  defp variable_items(t, <<first::little-32, _::binary>> = bin, path)
       when rem(first, 4) == 0 and first > 0 and first <= byte_size(bin) do
    n = div(first, 4)
    offsets = for <<o::little-32 <- binary_part(bin, 0, first)>>, do: o
    ends = tl(offsets) ++ [byte_size(bin)]

    Enum.zip([offsets, ends, 0..(n - 1)])
    |> Enum.map(fn {lo, hi, i} ->
      if lo <= hi and hi <= byte_size(bin),
        do: decode(t, binary_part(bin, lo, hi - lo), {path, i}),
        else: bad_ssz(path, "offsets #{lo} and #{hi} out of order")
    end)
  end

  defp variable_items(_t, bin, path),
    do: bad_ssz(path, "a first offset that is no offset in #{byte_size(bin)} bytes")

  ## Errors

  @doc false
  @spec bad_value(path(), term(), String.t()) :: no_return()
  def bad_value(path, value, expected) do
    at = render(path)
    shown = inspect(value, limit: 8, printable_limit: 80)
    throw({:ssz, error(:bad_value, at, "#{at} is #{shown}, expected #{expected}")})
  end

  @doc false
  @spec bad_ssz(path(), String.t()) :: no_return()
  def bad_ssz(path, what) do
    at = render(path)
    throw({:ssz, error(:bad_ssz, at, "#{at}: #{what}")})
  end

  defp error(reason, path, text),
    do: Error.new(:bad_call, reason, field: :schema, value: path, message: "#{reason}: #{text}")

  @typedoc """
  Where a value is: `"Point"`, or, made only when an error names it, a field or an
  element of a path: `{path, ".x"}`, `{path, 3}`.
  """
  @type path() :: String.t() | {path(), String.t() | non_neg_integer()}

  @doc false
  @spec render(path()) :: String.t()
  def render(path) when is_binary(path), do: path
  def render({path, i}) when is_integer(i), do: "#{render(path)}[#{i}]"
  def render({path, field}), do: render(path) <> field

  @doc false
  @spec show(term()) :: String.t()
  def show({:list, t, max: n}), do: "{:list, #{show(t)}, max: #{n}}"
  def show({:vector, t, n}), do: "{:vector, #{show(t)}, #{n}}"
  def show(t) when is_atom(t), do: inspect(t)
  def show(t), do: inspect(t)
end
