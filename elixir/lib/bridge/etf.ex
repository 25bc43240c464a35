defmodule Bridge.ETF do
  @moduledoc false
  # Why a control frame failed `binary_to_term(bin, [:safe])` (SPEC §8.2), and
  # plain_term/1 for terms read from shared memory.
  #
  # `[:safe]` refuses a frame that names an atom this VM does not have, so that a
  # peer cannot fill the atom table; it refuses malformed frames the same way. The
  # worker needs to tell the two apart: an unknown atom in a handler's result is the
  # handler's mistake (a `:bad_call` for that call), a malformed frame is a broken
  # peer (`:bad_frame`, the worker is replaced). This walks a frame over the §8.2 tag
  # set without creating anything and answers which it is. It runs only on that
  # error path.

  @max_depth 512

  @doc false
  # {:unknown_atoms, names, answer} when the frame is well formed (§8.2 tags only)
  # and its only problem is atoms this VM does not know (at most 5 names, as
  # binaries); `answer` is {:ok, id} when the frame is an `{:ok, id, result}` answer,
  # else :other. :malformed otherwise.
  @spec classify(binary()) ::
          {:unknown_atoms, [String.t()], {:ok, integer()} | :other} | :malformed
  def classify(<<131, rest::binary>>) do
    case term(rest, 0, []) do
      {:ok, <<>>, [_ | _] = unknown} ->
        {:unknown_atoms, unknown |> Enum.reverse() |> Enum.uniq(), answer(rest)}

      _ ->
        :malformed
    end
  catch
    :malformed -> :malformed
  end

  def classify(_), do: :malformed

  @doc false
  # A term a peer wrote into shared memory (a provenance section, SPEC §5.4),
  # decoded only if it is made of §8.2 tags alone, fills the binary exactly and
  # names no atom this VM lacks; :error otherwise (a compressed term, a pid, a
  # fun, trailing bytes...).
  @spec plain_term(binary()) :: {:ok, term()} | :error
  def plain_term(<<131, rest::binary>> = bin) do
    case term(rest, 0, []) do
      {:ok, <<>>, []} -> {:ok, :erlang.binary_to_term(bin, [:safe])}
      _ -> :error
    end
  catch
    :malformed -> :error
  end

  def plain_term(_), do: :error

  # {:ok, Id, _}: a 3-tuple, the atom `ok` in any atom encoding, a small integer id.
  defp answer(<<104, 3, rest::binary>>) do
    with {:ok, rest} <- ok_atom(rest),
         {:ok, id} <- small_integer(rest),
         do: {:ok, id},
         else: (_ -> :other)
  end

  defp answer(_), do: :other

  defp ok_atom(<<tag, 2, "ok", rest::binary>>) when tag in [115, 119], do: {:ok, rest}
  defp ok_atom(<<tag, 2::16, "ok", rest::binary>>) when tag in [100, 118], do: {:ok, rest}
  defp ok_atom(_), do: :error

  defp small_integer(<<97, id, _::binary>>), do: {:ok, id}
  defp small_integer(<<98, id::signed-32, _::binary>>), do: {:ok, id}

  defp small_integer(<<110, n, 0, digits::binary-size(n), _::binary>>),
    do: {:ok, :binary.decode_unsigned(digits, :little)}

  defp small_integer(_), do: :error

  defp term(_bin, depth, _unknown) when depth > @max_depth, do: throw(:malformed)

  defp term(<<97, _, rest::binary>>, _d, u), do: {:ok, rest, u}
  defp term(<<98, _::32, rest::binary>>, _d, u), do: {:ok, rest, u}
  defp term(<<70, _::64, rest::binary>>, _d, u), do: {:ok, rest, u}
  defp term(<<106, rest::binary>>, _d, u), do: {:ok, rest, u}
  defp term(<<118, n::16, name::binary-size(n), rest::binary>>, _d, u), do: atom(name, rest, u)
  defp term(<<119, n::8, name::binary-size(n), rest::binary>>, _d, u), do: atom(name, rest, u)

  defp term(<<100, n::16, name::binary-size(n), rest::binary>>, _d, u),
    do: atom(:unicode.characters_to_binary(name, :latin1), rest, u)

  defp term(<<115, n::8, name::binary-size(n), rest::binary>>, _d, u),
    do: atom(:unicode.characters_to_binary(name, :latin1), rest, u)

  defp term(<<107, n::16, _::binary-size(n), rest::binary>>, _d, u), do: {:ok, rest, u}
  defp term(<<109, n::32, _::binary-size(n), rest::binary>>, _d, u), do: {:ok, rest, u}

  defp term(<<110, n::8, s, _::binary-size(n), rest::binary>>, _d, u) when s < 2,
    do: {:ok, rest, u}

  defp term(<<111, n::32, s, _::binary-size(n), rest::binary>>, _d, u) when s < 2,
    do: {:ok, rest, u}

  defp term(<<104, n::8, rest::binary>>, d, u), do: terms(rest, n, d + 1, u)
  defp term(<<105, n::32, rest::binary>>, d, u), do: terms(rest, n, d + 1, u)
  defp term(<<116, n::32, rest::binary>>, d, u), do: terms(rest, 2 * n, d + 1, u)

  # A proper list only: its tail must be NIL.
  defp term(<<108, n::32, rest::binary>>, d, u) do
    case terms(rest, n, d + 1, u) do
      {:ok, <<106, rest::binary>>, u} -> {:ok, rest, u}
      _ -> throw(:malformed)
    end
  end

  defp term(_bin, _d, _u), do: throw(:malformed)

  # Each element takes at least one byte: a count larger than what is left is
  # malformed before any work is done.
  defp terms(rest, n, _d, _u) when n > byte_size(rest), do: throw(:malformed)
  defp terms(rest, 0, _d, u), do: {:ok, rest, u}

  defp terms(rest, n, d, u) do
    {:ok, rest, u} = term(rest, d, u)
    terms(rest, n - 1, d, u)
  end

  defp atom(name, _rest, _unknown) when not is_binary(name) or byte_size(name) > 1020,
    do: throw(:malformed)

  defp atom(name, rest, unknown) do
    unless String.valid?(name) and String.length(name) <= 255, do: throw(:malformed)
    _ = String.to_existing_atom(name)
    {:ok, rest, unknown}
  rescue
    ArgumentError ->
      if length(unknown) < 5, do: {:ok, rest, [name | unknown]}, else: {:ok, rest, unknown}
  end
end
