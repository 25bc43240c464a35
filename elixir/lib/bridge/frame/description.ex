defmodule Bridge.Frame.Description do
  @moduledoc """
  What `Bridge.Frame.describe/1` tells of a frame, from its header, metadata and
  provenance block (protocol/SPEC.md §5): a map of

    * `format`, `codec` — names (`:tensor`, `:none`, ...); `version` —
      `"major.minor"` of the frame header;
    * `schema` — `%{id: u64, version: u32, name: name | nil}` (the name from
      the metadata of a custom or typed-schema frame);
    * `descriptor` — the format's metadata read as data (a tensor's dtype,
      shape and order; an Arrow frame's counts; ...), or `nil`;
    * `lengths` — bytes of the `frame`, `metadata`, `provenance` block,
      `payload` as stored and `decoded`; `payload_offset`, `generation`;
    * `checksum` — `:not_verified` (the payload has a checksum, `describe`
      does not read the payload to check it) or `:none`; `payload_checksum`;
    * `frame_id`, `created_at` (a `DateTime`, UTC, or `nil`), `created_at_ns`;
    * `producer` — `%{"side", "node", "os_pid", "worker", "version"}` or `nil`;
    * `meta` — the call's user metadata (a map, `%{}` when none);
    * `lineage` — the calls the value came through, oldest first: maps of
      `"call"`, `"at"`, `"handler"`, `"worker"`, `"inputs"` and (but for the
      newest) `"frame"`; `summary` — `nil`, or what was dropped from its front
      (`"count"`, `"first_at"`, `"digest"`);
    * `meta_ref` — `nil`, or, when the call's meta was stored once in another
      of its frames (over 1024 bytes), `"digest"`, `"length"` and `"found"`:
      whether this node has read that frame, and `meta` is the stored body;
    * `provenance_error` — `nil`, or the `Bridge.Error` the block gave (the
      rest of the description stands);
    * `handle` — `"/proc/PID/fd/FD@OFFSET"` for a live slice, else `nil`.

  `to_json/1` gives the form the inspect commands print, the same from Elixir
  and Python.
  """

  import Bitwise

  alias Bridge.{Error, Header, Provenance}

  @type t :: %{
          format: atom(),
          codec: atom(),
          version: String.t(),
          schema: map(),
          descriptor: term(),
          lengths: map(),
          payload_offset: non_neg_integer(),
          generation: non_neg_integer(),
          checksum: :not_verified | :none,
          payload_checksum: non_neg_integer(),
          frame_id: non_neg_integer(),
          created_at: DateTime.t() | nil,
          created_at_ns: non_neg_integer(),
          producer: map() | nil,
          meta: map(),
          lineage: [map()],
          summary: map() | nil,
          meta_ref: map() | nil,
          provenance_error: Error.t() | nil,
          handle: String.t() | nil
        }

  @doc false
  @spec build(map()) :: t()
  def build(%{header: h, metadata: metadata} = found) do
    {:ok, none} = Provenance.describe(nil)

    {prov, error} =
      case found.provenance do
        nil ->
          {none, nil}

        %Error{} = e ->
          {none, e}

        %Provenance{} = p ->
          case Provenance.describe(p) do
            {:ok, prov} -> {prov, nil}
            {:error, e} -> {none, e}
          end
      end

    descriptor = descriptor(metadata)

    %{
      format: Header.format_name(h.format),
      codec: Header.codec_name(h.codec),
      version: "#{h.version_major}.#{h.version_minor}",
      schema: %{id: h.schema_id, version: h.schema_version, name: schema_name(descriptor)},
      descriptor: descriptor,
      lengths: %{
        frame: found.frame_size,
        metadata: h.metadata_length,
        provenance: h.provenance_length,
        payload: h.payload_length,
        decoded: h.decoded_length
      },
      payload_offset: h.payload_offset,
      generation: h.generation,
      checksum:
        if((h.flags &&& Header.flag_payload_checksum()) != 0, do: :not_verified, else: :none),
      payload_checksum: h.payload_checksum,
      frame_id: h.frame_id,
      created_at: created_at(h.created_at),
      created_at_ns: h.created_at,
      producer: prov.producer,
      meta: prov.meta,
      lineage: prov.lineage,
      summary: prov.summary,
      meta_ref: prov.meta_ref,
      provenance_error: error,
      handle: Map.get(found, :handle)
    }
  end

  defp created_at(0), do: nil
  defp created_at(ns), do: DateTime.from_unix!(div(ns, 1000), :microsecond)

  # Metadata is JSON (tensor, custom) or ETF (Arrow counts, records, typed schemas).
  defp descriptor(""), do: nil

  defp descriptor(<<131, _::binary>> = metadata) do
    case Bridge.ETF.plain_term(metadata) do
      {:ok, term} -> term
      _ -> nil
    end
  end

  defp descriptor(<<"{", _::binary>> = metadata) do
    case Bridge.JSON.decode(metadata) do
      {:ok, term} -> term
      _ -> nil
    end
  end

  defp descriptor(_metadata), do: nil

  defp schema_name(%{"type" => name}) when is_binary(name), do: name
  defp schema_name({name, version}) when is_binary(name) and is_binary(version), do: name
  defp schema_name(_), do: nil

  @doc """
  The description as JSON text (keys sorted, two-space indent): what
  `mix beambridge.inspect` and `python -m beambridge inspect` print.
  `created_at` becomes nanoseconds since the epoch and `created_at_utc` an
  ISO 8601 time with nanoseconds; tuples become lists, atoms strings, binaries
  that are not UTF-8 `{"hex": ...}`.
  """
  @spec to_json(t()) :: String.t()
  def to_json(%{} = d) do
    utc =
      case d.created_at_ns do
        0 ->
          nil

        ns ->
          secs = DateTime.from_unix!(div(ns, 1_000_000_000)) |> DateTime.to_iso8601()
          frac = ns |> rem(1_000_000_000) |> Integer.to_string() |> String.pad_leading(9, "0")
          String.replace_suffix(secs, "Z", ".#{frac}Z")
      end

    error =
      case d.provenance_error do
        nil -> nil
        %Error{} = e -> %{"reason" => e.reason, "field" => e.field}
      end

    d
    |> Map.drop([:created_at, :created_at_ns, :provenance_error])
    |> Map.merge(%{created_at: d.created_at_ns, created_at_utc: utc, provenance_error: error})
    |> json_value()
    |> encode(0)
    |> IO.iodata_to_binary()
  end

  defp json_value(%{} = m) when not is_struct(m),
    do: Map.new(m, fn {k, v} -> {key(k), json_value(v)} end)

  defp json_value(l) when is_list(l), do: Enum.map(l, &json_value/1)
  defp json_value(t) when is_tuple(t), do: t |> Tuple.to_list() |> json_value()
  defp json_value(v) when v in [nil, true, false], do: v
  defp json_value(a) when is_atom(a), do: Atom.to_string(a)

  defp json_value(b) when is_binary(b),
    do: if(String.valid?(b), do: b, else: %{"hex" => Base.encode16(b, case: :lower)})

  defp json_value(v), do: v

  defp key(k) when is_binary(k), do: if(String.valid?(k), do: k, else: Base.encode16(k))
  defp key(k), do: to_string(k)

  defp encode(nil, _), do: "null"
  defp encode(true, _), do: "true"
  defp encode(false, _), do: "false"
  defp encode(n, _) when is_integer(n), do: Integer.to_string(n)
  defp encode(f, _) when is_float(f), do: py_float(f)
  defp encode(s, _) when is_binary(s), do: [?", escape(s), ?"]
  defp encode([], _), do: "[]"

  defp encode(list, depth) when is_list(list) do
    pad = indent(depth + 1)

    [
      "[\n",
      Enum.map_intersperse(list, ",\n", &[pad, encode(&1, depth + 1)]),
      "\n",
      indent(depth),
      "]"
    ]
  end

  defp encode(map, _) when map_size(map) == 0, do: "{}"

  defp encode(map, depth) do
    pad = indent(depth + 1)

    items =
      map
      |> Enum.sort_by(&elem(&1, 0))
      |> Enum.map_intersperse(",\n", fn {k, v} ->
        [pad, ?", escape(k), "\": ", encode(v, depth + 1)]
      end)

    ["{\n", items, "\n", indent(depth), "}"]
  end

  defp indent(depth), do: String.duplicate("  ", depth)

  # A float as Python's repr writes it (and json.dumps): the shortest digits that
  # read back the same, fixed notation for exponents -4..15 (`0.0001`,
  # `1000000000000000.0`), else `1e-05`, `1.5e+16`.
  defp py_float(f) do
    {sign, digits, exp} = shortest(f)
    point = exp + String.length(digits)

    text =
      cond do
        point - 1 < -4 or point - 1 >= 16 ->
          {first, rest} = String.split_at(digits, 1)
          mantissa = if rest == "", do: first, else: first <> "." <> rest
          e = point - 1
          mantissa <> "e" <> if(e < 0, do: "-", else: "+") <> pad2(abs(e))

        point <= 0 ->
          "0." <> String.duplicate("0", -point) <> digits

        point >= String.length(digits) ->
          digits <> String.duplicate("0", point - String.length(digits)) <> ".0"

        true ->
          {a, b} = String.split_at(digits, point)
          a <> "." <> b
      end

    sign <> text
  end

  defp pad2(n) when n < 10, do: "0#{n}"
  defp pad2(n), do: "#{n}"

  # {sign, significant digits without leading or trailing zeros, exponent}: f =
  # digits * 10^exponent.
  defp shortest(f) do
    text = :erlang.float_to_binary(f, [:short])

    {sign, text} =
      if String.starts_with?(text, "-"), do: {"-", String.slice(text, 1..-1)}, else: {"", text}

    {mantissa, exp} =
      case String.split(text, "e") do
        [m, e] -> {m, String.to_integer(e)}
        [m] -> {m, 0}
      end

    {int, frac} =
      case String.split(mantissa, ".") do
        [i, f] -> {i, f}
        [i] -> {i, ""}
      end

    all = int <> frac
    exp = exp - String.length(frac)
    trimmed = String.trim_trailing(all, "0")
    exp = exp + (String.length(all) - String.length(trimmed))
    digits = String.trim_leading(trimmed, "0")
    if digits == "", do: {sign, "0", 0}, else: {sign, digits, exp}
  end

  defp escape(s) do
    for <<c::utf8 <- s>>, into: "" do
      case c do
        ?" -> "\\\""
        ?\\ -> "\\\\"
        ?\n -> "\\n"
        ?\r -> "\\r"
        ?\t -> "\\t"
        ?\b -> "\\b"
        ?\f -> "\\f"
        c when c < 0x20 -> escape_unicode(c)
        c when c > 0x7E -> escape_unicode(c)
        c -> <<c>>
      end
    end
  end

  # As Python's json.dumps with ensure_ascii (its default): \\uXXXX, surrogate pairs.
  defp escape_unicode(c) when c > 0xFFFF do
    v = c - 0x10000
    escape_unicode(0xD800 + (v >>> 10)) <> escape_unicode(0xDC00 + (v &&& 0x3FF))
  end

  defp escape_unicode(c),
    do: "\\u" <> String.pad_leading(Integer.to_string(c, 16) |> String.downcase(), 4, "0")
end
