defmodule Bridge.Test.JSON do
  @moduledoc false
  # A small strict JSON decoder for the golden vector descriptions (no hex deps,
  # OTP 25 has no :json). Objects -> maps with string keys, integers stay exact
  # (u64 values), floats via Float.parse.

  import Bitwise, only: [<<<: 2, |||: 2]

  def decode!(text) when is_binary(text) do
    {value, rest} = value(skip_ws(text))

    case skip_ws(rest) do
      "" ->
        value

      other ->
        raise ArgumentError, "trailing data in JSON: #{inspect(String.slice(other, 0, 20))}"
    end
  end

  defp skip_ws(<<c, rest::binary>>) when c in ~c" \t\r\n", do: skip_ws(rest)
  defp skip_ws(rest), do: rest

  defp value(<<"{", rest::binary>>), do: object(skip_ws(rest), %{})
  defp value(<<"[", rest::binary>>), do: array(skip_ws(rest), [])
  defp value(<<"\"", rest::binary>>), do: string(rest, [])
  defp value(<<"true", rest::binary>>), do: {true, rest}
  defp value(<<"false", rest::binary>>), do: {false, rest}
  defp value(<<"null", rest::binary>>), do: {nil, rest}
  defp value(<<c, _::binary>> = text) when c in ~c"-0123456789", do: number(text)
  defp value(text), do: raise(ArgumentError, "bad JSON at #{inspect(String.slice(text, 0, 20))}")

  defp object(<<"}", rest::binary>>, acc), do: {acc, rest}

  defp object(<<"\"", rest::binary>>, acc) do
    {key, rest} = string(rest, [])
    <<":", rest::binary>> = skip_ws(rest)
    {val, rest} = value(skip_ws(rest))
    acc = Map.put(acc, key, val)

    case skip_ws(rest) do
      <<",", rest::binary>> -> object(skip_ws(rest), acc)
      <<"}", rest::binary>> -> {acc, rest}
    end
  end

  defp array(<<"]", rest::binary>>, acc), do: {Enum.reverse(acc), rest}

  defp array(text, acc) do
    {val, rest} = value(text)

    case skip_ws(rest) do
      <<",", rest::binary>> -> array(skip_ws(rest), [val | acc])
      <<"]", rest::binary>> -> {Enum.reverse([val | acc]), rest}
    end
  end

  defp string(<<"\"", rest::binary>>, acc), do: {IO.iodata_to_binary(Enum.reverse(acc)), rest}

  defp string(<<"\\u", a::binary-size(4), "\\u", b::binary-size(4), rest::binary>>, acc)
       when binary_part(a, 0, 1) in ["d", "D"] do
    hi = String.to_integer(a, 16)
    lo = String.to_integer(b, 16)
    cp = 0x10000 + ((hi - 0xD800) <<< 10 ||| lo - 0xDC00)
    string(rest, [<<cp::utf8>> | acc])
  end

  defp string(<<"\\u", hex::binary-size(4), rest::binary>>, acc),
    do: string(rest, [<<String.to_integer(hex, 16)::utf8>> | acc])

  defp string(<<"\\", c, rest::binary>>, acc) do
    ch =
      case c do
        ?" -> "\""
        ?\\ -> "\\"
        ?/ -> "/"
        ?b -> "\b"
        ?f -> "\f"
        ?n -> "\n"
        ?r -> "\r"
        ?t -> "\t"
      end

    string(rest, [ch | acc])
  end

  defp string(<<c, rest::binary>>, acc), do: string(rest, [c | acc])

  defp number(text) do
    [num | _] = Regex.run(~r/\A-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/, text)
    rest = binary_part(text, byte_size(num), byte_size(text) - byte_size(num))

    if String.contains?(num, [".", "e", "E"]) do
      {f, ""} = Float.parse(num)
      {f, rest}
    else
      {String.to_integer(num), rest}
    end
  end
end
