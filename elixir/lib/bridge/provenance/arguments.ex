defmodule Bridge.Provenance.Arguments do
  @moduledoc false
  # The provenance block of the argument frames of one call (protocol/SPEC.md
  # §5.4), in the caller's process: the BEAM as producer, the call's `meta:`
  # (else the metadata of the result frame an argument's bytes were read from)
  # and that result frame's lineage, its newest entry stamped with the frame's
  # id. Made once per call (context/1), then per frame written (block/2).

  alias Bridge.{Error, Provenance}

  @type t :: %{
          producer: binary(),
          meta: binary(),
          given: boolean(),
          held: non_neg_integer() | nil,
          option: map() | nil
        }

  # SPEC §5.4: the largest meta a writer puts in a frame (ETF bytes).
  @max_meta 49_152

  @doc false
  # The call's context from its `meta:` option (nil: none given). A meta that
  # is not a map, or not plain data, is an ArgumentError-free :bad_call error.
  @spec context(term()) :: {:ok, t()} | {:error, Error.t()}
  def context(nil), do: {:ok, default()}

  def context(meta) when is_map(meta) do
    case plain(meta) do
      {:ok, map} ->
        case encode_meta(map) do
          body when byte_size(body) <= @max_meta ->
            {:ok, %{producer: producer(), meta: body, given: true, held: nil, option: map}}

          body ->
            {:error,
             Error.new(:bad_call, :too_large,
               field: :meta,
               value: byte_size(body),
               limit: @max_meta,
               message:
                 "bad call: too_large: meta: is #{byte_size(body)} bytes encoded, over " <>
                   "#{@max_meta}: every frame of the call carries it; keep it to ids and " <>
                   "small values (SPEC §5.4)"
             )}
        end

      {:error, bad} ->
        {:error,
         Error.new(:bad_call, :badarg,
           field: :meta,
           value: bad,
           message:
             "bad call: badarg: meta: holds #{inspect(bad, limit: 5)}; a meta map holds " <>
               "plain data (numbers, binaries, atoms, lists, tuples, maps; keys as strings " <>
               "or atoms)"
         )}
    end
  end

  def context(other) do
    {:error,
     Error.new(:bad_call, :badarg,
       field: :meta,
       value: other,
       message:
         "bad call: badarg: meta: must be a map, e.g. meta: %{\"round\" => 12}, " <>
           "got #{inspect(other, limit: 5)}"
     )}
  end

  @doc false
  # The context of a call without meta: (and of stream elements).
  @spec default() :: t()
  def default, do: %{producer: producer(), meta: "", given: false, held: nil, option: nil}

  @doc false
  # The meta map as the worker reads it (call option "meta", SPEC §8.3), or nil.
  @spec option(t()) :: map() | nil
  def option(%{option: map}), do: map

  defp encode_meta(map) when map_size(map) == 0, do: ""
  defp encode_meta(map), do: :erlang.term_to_binary(map)

  # Atom keys become strings (Python reads them as str); values stay as they are.
  defp plain(%{} = map) do
    Enum.reduce_while(map, {:ok, %{}}, fn {k, v}, {:ok, acc} ->
      with {:ok, key} <- key(k), {:ok, value} <- value(v) do
        {:cont, {:ok, Map.put(acc, key, value)}}
      else
        {:error, bad} -> {:halt, {:error, bad}}
      end
    end)
  end

  defp key(k) when is_binary(k), do: {:ok, k}
  defp key(k) when is_atom(k) and k not in [nil, true, false], do: {:ok, Atom.to_string(k)}
  defp key(k) when is_integer(k), do: {:ok, k}
  defp key(k), do: {:error, k}

  defp value(v) when is_map(v) and not is_struct(v), do: plain(v)
  defp value(v) when is_binary(v) or is_number(v) or is_atom(v), do: {:ok, v}

  defp value(v) when is_list(v), do: list(v, [])

  defp value(v) when is_tuple(v) do
    with {:ok, list} <- value(Tuple.to_list(v)), do: {:ok, List.to_tuple(list)}
  end

  defp value(v), do: {:error, v}

  defp list([], acc), do: {:ok, Enum.reverse(acc)}

  defp list([h | t], acc) do
    with {:ok, x} <- value(h), do: list(t, [x | acc])
  end

  defp list(improper_tail, _acc), do: {:error, improper_tail}

  # The producer section of this node (cached per node name: it may be started
  # after the first call).
  defp producer do
    key = {__MODULE__, node()}

    case :persistent_term.get(key, nil) do
      nil ->
        body =
          :erlang.term_to_binary(%{
            "side" => "elixir",
            "node" => Atom.to_string(node()),
            "os_pid" => String.to_integer(List.to_string(:os.getpid())),
            "version" => to_string(Application.spec(:beambridge, :vsn) || "")
          })

        :persistent_term.put(key, body)
        body

      body ->
        body
    end
  end

  @doc false
  # The block of an argument frame whose payload is `payload` (a binary or
  # iodata): derived from the frame its bytes were read from, if they are a
  # worker's result (Bridge.Frame.source/1). A meta over 1024 bytes goes in the
  # first such block of the call only; the others name it (SPEC §5.4): the
  # context returned says which it was.
  @spec block(t(), iodata()) :: {binary(), t()}
  def block(ctx, payload) do
    p =
      case first_binary(payload) do
        nil -> nil
        bin -> source_block(bin)
      end

    block =
      case p do
        nil ->
          %Provenance{producer: ctx.producer, meta: ctx.meta}

        {frame_id, %Provenance{} = src} ->
          {lineage, summary} = Provenance.chained(src, frame_id)

          {meta, ref} =
            cond do
              ctx.given -> {ctx.meta, nil}
              src.meta_ref == nil -> {src.meta, nil}
              # a stored meta this node read goes on as the call's own
              (body = Provenance.meta_body(src)) != "" -> {body, nil}
              true -> {"", src.meta_ref}
            end

          %Provenance{
            producer: ctx.producer,
            meta: meta,
            meta_ref: ref,
            lineage: lineage,
            summary: summary
          }
      end

    {block, ctx} = store_once(block, ctx)

    case Provenance.encode(block) do
      {:ok, bin} -> {bin, ctx}
      # the source's own chain and meta fit in its block: only ours can be too large
      {:error, _} -> {Provenance.encode!(%Provenance{producer: ctx.producer}), ctx}
    end
  end

  defp store_once(%Provenance{meta: meta} = p, ctx) do
    if Provenance.stored?(p) do
      {:ok, digest} = Bridge.NIF.xxh3_64(meta)

      if ctx.held == digest,
        do: {Provenance.referring(p), ctx},
        else: {p, %{ctx | held: digest}}
    else
      {p, ctx}
    end
  end

  defp source_block(bin) do
    case Bridge.Frame.source(bin) do
      {:ok, %{header: h, provenance: %Provenance{} = p}} -> {h.frame_id, p}
      _ -> nil
    end
  end

  defp first_binary(bin) when is_binary(bin), do: bin
  defp first_binary([h | t]), do: first_binary(h) || first_binary(t)
  defp first_binary(_), do: nil
end
