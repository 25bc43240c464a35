defmodule Bridge.Provenance do
  @moduledoc """
  The provenance block of a frame (protocol/SPEC.md §5.4): who wrote it
  (`producer`), the user metadata of its call (`meta`), the calls its value came
  through (`lineage`, oldest first, at most 32 entries) and what was dropped
  from the front of that chain (`summary`).

  Sections are kept as their bytes (`producer`, `meta`: ETF bodies; lineage
  entries: `{call, at, raw}`) and read when described (`describe/1`), so passing
  a chain from one frame to the next copies it: only its newest entry is
  encoded again (`chained/2`). Workers join the chains of several arguments and
  summarise what falls off (`beambridge.provenance` in Python); the BEAM only
  passes one chain on, from the result an argument's bytes were read from.

  `Bridge.Frame.describe/1` is where users meet this; the functions here build
  and read blocks.

  ## Examples

      iex> block = Bridge.Provenance.encode!(%Bridge.Provenance{meta: :erlang.term_to_binary(%{"round" => 12})})
      iex> {:ok, p} = Bridge.Provenance.parse(block)
      iex> {:ok, d} = Bridge.Provenance.describe(p)
      iex> d.meta
      %{"round" => 12}
  """

  import Bitwise

  alias Bridge.{Error, Header, NIF}

  @max 65_536
  @top 1 <<< 63
  @low63 (1 <<< 63) - 1
  @tags %{1 => :producer, 2 => :meta, 3 => :lineage, 4 => :summary, 5 => :meta_ref}
  @inline_meta 1024

  defstruct producer: "", meta: "", lineage: [], summary: nil, meta_ref: nil

  @typedoc "A lineage entry: its call id, when its frame was written (ns), and its bytes."
  @type entry :: {non_neg_integer(), non_neg_integer(), binary()}
  @typedoc "`{count, first_at, digest}` of the entries dropped (SPEC §5.4 `summary`)."
  @type summary :: {non_neg_integer(), non_neg_integer(), non_neg_integer()}
  @type t :: %__MODULE__{
          producer: binary(),
          meta: binary(),
          lineage: [entry()],
          summary: summary() | nil,
          meta_ref: {non_neg_integer(), non_neg_integer()} | nil
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
    # meta first: a stored one must be (SPEC §5.4)
    block =
      IO.iodata_to_binary([
        section(2, p.meta),
        section(1, p.producer),
        section(3, Enum.map(p.lineage, &elem(&1, 2))),
        summary_section(p.summary),
        ref_section(p.meta_ref)
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

  defp ref_section(nil), do: []

  defp ref_section({digest, len}),
    do: [<<5, 12::little-32>>, <<digest::little-64, len::little-32>>]

  defp summary_section(nil), do: []

  defp summary_section({count, first_at, digest}),
    do: [<<4, 24::little-32>>, <<count::little-64, first_at::little-64, digest::little-64>>]

  @doc """
  Reads a block's sections (SPEC §5.4 check P4; unknown tags are skipped): their
  framing here, their ETF bodies when the block is described (`describe/1`), so
  a chain passed on is never decoded.
  """
  @spec parse(binary()) :: {:ok, t()} | {:error, Error.t()}
  def parse(block) when is_binary(block), do: sections(block, %__MODULE__{}, [])

  defp sections(<<>>, %{meta_ref: {_, _}, meta: <<_, _::binary>>}, _seen),
    do: bad(:meta_ref, "a block with both meta and meta_ref")

  defp sections(<<>>, p, _seen), do: {:ok, p}

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

  defp put_section(1, body, p), do: {:ok, %{p | producer: body}}
  defp put_section(2, body, p), do: {:ok, %{p | meta: body}}

  defp put_section(3, body, p),
    do: with({:ok, l} <- entries(body, []), do: {:ok, %{p | lineage: l}})

  defp put_section(4, <<c::little-64, f::little-64, d::little-64>>, p),
    do: {:ok, %{p | summary: {c, f, d}}}

  defp put_section(4, body, _p),
    do: bad(:summary, "a summary of #{byte_size(body)} bytes, not 24")

  defp put_section(5, <<digest::little-64, len::little-32>>, p),
    do: {:ok, %{p | meta_ref: {digest, len}}}

  defp put_section(5, body, _p),
    do: bad(:meta_ref, "a meta_ref of #{byte_size(body)} bytes, not 12")

  defp put_section(_tag, _body, p), do: {:ok, p}

  defp entries(<<>>, acc), do: {:ok, Enum.reverse(acc)}

  defp entries(<<size::little-16, call::little-64, at::little-64, _::binary>> = bin, acc)
       when size >= 18 and size <= byte_size(bin) do
    <<raw::binary-size(size), rest::binary>> = bin
    entries(rest, [{call, at, raw} | acc])
  end

  defp entries(_bin, _acc), do: bad(:lineage, "an entry runs past the section")

  # A section's body: a map of plain terms (SPEC §8.2), else the block's error.
  defp map_body(_name, ""), do: {:ok, nil}

  defp map_body(name, body) do
    case Bridge.ETF.plain_term(body) do
      {:ok, %{} = map} -> {:ok, map}
      _ -> bad(name, "section #{name} is not an ETF map of plain terms")
    end
  end

  defp bad(field, text) do
    {:error,
     Error.new(:bad_frame, :bad_provenance, field: field, message: "bad_provenance: #{text}")}
  end

  @doc """
  The provenance block of a frame whose `header` passed header validation,
  read from `head` (the frame's bytes from offset 0, at least up to the end
  of the block): `nil` when it has none (SPEC §5.4 checks P1–P4). The stored
  meta of a frame with flag `HOLDS_META` is kept for the frames that name it.
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
          do: parse_and_keep(block, h),
          else:
            {:error,
             Error.new(:bad_frame, :provenance_checksum_mismatch,
               field: :provenance_checksum,
               value: h.provenance_checksum,
               limit: computed
             )}
    end
  end

  # A frame with HOLDS_META holds its call's meta for the frames after it:
  # kept (Bridge.Provenance.Stored).
  defp parse_and_keep(block, %Header{flags: flags}) do
    with {:ok, p} <- parse(block) do
      if (flags &&& Header.flag_holds_meta()) != 0, do: Bridge.Provenance.Stored.remember(p)
      {:ok, p}
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
      case Bridge.ETF.plain_term(body) do
        {:ok, %{"frame" => _}} -> {call, at, raw}
        {:ok, %{} = map} -> entry(call, at, Map.put(map, "frame", frame_id))
        _ -> {call, at, raw}
      end

    {older ++ [newest], p.summary}
  end

  @doc false
  # Whether the meta is over 1024 bytes: stored once per call, named by the
  # others (SPEC §5.4).
  @spec stored?(t()) :: boolean()
  def stored?(%__MODULE__{meta: meta}), do: byte_size(meta) > @inline_meta

  @doc false
  # `p` with its meta named by meta_ref instead: what the frames of a call after
  # the first carry when the meta is stored.
  @spec referring(t()) :: t()
  def referring(%__MODULE__{meta: meta} = p) do
    {:ok, digest} = NIF.xxh3_64(meta)
    %{p | meta: "", meta_ref: {digest, byte_size(meta)}}
  end

  @doc false
  # Whether a block starts with a stored meta: its frame sets HOLDS_META.
  @spec holds_meta?(binary()) :: boolean()
  def holds_meta?(<<2, len::little-32, _::binary>>), do: len > @inline_meta
  def holds_meta?(_block), do: false

  @doc false
  # The meta body of `p`, its own or the stored one its meta_ref names (when
  # this node has read it), or "".
  @spec meta_body(t()) :: binary()
  def meta_body(%__MODULE__{meta: "", meta_ref: {digest, len}}),
    do: Bridge.Provenance.Stored.lookup(digest, len) || ""

  def meta_body(%__MODULE__{meta: meta}), do: meta

  @doc false
  # A lineage entry of the given body.
  @spec entry(non_neg_integer(), non_neg_integer(), map()) :: entry()
  def entry(call, at, body) do
    encoded = :erlang.term_to_binary(body)

    {call, at,
     <<18 + byte_size(encoded)::little-16, call::little-64, at::little-64, encoded::binary>>}
  end

  @doc """
  The block as plain data: `producer` (a map or `nil`), `meta` (a map),
  `lineage` (a list of maps, oldest first, each with `"call"`, `"at"`,
  `"handler"`, `"worker"`, `"inputs"` and, but for the newest, `"frame"`),
  `summary` (`nil` or a map of `"count"`, `"first_at"`, `"digest"`) and
  `meta_ref` (`nil`, or where a stored meta is and whether this node has it).
  A body that is not a map of plain terms is the block's `bad_provenance`
  (SPEC §5.4 check P4), naming its section.
  """
  @spec describe(t() | nil) :: {:ok, map()} | {:error, Error.t()}
  def describe(nil),
    do: {:ok, %{producer: nil, meta: %{}, lineage: [], summary: nil, meta_ref: nil}}

  def describe(%__MODULE__{} = p) do
    with {:ok, producer} <- map_body(:producer, p.producer),
         {:ok, meta} <- map_body(:meta, meta_body(p)),
         {:ok, lineage} <- described_entries(p.lineage) do
      {:ok,
       %{
         producer: producer,
         meta: meta || %{},
         lineage: lineage,
         summary:
           case p.summary do
             nil -> nil
             {c, f, d} -> %{"count" => c, "first_at" => f, "digest" => d}
           end,
         meta_ref:
           case p.meta_ref do
             nil ->
               nil

             {digest, len} ->
               found = Bridge.Provenance.Stored.lookup(digest, len) != nil
               %{"digest" => digest, "length" => len, "found" => found}
           end
       }}
    end
  end

  defp described_entries(entries) do
    Enum.reduce_while(entries, {:ok, []}, fn {call, at, <<_::binary-size(18), body::binary>>},
                                             {:ok, acc} ->
      case map_body(:lineage, body) do
        {:ok, %{} = map} -> {:cont, {:ok, [Map.merge(map, %{"call" => call, "at" => at}) | acc]}}
        _ -> {:halt, bad(:lineage, "a lineage entry's body is not an ETF map of plain terms")}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end
end
