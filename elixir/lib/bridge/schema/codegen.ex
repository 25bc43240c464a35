defmodule Bridge.Schema.Codegen do
  @moduledoc false
  # The code `use Bridge.Schema` generates for a container (protocol/formats/ssz.md):
  # `__bb_encode__/2` builds the fixed part as one binary (numbers and booleans as
  # segments, offsets of the variable-size fields in their places) followed by the
  # variable parts; `__bb_decode__/2` matches the fixed part with one binary
  # pattern, then reads the variable parts between their offsets. Composite fields
  # go through Bridge.Schema.SSZ.

  alias Bridge.Schema.SSZ

  @uints %{uint8: 8, uint16: 16, uint32: 32, uint64: 64}
  @ints %{int8: 8, int16: 16, int32: 32, int64: 64}
  @floats %{float32: 32, float64: 64}
  # Integer lists up to this long are written by a clause of their length (longer
  # ones through SSZ.encode)
  @short_list 8

  @doc false
  @spec encoder([{atom(), term()}]) :: Macro.t()
  def encoder(types) do
    indexed = Enum.with_index(types)
    fixed = fixed_size(types)
    path = Macro.var(:path, __MODULE__)

    prepare =
      for {{name, t}, i} <- indexed do
        # where the field is: made into text only if an error names it
        at = quote(do: {unquote(path), unquote(".#{name}")})
        got = var(:g, i)
        x = Macro.var(:x, __MODULE__)

        case kind(t) do
          :number ->
            # a value that fits goes as it is; anything else is checked (converted
            # or refused) by SSZ.check
            quote do
              unquote(var(:f, i)) =
                case unquote(got) do
                  unquote(x) when unquote(fits(t, x)) -> unquote(x)
                  unquote(x) -> SSZ.check(unquote(t), unquote(x), unquote(at))
                end
            end

          :boolean ->
            quote do
              unquote(var(:f, i)) =
                case unquote(got) do
                  true -> 1
                  false -> 0
                  unquote(x) -> SSZ.check(:boolean, unquote(x), unquote(at))
                end
            end

          :numbers ->
            # a short vector of numbers that all fit: its bytes made here
            {:vector, nt, n} = t
            es = for k <- 1..n, do: Macro.var(:"e#{k}", __MODULE__)

            guard =
              es
              |> Enum.map(&fits(nt, &1))
              |> Enum.reduce(&quote(do: unquote(&2) and unquote(&1)))

            quote do
              unquote(var(:f, i)) =
                case unquote(got) do
                  unquote(es) when unquote(guard) ->
                    <<unquote_splicing(Enum.map(es, &segment(nt, &1)))>>

                  unquote(x) ->
                    IO.iodata_to_binary(
                      SSZ.encode(unquote(Macro.escape(t)), unquote(x), unquote(at))
                    )
                end
            end

          :fixed ->
            quote(
              do:
                unquote(var(:f, i)) =
                  IO.iodata_to_binary(
                    SSZ.encode(unquote(Macro.escape(t)), unquote(got), unquote(at))
                  )
            )

          :variable when t == :string ->
            # valid UTF-8 as it is (checked by the VM's C code); else SSZ.encode refuses
            quote do
              unquote(var(:v, i)) =
                if is_binary(unquote(got)) and
                     is_binary(:unicode.characters_to_binary(unquote(got))),
                   do: unquote(got),
                   else: SSZ.encode(:string, unquote(got), unquote(at))
            end

          :variable ->
            case t do
              {:list, e, max: n} when is_map_key(@uints, e) or is_map_key(@ints, e) ->
                # a short list of integers that all fit: its bytes made in one go
                short =
                  for k <- 0..min(n, @short_list) do
                    es = for j <- 1..k//1, do: Macro.var(:"e#{j}", __MODULE__)

                    guard =
                      es
                      |> Enum.map(&fits(e, &1))
                      |> Enum.reduce(true, &quote(do: unquote(&2) and unquote(&1)))

                    hd(
                      quote do
                        unquote(es) when unquote(guard) ->
                          <<unquote_splicing(Enum.map(es, &segment(e, &1)))>>
                      end
                    )
                  end

                other =
                  quote do
                    unquote(x) -> SSZ.encode(unquote(Macro.escape(t)), unquote(x), unquote(at))
                  end

                quote do
                  unquote(var(:v, i)) = case unquote(got), do: unquote(short ++ other)
                end

              _ ->
                quote(
                  do:
                    unquote(var(:v, i)) =
                      SSZ.encode(unquote(Macro.escape(t)), unquote(got), unquote(at))
                )
            end
        end
      end

    variable = for {{_, t}, i} <- indexed, kind(t) == :variable, do: i

    offsets =
      variable
      |> Enum.with_index()
      |> Enum.map(fn
        {i, 0} ->
          quote(do: unquote(var(:f, i)) = unquote(fixed))

        {i, k} ->
          before = Enum.at(variable, k - 1)

          quote do
            unquote(var(:f, i)) =
              unquote(var(:f, before)) + unquote(size_of(Enum.at(types, before), var(:v, before)))
          end
      end)

    segments = for {{_, t}, i} <- indexed, do: segment(t, var(:f, i))
    tail = for i <- variable, do: var(:v, i)
    bound = for {{name, _t}, i} <- indexed, do: {name, var(:g, i)}
    acc = Macro.var(:acc, __MODULE__)

    # the variable parts as binary segments: those written as iodata made binaries
    appended =
      for i <- variable do
        {_, t} = Enum.at(types, i)

        v =
          if binary_part?(t),
            do: var(:v, i),
            else: quote(do: IO.iodata_to_binary(unquote(var(:v, i))))

        quote(do: unquote(v) :: binary)
      end

    quote do
      @doc false
      # the value's bytes as iodata
      def __bb_encode__(%__MODULE__{unquote_splicing(bound)}, unquote(path)) do
        unquote_splicing(prepare)
        unquote_splicing(offsets)
        [<<unquote_splicing(segments)>> | unquote(tail)]
      end

      def __bb_encode__(other, path),
        do: SSZ.bad_value(path, other, "a %#{inspect(__MODULE__)}{}")

      @doc false
      # `acc` with the value's bytes appended (the VM grows a binary being appended to
      # in place: a batch is made in one binary, value after value)
      def __bb_encode_into__(%__MODULE__{unquote_splicing(bound)}, unquote(path), unquote(acc)) do
        unquote_splicing(prepare)
        unquote_splicing(offsets)
        <<unquote(acc)::binary, unquote_splicing(segments), unquote_splicing(appended)>>
      end

      def __bb_encode_into__(other, path, _acc),
        do: SSZ.bad_value(path, other, "a %#{inspect(__MODULE__)}{}")
    end
  end

  @doc false
  @spec decoder([{atom(), term()}], atom()) :: Macro.t()
  def decoder(types, fun \\ :__bb_decode__) do
    indexed = Enum.with_index(types)
    fixed = fixed_size(types)
    bin = Macro.var(:bin, __MODULE__)
    path = Macro.var(:path, __MODULE__)

    segments =
      Enum.flat_map(indexed, fn {{_, t}, i} ->
        case kind(t) do
          # a short vector of numbers: one segment each, read in the one pattern
          :numbers -> Enum.map(elements(t, i), &segment(elem(t, 1), &1))
          _ -> [segment(t, var(:f, i))]
        end
      end)

    variable = for {{_, t}, i} <- indexed, kind(t) == :variable, do: i

    reads =
      for {{name, t}, i} <- indexed do
        at = quote(do: {unquote(path), unquote(".#{name}")})

        case kind(t) do
          :number ->
            var(:f, i)

          :numbers ->
            elements(t, i)

          :boolean ->
            quote do
              case unquote(var(:f, i)) do
                0 -> false
                1 -> true
                b -> SSZ.bad_ssz(unquote(at), "a boolean byte of #{b}")
              end
            end

          :fixed ->
            quote(do: SSZ.decode(unquote(Macro.escape(t)), unquote(var(:f, i)), unquote(at)))

          :variable ->
            k = Enum.find_index(variable, &(&1 == i))
            next = Enum.at(variable, k + 1)
            hi = if next, do: var(:f, next), else: quote(do: byte_size(unquote(bin)))

            part =
              quote do
                Bridge.Schema.Codegen.part(
                  unquote(bin),
                  unquote(var(:f, i)),
                  unquote(hi),
                  unquote(path)
                )
              end

            read_part(t, part, at)
        end
      end

    first_check =
      case variable do
        [] ->
          quote do
            if byte_size(unquote(bin)) != unquote(fixed),
              do:
                SSZ.bad_ssz(
                  unquote(path),
                  "#{byte_size(unquote(bin))} bytes for a container of #{unquote(fixed)}"
                )
          end

        [first | _] ->
          quote do
            if unquote(var(:f, first)) != unquote(fixed),
              do:
                SSZ.bad_ssz(
                  unquote(path),
                  "the first offset is #{unquote(var(:f, first))}, not #{unquote(fixed)}"
                )
          end
      end

    fields = for {{{name, _t}, _i}, read} <- Enum.zip(indexed, reads), do: {name, read}

    quote do
      @doc false
      def unquote(fun)(<<unquote_splicing(segments), _::binary>> = unquote(bin), unquote(path)) do
        unquote(first_check)
        %__MODULE__{unquote_splicing(fields)}
      end

      def unquote(fun)(bin, path) when is_binary(bin) do
        if byte_size(bin) < unquote(fixed),
          do:
            SSZ.bad_ssz(
              path,
              "#{byte_size(bin)} bytes, fewer than the fixed part of #{unquote(fixed)}"
            ),
          else: SSZ.bad_ssz(path, "a float that is NaN or infinite")
      end
    end
  end

  # Reads a variable-size part: strings, bytes and lists of integers here; anything
  # else, and every error, through SSZ.decode.
  defp read_part(:bytes, part, _at),
    do: quote(do: Bridge.Schema.Codegen.own(unquote(part)))

  defp read_part(:string, part, at) do
    quote do
      p = Bridge.Schema.Codegen.own(unquote(part))

      # valid UTF-8 as it is (checked by the VM's C code)
      if is_binary(:unicode.characters_to_binary(p)),
        do: p,
        else: SSZ.decode(:string, p, unquote(at))
    end
  end

  defp read_part({:list, e, max: n} = t, part, at)
       when is_map_key(@uints, e) or is_map_key(@ints, e) do
    size = SSZ.fixed_size(e)
    x = Macro.var(:x, __MODULE__)

    quote do
      p = unquote(part)

      if rem(byte_size(p), unquote(size)) == 0 and byte_size(p) <= unquote(size * n),
        do: for(<<unquote(segment(e, x)) <- p>>, do: unquote(x)),
        else: SSZ.decode(unquote(Macro.escape(t)), p, unquote(at))
    end
  end

  defp read_part(t, part, at),
    do: quote(do: SSZ.decode(unquote(Macro.escape(t)), unquote(part), unquote(at)))

  @doc false
  # A string or bytes read from a payload: a small one as a copy of its own (a
  # binary on the heap), so the values of a large batch do not keep its payload
  # alive (which also makes the collector sweep the caller's whole heap again and
  # again as pieces of a long list come, SPEC §8.6); a large one as a view.
  @spec own(binary()) :: binary()
  def own(part) when byte_size(part) <= 64, do: :binary.copy(part)
  def own(part), do: part

  @doc false
  # Bytes [lo, hi) of a container, checked.
  @spec part(binary(), non_neg_integer(), non_neg_integer(), String.t()) :: binary()
  def part(bin, lo, hi, path) do
    if lo <= hi and hi <= byte_size(bin),
      do: binary_part(bin, lo, hi - lo),
      else: SSZ.bad_ssz(path, "offsets #{lo} and #{hi} out of order")
  end

  defp fixed_size(types) do
    types
    |> Enum.map(fn {_, t} -> if kind(t) == :variable, do: 4, else: SSZ.fixed_size(t) end)
    |> Enum.sum()
  end

  defp kind(t) when is_map_key(@uints, t) or is_map_key(@ints, t) or is_map_key(@floats, t),
    do: :number

  defp kind(:boolean), do: :boolean

  defp kind({:vector, t, n})
       when n <= 16 and (is_map_key(@uints, t) or is_map_key(@ints, t) or is_map_key(@floats, t)),
       do: :numbers

  defp kind(t), do: if(SSZ.fixed_size(t), do: :fixed, else: :variable)

  defp segment(t, v) when is_map_key(@uints, t),
    do: quote(do: unquote(v) :: little - unsigned - size(unquote(@uints[t])))

  defp segment(t, v) when is_map_key(@ints, t),
    do: quote(do: unquote(v) :: little - signed - size(unquote(@ints[t])))

  defp segment(t, v) when is_map_key(@floats, t),
    do: quote(do: unquote(v) :: little - float - size(unquote(@floats[t])))

  defp segment(:boolean, v), do: quote(do: unquote(v) :: 8)

  defp segment(t, v) do
    case SSZ.fixed_size(t) do
      nil -> quote(do: unquote(v) :: little - 32)
      n -> quote(do: unquote(v) :: binary - size(unquote(n)))
    end
  end

  defp var(prefix, i), do: Macro.var(:"#{prefix}#{i}", __MODULE__)

  # The length of a variable part: strings, bytes and integer lists are written as
  # one binary, the rest as iodata.
  defp size_of({_name, t}, v) do
    if binary_part?(t),
      do: quote(do: byte_size(unquote(v))),
      else: quote(do: IO.iodata_length(unquote(v)))
  end

  defp binary_part?(t),
    do:
      t in [:string, :bytes] or
        match?({:list, e, _} when is_map_key(@uints, e) or is_map_key(@ints, e), t)

  defp elements({:vector, _t, n}, i), do: for(k <- 1..n, do: Macro.var(:"f#{i}_#{k}", __MODULE__))

  @doc false
  # A guard: `x` is a value of number type `t` that goes as it is (also the packed
  # number lists' of Bridge.Schema.SSZ).
  @spec fits(atom(), Macro.t()) :: Macro.t()
  def fits(t, x) when is_map_key(@uints, t),
    do:
      quote(
        do: is_integer(unquote(x)) and unquote(x) >= 0 and unquote(x) < unquote(2 ** @uints[t])
      )

  def fits(t, x) when is_map_key(@ints, t) do
    half = 2 ** (@ints[t] - 1)

    quote(
      do: is_integer(unquote(x)) and unquote(x) >= unquote(-half) and unquote(x) < unquote(half)
    )
  end

  def fits(:float32, x),
    do: quote(do: is_float(unquote(x)) and abs(unquote(x)) <= 3.4028234663852886e38)

  def fits(:float64, x), do: quote(do: is_float(unquote(x)))
end
