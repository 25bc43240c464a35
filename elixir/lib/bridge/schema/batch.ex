defmodule Bridge.Schema.Batch do
  @moduledoc """
  Batches of typed-schema values (protocol/formats/ssz.md, "Batches"): a list of
  values of one schema is one SSZ `List` of its container, the bytes any SSZ
  implementation reads, written and read by each module's generated code, value
  after value. A value that does not fit, or bytes that are no list, are errors
  naming the index and the field.

  ## Examples

      iex> defmodule Doc.Sample do
      ...>   use Bridge.Schema, name: "doc.Sample", version: "1.0"
      ...>   field :step, :uint16
      ...>   field :loss, :float32
      ...> end
      iex> {:ok, bin} = Bridge.Schema.Batch.encode(Doc.Sample, [struct(Doc.Sample, step: 1, loss: 0.5), struct(Doc.Sample, step: 2, loss: 0.25)])
      iex> Base.encode16(bin, case: :lower)
      "01000000003f02000000803e"
      iex> {:ok, [a, b]} = Bridge.Schema.Batch.decode(Doc.Sample, bin)
      iex> {a.step, a.loss, b.step, b.loss}
      {1, 0.5, 2, 0.25}
      iex> bad = List.duplicate(struct(Doc.Sample, step: 1, loss: 0.5), 9) ++ [struct(Doc.Sample, step: 70_000, loss: 0.0)]
      iex> {:error, e} = Bridge.Schema.Batch.encode(Doc.Sample, bad)
      iex> e.message
      "bad_value: Sample[9].step is 70000, expected uint16 (0 to 65535)"
  """

  import Bitwise, only: [<<<: 2, bor: 2]

  alias Bridge.Error
  alias Bridge.Schema.Versions

  defmodule Piece do
    @moduledoc false
    # `count` values of schema `module` written as the SSZ list `data`: an element of
    # the stream of pieces a long list goes as (Bridge.Schema.Batch.pieces/5).
    @enforce_keys [:module, :data, :count]
    defstruct [:module, :data, :count]
  end

  # The bytes a piece of a long list is cut to hold, about (pieces/5).
  @piece_bytes 4 <<< 20
  # SSZ offsets are u32: a list of variable-size values ends within 4 GiB.
  @offset_limit 1 <<< 32
  # Batches whose values need at least this many words of heap are read with room for
  # them (with_heap/2), up to @heap_max words (2 GiB).
  @heap_room 1 <<< 20
  @heap_max 1 <<< 28

  @doc "The SSZ bytes of `values`, each a struct of schema `module`."
  @spec encode(module(), [struct()]) :: {:ok, binary()} | {:error, Error.t()}
  def encode(module, values) when is_list(values) do
    with {:ok, data, []} <- piece(module, values, length(values), 0), do: {:ok, data}
  end

  @doc false
  # The SSZ bytes of the first `n` of `values` (`first`: the index of the first in
  # error paths) and the values after them.
  @spec piece(module(), [struct()], non_neg_integer(), non_neg_integer()) ::
          {:ok, binary(), [struct()]} | {:error, Error.t()}
  def piece(module, values, n, first) do
    short = module.__schema__(:short)

    if module.__schema__(:fixed_size) != nil do
      {data, rest} = fixed(values, n, module, short, <<>>)
      {:ok, data, rest}
    else
      {heads, bodies, rest} = variable(values, n, module, short, 4 * n, <<>>, <<>>)
      total = 4 * n + byte_size(bodies)

      if total < @offset_limit,
        do: {:ok, <<heads::binary, bodies::binary>>, rest},
        else:
          {:error,
           Error.new(:bad_call, :bad_value,
             field: :schema,
             value: "#{short}[]",
             message:
               "bad_value: #{short}[]: #{n} values of #{total} bytes, past the 4 GiB an SSZ " <>
                 "offset reaches: send them in parts"
           )}
    end
  catch
    {:ssz, %Error{}} ->
      {:error, first_bad(Enum.take(values, n), &module.__bb_encode__/2, module, first)}
  end

  @doc false
  # `values` (`n` of them) as a stream of pieces of at most `size` values (Bridge.Encoder
  # sends a long list so, SPEC §8.6 "Pieces"), each written when it is taken: the first
  # of `:first` values (1,024), each next one of as many as the values before say fit
  # in about `:bytes` (4 MiB), so a piece of large values stays small enough for a
  # slice. A value that does not fit raises its Bridge.Error, naming its index in
  # `values`.
  @spec pieces(module(), [struct()], non_neg_integer(), pos_integer(), keyword()) ::
          Enumerable.t()
  def pieces(module, values, n, size, opts \\ []) do
    bytes = Keyword.get(opts, :bytes, @piece_bytes)

    Stream.unfold({values, 0, min(size, Keyword.get(opts, :first, 1024))}, fn
      {_rest, ^n, _k} ->
        nil

      {rest, first, k} ->
        k = min(k, n - first)

        case piece(module, rest, k, first) do
          {:ok, data, rest} ->
            next = (bytes * k) |> div(max(byte_size(data), 1)) |> max(1) |> min(size)
            {%Piece{module: module, data: data, count: k}, {rest, first + k, next}}

          {:error, error} ->
            raise error
        end
    end)
  end

  # The values' bytes appended one after another to one binary, which the VM grows in
  # place (off the heap: what is left on the caller's heap is a few words a value).
  defp fixed(rest, 0, _module, _short, acc), do: {acc, rest}

  defp fixed([v | rest], n, module, short, acc),
    do: fixed(rest, n - 1, module, short, module.__bb_encode_into__(v, short, acc))

  # Variable-size values: their offsets too, each where its value starts (`base`, the
  # offsets' own size, plus the bytes before it).
  defp variable(rest, 0, _module, _short, _base, heads, acc), do: {heads, acc, rest}

  defp variable([v | rest], n, module, short, base, heads, acc) do
    heads = <<heads::binary, base + byte_size(acc)::little-32>>
    variable(rest, n - 1, module, short, base, heads, module.__bb_encode_into__(v, short, acc))
  end

  @doc """
  The structs of schema `module` that `data` (an SSZ list of them) holds; `minor`
  (default: the module's) is the minor version they were written at
  (`Bridge.Schema.Versions`).
  """
  @spec decode(module(), binary(), non_neg_integer() | nil) ::
          {:ok, [struct()]} | {:error, Error.t()}
  def decode(module, data, minor \\ nil) when is_binary(data) do
    minor = minor || module.__schema__(:version) |> Versions.parse() |> elem(1)
    short = module.__schema__(:short)
    fixed = fixed_size(module, minor)

    with {:ok, n} <- count(data, fixed, short) do
      try do
        {:ok,
         with_heap(words(module, n, data), fn -> read(module, minor, data, fixed, short) end)}
      catch
        {:ssz, %Error{}} -> first_error(module, minor, data, fixed, short)
      end
    end
  end

  # The fixed size of the module's values as they were at `minor`.
  defp fixed_size(module, minor) do
    sizes =
      for {_name, t} <- Versions.fields_at(module, minor), do: Bridge.Schema.SSZ.fixed_size(t)

    if nil in sizes, do: nil, else: Enum.sum(sizes)
  end

  # How many values `data` holds: a whole number of fixed-size values, or as many as
  # its first offset says (every offset is checked as the values are read).
  defp count(<<>>, _fixed, _short), do: {:ok, 0}

  defp count(data, fixed, short) when is_integer(fixed) do
    if fixed > 0 and rem(byte_size(data), fixed) == 0,
      do: {:ok, div(byte_size(data), fixed)},
      else: bad_ssz(short, "#{byte_size(data)} bytes are no whole number of #{fixed}")
  end

  defp count(<<first::little-32, _::binary>> = data, nil, _short)
       when rem(first, 4) == 0 and first >= 4 and first <= byte_size(data),
       do: {:ok, div(first, 4)}

  defp count(data, nil, short),
    do: bad_ssz(short, "a first offset that is no offset in #{byte_size(data)} bytes")

  # The values, read one after another straight from `data` (no list of their bytes
  # first: that list, live while the values are made, would be copied by every
  # collection on the way); any error is thrown and found again by first_error/5.
  defp read(_module, _minor, <<>>, _fixed, _short), do: []

  defp read(module, minor, data, fixed, short) when is_integer(fixed),
    do: for(<<part::binary-size(fixed) <- data>>, do: module.__bb_read__(minor, part, short))

  defp read(module, minor, <<first::little-32, _::binary>> = data, nil, short) do
    <<heads::binary-size(first), _::binary>> = data
    walk(module, minor, data, heads, short, [])
  end

  defp walk(module, minor, data, <<lo::little-32, rest::binary>>, short, acc) do
    hi =
      case rest do
        <<next::little-32, _::binary>> -> next
        <<>> -> byte_size(data)
      end

    if lo > hi or hi > byte_size(data), do: throw({:ssz, %Error{}})
    value = module.__bb_read__(minor, binary_part(data, lo, hi - lo), short)
    walk(module, minor, data, rest, short, [value | acc])
  end

  defp walk(_module, _minor, _data, <<>>, _short, acc), do: :lists.reverse(acc)

  # The first error in `data`: a bad offset, or the first value that does not read
  # (its path naming the index).
  defp first_error(module, minor, data, fixed, short) do
    with {:ok, parts} <- parts(data, fixed, short) do
      {:error, first_bad(parts, &module.__bb_read__(minor, &1, &2), module)}
    end
  end

  # Words of heap the values of a batch of `n` in `data` take as they are read, with
  # room to spare: each value's map and a few words a field, and up to 2 a byte of
  # its variable parts (lists of integers). Room never used is never touched.
  defp words(module, n, data),
    do: n * (8 + 6 * length(module.__schema__(:fields))) + 2 * byte_size(data)

  # Runs `fun` with room for `words` on this process's heap, made at once (a minor
  # collection copies only what is young), so that a large batch's values are not
  # copied by one collection after another as they are made; gives the room back
  # after (the next collection sizes the heap to what is live). While room made
  # for a whole list holds (reserve/2), its pieces are read into it.
  defp with_heap(words, fun) when words < @heap_room, do: fun.()

  defp with_heap(words, fun) do
    if Process.get(__MODULE__) != nil do
      fun.()
    else
      old = Process.flag(:min_heap_size, min(words, @heap_max))

      try do
        :erlang.garbage_collect(self(), type: :minor)
        fun.()
      after
        Process.flag(:min_heap_size, old)
      end
    end
  end

  @doc false
  # Room for values of `words` words whose SSZ takes `bytes`, read in pieces (SPEC
  # §8.6) by this process: its heap made that large at once, and its binary heap
  # large enough for the pieces' payloads, so no collection copies the values read
  # so far as each piece comes. What an earlier large result left on the heap is
  # let go first (a full collection), so that its memory is used again rather than
  # pages the kernel has yet to hand over. Nothing is done for few words, or when
  # room is reserved already; release/0 gives it back.
  @spec reserve(non_neg_integer(), non_neg_integer()) :: :ok
  def reserve(words, bytes) do
    if words >= @heap_room and Process.get(__MODULE__) == nil do
      :erlang.garbage_collect()
      old_heap = Process.flag(:min_heap_size, min(words, @heap_max))
      old_bin = Process.flag(:min_bin_vheap_size, min(div(bytes, 4), @heap_max))
      :erlang.garbage_collect(self(), type: :minor)
      Process.put(__MODULE__, {old_heap, old_bin})
    end

    :ok
  end

  @doc false
  @spec release() :: :ok
  def release do
    case Process.delete(__MODULE__) do
      {heap, bin} ->
        Process.flag(:min_heap_size, heap)
        Process.flag(:min_bin_vheap_size, bin)
        :ok

      nil ->
        :ok
    end
  end

  # The values' bytes, each a sub-binary (count/3 checks the batch's shape).
  defp parts(data, fixed, short) do
    with {:ok, n} <- count(data, fixed, short) do
      cond do
        n == 0 ->
          {:ok, []}

        is_integer(fixed) ->
          {:ok, for(<<part::binary-size(fixed) <- data>>, do: part)}

        true ->
          <<heads::binary-size(4 * n), _::binary>> = data
          cut(data, for(<<o::little-32 <- heads>>, do: o), 0, [], short)
      end
    end
  end

  # The values' bytes between their offsets, in one pass: an element that ends before
  # it starts, or past the end, is bad.
  defp cut(data, [lo | rest], i, acc, short) do
    hi =
      case rest do
        [next | _] -> next
        [] -> byte_size(data)
      end

    if lo <= hi and hi <= byte_size(data),
      do: cut(data, rest, i + 1, [binary_part(data, lo, hi - lo) | acc], short),
      else:
        bad_ssz(
          "#{short}[#{i}]",
          "offsets #{lo} and #{hi} out of order or past #{byte_size(data)} bytes"
        )
  end

  defp cut(_data, [], _i, acc, _short), do: {:ok, :lists.reverse(acc)}

  # The error of the first item that fails `fun`, its path naming the index.
  defp first_bad(items, fun, module, first \\ 0) do
    short = module.__schema__(:short)

    items
    |> Enum.with_index(first)
    |> Enum.find_value(fn {item, i} ->
      try do
        fun.(item, "#{short}[#{i}]")
        nil
      catch
        {:ssz, %Error{} = error} -> error
      end
    end)
  end

  defp bad_ssz(path, what) do
    {:error,
     Error.new(:bad_call, :bad_ssz,
       field: :schema,
       value: path,
       message: "bad_ssz: #{path}: #{what}"
     )}
  end

  ## In frames

  @doc """
  The frame options of a slice of kind `schema_list` holding a list of values of
  schema `name` at `version`: format `ssz`, `schema_id` `xxh3_64(name)`,
  `schema_version` `major * 65536 + minor`, metadata the ETF of `{name, version}`.
  """
  @spec frame_options(String.t(), String.t()) :: keyword()
  def frame_options(name, version) do
    {:ok, id} = Bridge.NIF.xxh3_64(name)

    [
      format: :ssz,
      schema_id: id,
      schema_version: version_code(version),
      metadata: :erlang.term_to_binary({name, version})
    ]
  end

  @doc """
  The `{name, version}` of an `ssz` frame: its metadata, checked against its header's
  `schema_id` and `schema_version` (`:error` when they disagree or it is no such term).
  """
  @spec frame_schema(binary(), non_neg_integer(), non_neg_integer()) ::
          {:ok, {String.t(), String.t()}} | :error
  def frame_schema(metadata, schema_id, schema_version) do
    with {:ok, {name, version}} when is_binary(name) and is_binary(version) <-
           Bridge.Format.safe_term(metadata),
         {_, _} <- Versions.parse(version),
         {:ok, ^schema_id} <- Bridge.NIF.xxh3_64(name),
         ^schema_version <- version_code(version) do
      {:ok, {name, version}}
    else
      _ -> :error
    end
  end

  defp version_code(version) do
    {major, minor} = Versions.parse(version)
    bor(major <<< 16, minor)
  end
end
