defmodule Bridge.Remote.Wire do
  @moduledoc false
  # A term as it crosses the distribution connection to or from another node's
  # pool (protocol/SPEC.md §15.2). Distribution carries the term; every binary of
  # at least @min bytes in it (a tensor's data, an Arrow buffer, a plain binary,
  # at any depth of lists, tuples and map values) is compressed when the
  # setting says so, into a frame (SPEC §5) whose header carries the codec and
  # the decoded length: {:"$bb_frame", frame}. The receiver checks the header,
  # refuses a decoded length above its limit before allocating, and decompresses
  # (Bridge.Codec); corruption is a typed error. Binaries left as they are cross
  # as they are: distribution sends a large binary without copying it into a
  # buffer first.

  alias Bridge.{Codec, Error, Header}
  alias Bridge.Codec.Choice

  @min 65_536
  @resample 8 * 1_048_576
  @codecs %{lz4: :lz4_frame, zstd: :zstd, gzip: :gzip}

  @typedoc "A compression setting (`:compress`)."
  @type setting :: :auto | :none | :lz4 | :zstd | :gzip

  @doc false
  @spec settings() :: [setting()]
  def settings, do: [:auto, :none, :lz4, :zstd, :gzip]

  @doc false
  # `{:ok, packed, sizes}`: the term with its large binaries compressed as
  # `setting` says for a path of `path_speed` bytes/s; sizes are the bytes of
  # the large binaries that go as they are (`plain`) and of the frames
  # (`framed`), nil under :none (the term is not walked).
  @spec pack(term(), setting(), number()) :: {:ok, term(), map() | nil} | {:error, Error.t()}
  def pack(term, :none, _path_speed), do: {:ok, term, nil}

  def pack(term, setting, path_speed) do
    acc = {%{plain: 0, framed: 0}, nil, 0}
    {packed, {sizes, _, _}} = walk(term, acc, &pack_binary(&1, &2, setting, path_speed))
    {:ok, packed, sizes}
  catch
    {:bad_term, %Error{} = error} -> {:error, error}
  end

  @doc false
  # The term as it was packed; `max_decoded` bounds every frame's decoded length.
  @spec unpack(term(), pos_integer()) :: {:ok, term()} | {:error, Error.t()}
  def unpack(term, max_decoded) do
    {value, _} = walk(term, 0, &unpack_frame(&1, &2, max_decoded))
    {:ok, value}
  catch
    {:bad_frame, %Error{} = error} -> {:error, error}
  end

  # Maps keep their keys (small, and a key that changed would change the map).
  defp walk(bin, acc, fun) when is_binary(bin), do: fun.(bin, acc)
  defp walk({:"$bb_frame", _} = frame, acc, fun), do: fun.(frame, acc)

  defp walk(list, acc, fun) when is_list(list), do: walk_list(list, acc, fun, [])

  defp walk(tuple, acc, fun) when is_tuple(tuple) do
    {items, acc} = walk_list(Tuple.to_list(tuple), acc, fun, [])
    {List.to_tuple(items), acc}
  end

  defp walk(map, acc, fun) when is_map(map) do
    {pairs, acc} =
      Enum.map_reduce(:maps.to_list(map), acc, fn {k, v}, acc ->
        {v, acc} = walk(v, acc, fun)
        {{k, v}, acc}
      end)

    {:maps.from_list(pairs), acc}
  end

  defp walk(other, acc, _fun), do: {other, acc}

  defp walk_list([h | t], acc, fun, out) do
    {h, acc} = walk(h, acc, fun)
    walk_list(t, acc, fun, [h | out])
  end

  defp walk_list([], acc, _fun, out), do: {Enum.reverse(out), acc}

  # an improper tail stays as it is (the receiving encoder refuses it)
  defp walk_list(tail, acc, _fun, out), do: {:lists.reverse(out, tail), acc}

  defp pack_binary({:"$bb_frame", _} = term, _acc, _setting, _speed) do
    throw(
      {:bad_term,
       Error.new(:bad_call, :bad_term,
         field: :args,
         value: term,
         limit: "no atom starting with \"$bb_\"",
         message: "bad call: bad_term: {:\"$bb_frame\", _} is the bridge's own wire form"
       )}
    )
  end

  defp pack_binary(bin, acc, _setting, _speed) when byte_size(bin) < @min, do: {bin, acc}

  # acc: {sizes, :auto's last choice, bytes since it sampled}
  defp pack_binary(bin, {sizes, last, since}, setting, speed) do
    {codec, last, since} = codec(setting, bin, last, since, speed)

    with false <- codec == :none,
         {:ok, compressed} <- Codec.compress(codec, bin),
         true <- byte_size(compressed) < byte_size(bin) or setting != :auto,
         {:ok, frame} <-
           Header.encode_frame(compressed,
             codec: codec,
             decoded_length: byte_size(bin),
             checksum: false
           ) do
      {{:"$bb_frame", frame}, {%{sizes | framed: sizes.framed + byte_size(frame)}, last, since}}
    else
      # a codec that failed (out of memory) or did not help: the binary as it is
      _ -> {bin, {%{sizes | plain: sizes.plain + byte_size(bin)}, last, since}}
    end
  end

  # :auto samples a binary when it has not yet, or when @resample bytes went by
  # since it did; the binaries between take its last choice (many binaries of
  # one term are usually alike, and a sample costs what 64 KiB on the wire does).
  defp codec(:auto, bin, last, since, speed) do
    if last == nil or since >= @resample do
      codec = Choice.choose(bin, speed)
      {codec, codec, byte_size(bin)}
    else
      {last, last, since + byte_size(bin)}
    end
  end

  defp codec(setting, _bin, last, since, _speed), do: {Map.fetch!(@codecs, setting), last, since}

  defp unpack_frame({:"$bb_frame", frame}, acc, max_decoded) when is_binary(frame) do
    with {:ok, %{header: h, payload: payload}} <- Header.decode_frame(frame, verify: false),
         {:ok, bin} <-
           Codec.decompress(Header.codec_name(h.codec), payload, h.decoded_length, max_decoded) do
      {bin, acc}
    else
      {:error, %Error{} = error} -> throw({:bad_frame, error})
    end
  end

  defp unpack_frame(bin, acc, _max) when is_binary(bin), do: {bin, acc}

  defp unpack_frame(other, _acc, _max) do
    throw({:bad_frame, Header.frame_error(:bad_term, :frame, other, "a binary frame")})
  end
end
