defmodule Bridge.Provenance do
  @moduledoc """
  The provenance block of a frame (protocol/SPEC.md §5.4): who wrote it
  (`producer`), the user metadata of its call (`meta`), the calls its value came
  through (`lineage`, oldest first, at most #{32} entries) and what was dropped
  from the front of that chain (`summary`).

  Sections are kept as their bytes (`producer`, `meta`: ETF bodies; lineage
  entries: `{call, at, raw}`) and read when described (`describe/1`), so passing
  a chain from one frame to the next copies it: only its newest entry is
  encoded again (`chained/2`).

  `Bridge.Frame.describe/1` is where users meet this; the functions here build
  and read blocks.

  ## Examples

      iex> block = Bridge.Provenance.encode!(%Bridge.Provenance{meta: :erlang.term_to_binary(%{"round" => 12})})
      iex> {:ok, p} = Bridge.Provenance.parse(block)
      iex> Bridge.Provenance.describe(p).meta
      %{"round" => 12}
  """

  import Bitwise

  alias Bridge.{Error, Header, NIF}

  @max 65_536
  @lineage_max 32
  @inputs_max 8
  @top 1 <<< 63
  @low63 (1 <<< 63) - 1
  @tags %{1 => :producer, 2 => :meta, 3 => :lineage, 4 => :summary}

  defstruct producer: "", meta: "", lineage: [], summary: nil

  @typedoc "A lineage entry: its call id, when its frame was written (ns), and its bytes."
  @type entry :: {non_neg_integer(), non_neg_integer(), binary()}
  @typedoc "`{count, first_at, digest}` of the entries dropped (SPEC §5.4 `summary`)."
  @type summary :: {non_neg_integer(), non_neg_integer(), non_neg_integer()}
  @type t :: %__MODULE__{
          producer: binary(),
          meta: binary(),
          lineage: [entry()],
          summary: summary() | nil
        }

  @doc "The largest provenance block, 65536 bytes."
  @spec max_size() :: pos_integer()
  def max_size, do: @max

  @doc false
  # created_at for a frame written now.
  @spec now() :: non_neg_integer()
  def now, do: System.os_time(:nanosecond)

  @doc false
  # A frame id unique to this node: a random base and a counter, the top bit
  # set (SPEC §5.4: 8 bytes in any encoding).
  @spec frame_id() :: pos_integer()
  def frame_id, do: (base() + :erlang.unique_integer([:positive]) &&& @low63) ||| @top

  defp base do
    case :persistent_term.get({__MODULE__, :base}, nil) do
      nil ->
        b = :rand.uniform(@low63)
        :persistent_term.put({__MODULE__, :base}, b)
        b

      b ->
        b
    end
  end

  @doc """
  The block's bytes, or an error when it would be larger than 65536 bytes.
  """
  @spec encode(t()) :: {:ok, binary()} | {:error, Error.t()}
  def encode(%__MODULE__{} = p) do
    block =
      IO.iodata_to_binary([
        section(1, p.producer),
        section(2, p.meta),
        section(3, Enum.map(p.lineage, &elem(&1, 2))),
        summary_section(p.summary)
      ])

    if byte_size(block) <= @max,
      do: {:ok, block},
      else:
        {:error,
         Error.new(:bad_call, :too_large,
           field: :meta,
           value: byte_size(block),
           limit: @max,
           message:
             "bad call: too_large: the provenance block of the call's frames would be " <>
               "#{byte_size(block)} bytes, over #{@max}: pass a smaller meta:"
         )}
  end

  @doc "Like `encode/1`, raising `Bridge.Error`."
  @spec encode!(t()) :: binary()
  def encode!(p) do
    case encode(p) do
      {:ok, block} -> block
      {:error, e} -> raise e
    end
  end

  defp section(_tag, ""), do: []
  defp section(_tag, []), do: []

  defp section(tag, body),
    do: [<<tag, IO.iodata_length(body)::little-32>>, body]

  defp summary_section(nil), do: []

  defp summary_section({count, first_at, digest}),
    do: [<<4, 24::little-32>>, <<count::little-64, first_at::little-64, digest::little-64>>]

  @doc """
  Reads a block's sections (SPEC §5.4 check P4; unknown tags are skipped).
  Lineage entry bodies are checked when described.
  """
  @spec parse(binary()) :: {:ok, t()} | {:error, Error.t()}
  def parse(block) when is_binary(block), do: sections(block, %__MODULE__{}, [])

  defp sections(<<>>, p, _seen), do: {:ok, %{p | lineage: p.lineage}}

  defp sections(<<tag, len::little-32, rest::binary>>, p, seen) when byte_size(rest) >= len do
    name = Map.get(@tags, tag, :section)

    if tag in seen do
      bad(name, "section tag #{tag} comes twice")
    else
      <<body::binary-size(len), rest::binary>> = rest

      with {:ok, p} <- put_section(tag, body, p),
           do: sections(rest, p, [tag | seen])
    end
  end

  defp sections(<<tag, len::little-32, _::binary>>, _p, _seen),
    do: bad(Map.get(@tags, tag, :section), "a section of #{len} bytes runs past the block")

  defp sections(_short, _p, _seen), do: bad(:section, "a section header runs past the block")

  defp put_section(1, body, p),
    do: with({:ok, _} <- map_body(:producer, body), do: {:ok, %{p | producer: body}})

  defp put_section(2, body, p),
    do: with({:ok, _} <- map_body(:meta, body), do: {:ok, %{p | meta: body}})

  defp put_section(3, body, p),
    do: with({:ok, l} <- entries(body, []), do: {:ok, %{p | lineage: l}})

  defp put_section(4, <<c::little-64, f::little-64, d::little-64>>, p),
    do: {:ok, %{p | summary: {c, f, d}}}

  defp put_section(4, body, _p),
    do: bad(:summary, "a summary of #{byte_size(body)} bytes, not 24")

  defp put_section(_tag, _body, p), do: {:ok, p}

  defp entries(<<>>, acc), do: {:ok, Enum.reverse(acc)}

  defp entries(<<size::little-16, call::little-64, at::little-64, _::binary>> = bin, acc)
       when size >= 18 and size <= byte_size(bin) do
    <<raw::binary-size(size), rest::binary>> = bin
    entries(rest, [{call, at, raw} | acc])
  end

  defp entries(_bin, _acc), do: bad(:lineage, "an entry runs past the section")

  defp map_body(name, body) do
    case Bridge.Format.safe_term(body) do
      {:ok, %{} = map} -> {:ok, map}
      _ -> bad(name, "section #{name} is not an ETF map")
    end
  end

  defp bad(field, text) do
    {:error,
     Error.new(:bad_frame, :bad_provenance, field: field, message: "bad_provenance: #{text}")}
  end

  @doc """
  The provenance block of a frame whose `header` passed header validation,
  read from `head` (the frame's bytes from offset 0, at least up to the end
  of the block): `nil` when it has none (SPEC §5.4 checks P1–P4).
  """
  @spec read(Header.t(), binary()) :: {:ok, t() | nil} | {:error, Error.t()}
  def read(%Header{version_minor: 0}, _head), do: {:ok, nil}
  def read(%Header{provenance_length: 0}, _head), do: {:ok, nil}

  def read(%Header{} = h, head) do
    start = 128 + h.metadata_length
    len = h.provenance_length

    cond do
      len > @max or start + len > h.payload_offset ->
        out_of_bounds(len, min(@max, max(h.payload_offset - start, 0)))

      start + len > byte_size(head) ->
        out_of_bounds(len, max(byte_size(head) - start, 0))

      true ->
        block = binary_part(head, start, len)
        {:ok, computed} = NIF.xxh3_64(block)

        if computed == h.provenance_checksum,
          do: parse(block),
          else:
            {:error,
             Error.new(:bad_frame, :provenance_checksum_mismatch,
               field: :provenance_checksum,
               value: h.provenance_checksum,
               limit: computed
             )}
    end
  end

  defp out_of_bounds(len, limit),
    do:
      {:error,
       Error.new(:bad_frame, :provenance_out_of_bounds,
         field: :provenance_length,
         value: len,
         limit: limit
       )}

  @doc false
  # The chain of `p` as it passes to a frame derived from the frame
  # `frame_id` that carries it: its newest entry gains "frame".
  @spec chained(t(), non_neg_integer()) :: {[entry()], summary() | nil}
  def chained(%__MODULE__{lineage: []} = p, _frame_id), do: {[], p.summary}

  def chained(%__MODULE__{lineage: lineage} = p, frame_id) do
    {older, [{call, at, raw}]} = Enum.split(lineage, -1)
    <<_::binary-size(18), body::binary>> = raw

    newest =
      case Bridge.Format.safe_term(body) do
        {:ok, %{"frame" => _}} -> {call, at, raw}
        {:ok, %{} = map} -> entry(call, at, Map.put(map, "frame", frame_id))
        _ -> {call, at, raw}
      end

    {older ++ [newest], p.summary}
  end

  @doc false
  # A lineage entry of the given body.
  @spec entry(non_neg_integer(), non_neg_integer(), map()) :: entry()
  def entry(call, at, body) do
    encoded = :erlang.term_to_binary(body)

    {call, at,
     <<18 + byte_size(encoded)::little-16, call::little-64, at::little-64, encoded::binary>>}
  end

  @doc false
  # The chains of a frame's inputs joined in order (an entry whose call came
  # already is dropped), `newest` appended, the oldest past 32 summarised.
  @spec merge([{[entry()], summary() | nil}], entry() | nil) :: {[entry()], summary() | nil}
  def merge(chains, newest \\ nil) do
    {entries, summary, _seen} =
      Enum.reduce(chains, {[], nil, MapSet.new()}, fn {lineage, s}, {acc, summary, seen} ->
        summary = join(summary, s)

        Enum.reduce(lineage, {acc, summary, seen}, fn {call, _, _} = e, {acc, summary, seen} ->
          if MapSet.member?(seen, call),
            do: {acc, summary, seen},
            else: {[e | acc], summary, MapSet.put(seen, call)}
        end)
      end)

    entries = Enum.reverse(if newest, do: [newest | entries], else: entries)
    bound(entries, summary)
  end

  defp join(nil, s), do: s
  defp join(s, nil), do: s

  defp join({c1, f1, d1}, {c2, f2, d2}) do
    {:ok, d} = NIF.xxh3_64(<<d1::little-64, d2::little-64>>)
    {c1 + c2, min(f1, f2), d}
  end

  defp bound(entries, summary) when length(entries) <= @lineage_max, do: {entries, summary}

  defp bound(entries, summary) do
    {dropped, kept} = Enum.split(entries, length(entries) - @lineage_max)
    {count, first_at, digest} = summary || {0, elem(hd(dropped), 1), 0}

    {:ok, d} =
      NIF.xxh3_64(IO.iodata_to_binary([<<digest::little-64>> | Enum.map(dropped, &elem(&1, 2))]))

    {kept, {count + length(dropped), first_at, d}}
  end

  @doc false
  # At most 8 input frame ids per entry (SPEC §5.4).
  @spec inputs([non_neg_integer()]) :: [non_neg_integer()]
  def inputs(ids), do: ids |> Enum.reject(&(&1 == 0)) |> Enum.take(@inputs_max)

  @doc """
  The block as plain data: `producer` (a map or `nil`), `meta` (a map),
  `lineage` (a list of maps, oldest first, each with `"call"`, `"at"`,
  `"handler"`, `"worker"`, `"inputs"` and, but for the newest, `"frame"`),
  `summary` (`nil` or a map of `"count"`, `"first_at"`, `"digest"`).
  Raises nothing: an entry whose body does not decode is described as
  `%{"call" => id, "at" => ns, "unreadable" => true}`.
  """
  @spec describe(t() | nil) :: map()
  def describe(nil), do: %{producer: nil, meta: %{}, lineage: [], summary: nil}

  def describe(%__MODULE__{} = p) do
    %{
      producer: body_map(p.producer),
      meta: body_map(p.meta) || %{},
      lineage:
        Enum.map(p.lineage, fn {call, at, <<_::binary-size(18), body::binary>>} ->
          case Bridge.Format.safe_term(body) do
            {:ok, %{} = map} -> Map.merge(map, %{"call" => call, "at" => at})
            _ -> %{"call" => call, "at" => at, "unreadable" => true}
          end
        end),
      summary:
        case p.summary do
          nil -> nil
          {c, f, d} -> %{"count" => c, "first_at" => f, "digest" => d}
        end
    }
  end

  defp body_map(""), do: nil

  defp body_map(body) do
    case Bridge.Format.safe_term(body) do
      {:ok, %{} = map} -> map
      _ -> nil
    end
  end
end
