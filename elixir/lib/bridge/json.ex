defmodule Bridge.JSON do
  @moduledoc false
  # A small strict JSON decoder (RFC 8259) for the files of protocol/: the
  # registry (read at compile time by Bridge.Registry) and the golden vector
  # descriptions (tests); and encode/1, for the dashboard's data
  # (Bridge.Dashboard). hex is unreachable and OTP 25 has no :json module.
  #
  # Objects become maps with string keys, arrays lists, integers stay exact
  # (u64 values), numbers with a fraction or an exponent become floats, null is
  # nil. Refused, with the byte offset: a key repeated in one object, invalid
  # UTF-8, control characters and lone surrogates in strings, unknown escapes,
  # leading zeros, a float beyond the float range, anything after the value.

  import Bitwise, only: [<<<: 2, |||: 2]

  defmodule DecodeError do
    @moduledoc false
    # `offset` is the byte offset into the input where decoding failed,
    # `reason` what was wrong there.
    defexception [:offset, :reason]

    @type t :: %__MODULE__{offset: non_neg_integer(), reason: String.t()}

    @impl true
    def message(%__MODULE__{offset: offset, reason: reason}),
      do: "invalid JSON at byte #{offset}: #{reason}"
  end

  @type value ::
          nil
          | boolean()
          | integer()
          | float()
          | String.t()
          | [value()]
          | %{String.t() => value()}

  @spec decode(binary()) :: {:ok, value()} | {:error, DecodeError.t()}
  def decode(text) when is_binary(text) do
    {value, rest} = value(skip_ws(text))

    case skip_ws(rest) do
      "" -> {:ok, value}
      rest -> fail(rest, "data after the value")
    end
  catch
    {__MODULE__, rest, reason} ->
      {:error, %DecodeError{offset: byte_size(text) - byte_size(rest), reason: reason}}
  end

  @spec decode!(binary()) :: value()
  def decode!(text) do
    case decode(text) do
      {:ok, value} -> value
      {:error, error} -> raise error
    end
  end

  @doc false
  # `value` as JSON text: maps (atom or string keys), lists and tuples, strings
  # (other binaries as Latin-1 text), integers, floats, atoms as strings, nil
  # as null.
  @spec encode(term()) :: String.t()
  def encode(value), do: value |> enc() |> IO.iodata_to_binary()

  defp enc(nil), do: "null"
  defp enc(true), do: "true"
  defp enc(false), do: "false"
  defp enc(n) when is_integer(n), do: Integer.to_string(n)
  defp enc(f) when is_float(f), do: :erlang.float_to_binary(f, [:short])

  defp enc(a) when is_atom(a),
    do: a |> Atom.to_string() |> String.trim_leading("Elixir.") |> enc()

  defp enc(t) when is_tuple(t), do: t |> Tuple.to_list() |> enc()
  defp enc(l) when is_list(l), do: [?[, Enum.map_intersperse(l, ?,, &enc/1), ?]]

  defp enc(%{} = m) when not is_struct(m) do
    pairs = Enum.map_intersperse(m, ?,, fn {k, v} -> [enc(key(k)), ?:, enc(v)] end)
    [?{, pairs, ?}]
  end

  defp enc(s) when is_binary(s) do
    s = if String.valid?(s), do: s, else: :unicode.characters_to_binary(s, :latin1)
    [?", for(<<c::utf8 <- s>>, do: char(c)), ?"]
  end

  defp enc(other), do: enc(inspect(other))

  defp key(k) when is_binary(k), do: k
  defp key(k) when is_atom(k), do: k |> Atom.to_string() |> String.trim_leading("Elixir.")
  defp key(k), do: inspect(k)

  defp char(?"), do: "\\\""
  defp char(?\\), do: "\\\\"
  defp char(c) when c < 0x20, do: :io_lib.format("\\u~4.16.0b", [c])
  defp char(?<), do: "\\u003c"
  defp char(c), do: <<c::utf8>>

  defp fail(rest, reason), do: throw({__MODULE__, rest, reason})

  defp skip_ws(<<c, rest::binary>>) when c in ~c" \t\r\n", do: skip_ws(rest)
  defp skip_ws(rest), do: rest

  defp value(<<"{", rest::binary>>), do: object(skip_ws(rest), %{})
  defp value(<<"[", rest::binary>>), do: array(skip_ws(rest), [])
  defp value(<<"\"", rest::binary>>), do: string(rest, rest, [])
  defp value(<<"true", rest::binary>>), do: {true, rest}
  defp value(<<"false", rest::binary>>), do: {false, rest}
  defp value(<<"null", rest::binary>>), do: {nil, rest}
  defp value(<<c, _::binary>> = text) when c in ~c"-0123456789", do: number(text)
  defp value(""), do: fail("", "the input ends where a value should be")
  defp value(text), do: fail(text, "a value should start here")

  defp object(<<"}", rest::binary>>, acc) when map_size(acc) == 0, do: {acc, rest}

  defp object(<<"\"", after_quote::binary>> = at_key, acc) do
    {key, rest} = string(after_quote, after_quote, [])
    if Map.has_key?(acc, key), do: fail(at_key, "the key #{inspect(key)} appears twice")

    rest =
      case skip_ws(rest) do
        <<":", rest::binary>> -> skip_ws(rest)
        rest -> fail(rest, "expected : after an object key")
      end

    {val, rest} = value(rest)
    acc = Map.put(acc, key, val)

    case skip_ws(rest) do
      <<",", rest::binary>> -> object(skip_ws(rest), acc)
      <<"}", rest::binary>> -> {acc, rest}
      rest -> fail(rest, "expected , or } in an object")
    end
  end

  defp object(rest, _acc), do: fail(rest, "expected a string key in an object")

  defp array(<<"]", rest::binary>>, []), do: {[], rest}

  defp array(text, acc) do
    {val, rest} = value(text)

    case skip_ws(rest) do
      <<",", rest::binary>> -> array(skip_ws(rest), [val | acc])
      <<"]", rest::binary>> -> {Enum.reverse([val | acc]), rest}
      rest -> fail(rest, "expected , or ] in an array")
    end
  end

  # `start` is where the current run of plain bytes began; runs are taken as
  # sub-binaries, escapes decoded one by one.
  defp string(<<"\"", rest::binary>> = at, start, acc) do
    text = IO.iodata_to_binary(Enum.reverse([run(start, at) | acc]))
    if String.valid?(text), do: {text, rest}, else: fail(start, "a string that is not UTF-8")
  end

  defp string(<<"\\", esc, rest::binary>> = at, start, acc) do
    acc = [run(start, at) | acc]

    case esc do
      ?u -> unicode(rest, at, acc)
      _ -> string(rest, rest, [escape(esc, at) | acc])
    end
  end

  defp string(<<c, _::binary>> = at, _start, _acc) when c < 0x20,
    do: fail(at, "a control character in a string (escape it)")

  defp string(<<_, rest::binary>>, start, acc), do: string(rest, start, acc)
  defp string("", _start, _acc), do: fail("", "the input ends inside a string")

  defp run(start, at), do: binary_part(start, 0, byte_size(start) - byte_size(at))

  defp escape(?", _at), do: "\""
  defp escape(?\\, _at), do: "\\"
  defp escape(?/, _at), do: "/"
  defp escape(?b, _at), do: "\b"
  defp escape(?f, _at), do: "\f"
  defp escape(?n, _at), do: "\n"
  defp escape(?r, _at), do: "\r"
  defp escape(?t, _at), do: "\t"
  defp escape(_, at), do: fail(at, "an unknown escape in a string")

  defp unicode(<<hex::binary-size(4), rest::binary>>, at, acc) do
    case {hex4(hex, at), rest} do
      {hi, <<"\\u", lo_hex::binary-size(4), rest::binary>>} when hi in 0xD800..0xDBFF ->
        lo = hex4(lo_hex, at)
        if lo not in 0xDC00..0xDFFF, do: fail(at, "a high surrogate without its low surrogate")
        cp = 0x10000 + ((hi - 0xD800) <<< 10 ||| lo - 0xDC00)
        string(rest, rest, [<<cp::utf8>> | acc])

      {cp, _rest} when cp in 0xD800..0xDFFF ->
        fail(at, "a lone surrogate \\u#{hex}")

      {cp, rest} ->
        string(rest, rest, [<<cp::utf8>> | acc])
    end
  end

  defp unicode(_rest, at, _acc), do: fail(at, "a \\u escape needs 4 hex digits")

  defp hex4(hex, at) do
    if hex =~ ~r/\A[0-9a-fA-F]{4}\z/,
      do: String.to_integer(hex, 16),
      else: fail(at, "a \\u escape needs 4 hex digits")
  end

  @number ~r/\A-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/

  defp number(text) do
    case Regex.run(@number, text) do
      nil ->
        fail(text, "a malformed number")

      [num | parts] ->
        rest = binary_part(text, byte_size(num), byte_size(text) - byte_size(num))

        case rest do
          <<c, _::binary>> when c in ~c"0123456789" -> fail(text, "a number with a leading zero")
          _ -> {to_number(num, parts, text), rest}
        end
    end
  end

  defp to_number(num, [], _text), do: String.to_integer(num)

  defp to_number(num, _fraction_or_exponent, text) do
    # Float.parse/1 wants a fraction before an exponent: "1e5" -> "1.0e5".
    normal = Regex.replace(~r/\A(-?[0-9]+)([eE])/, num, "\\1.0\\2")

    case Float.parse(normal) do
      {f, ""} -> f
      _ -> fail(text, "a number beyond the float range")
    end
  rescue
    ArgumentError -> fail(text, "a number beyond the float range")
  end
end
