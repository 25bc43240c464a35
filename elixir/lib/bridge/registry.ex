defmodule Bridge.Registry do
  @moduledoc """
  The protocol registry: the tables the Elixir and the Python side must agree on.

  One file, `protocol/registry.json`, holds them: error reasons, handle kinds,
  frame format and codec codes, format policies, the packed dtypes, the
  control-message and tag atoms. This module reads it **at compile time**
  (editing the file recompiles it) and turns every name into an atom then, so
  once the module is loaded `:erlang.binary_to_term(bin, [:safe])` knows every
  atom a peer may send. `beambridge.registry` reads the same file on the Python
  side.

  The other modules take their tables from here at compile time: the atoms a
  worker may send (`Bridge.Worker`), the handle kinds with their frame formats,
  copied kinds and stats forms (`Bridge.Decoder`, `Bridge.Encoder`), the
  policies and packed dtypes (`Bridge.Format`), the format and codec codes
  (`Bridge.Header`). `elixir/test/registry_test.exs` checks that what they do
  matches the file and that they name nothing it lacks.

  ## Examples

      iex> Bridge.Registry.reason?(:bad_magic)
      true
      iex> Bridge.Registry.reason?("no_such_reason")
      false
      iex> Bridge.Registry.handle_kinds()[:records]
      :arrow_stream
      iex> {Bridge.Registry.formats()[:tensor], Bridge.Registry.codecs()[:zstd]}
      {1, 2}
      iex> Bridge.Registry.policies()
      [:auto, :etf, :packed, :arrow]
      iex> Enum.take(Bridge.Registry.packed_dtypes(), 3)
      ["|i1", "|u1", "<i2"]
      iex> Bridge.Registry.reason_meaning(:no_tickets)
      "the worker has no free lease-table ticket, so the value goes inline (SPEC §4)"
      iex> {Bridge.Registry.stats_forms()[:tensor_bundle], Bridge.Registry.records_layouts()}
      {:tensor_slice, [:columns, :rows]}
      iex> {:ready in Bridge.Registry.wire_atoms(), :shutdown in Bridge.Registry.wire_atoms()}
      {true, false}
  """

  @path Path.expand("../../../protocol/registry.json", __DIR__)
  @external_resource @path

  @sides ["elixir", "python"]

  # Compile-time checks: a malformed registry fails the build with the path of
  # the offending entry.
  defmodule Load do
    @moduledoc false

    @spec read!(Path.t()) :: map()
    def read!(path) do
      case Bridge.JSON.decode(File.read!(path)) do
        {:ok, %{} = data} -> data
        {:ok, _} -> bad!(path, "", "the top level must be an object")
        {:error, error} -> bad!(path, "", Exception.message(error))
      end
    end

    @spec bad!(Path.t(), String.t(), String.t()) :: no_return()
    def bad!(path, "", what), do: raise(ArgumentError, "#{Path.relative_to_cwd(path)}: #{what}")
    def bad!(path, where, what), do: bad!(path, "", "#{where}: #{what}")

    @spec fetch!(Path.t(), map(), String.t(), String.t(), (term() -> boolean()), String.t()) ::
            term()
    def fetch!(path, map, key, where, ok?, expected) when is_map(map) do
      value = Map.get(map, key)
      if ok?.(value), do: value, else: bad!(path, "#{where}.#{key}", "must be #{expected}")
    end

    def fetch!(path, _map, _key, where, _ok?, _expected),
      do: bad!(path, where, "must be an object")
  end

  data = Load.read!(@path)
  fetch! = &Load.fetch!(@path, &1, &2, &3, &4, &5)
  object? = &is_map/1
  list? = &is_list/1
  text? = &(is_binary(&1) and &1 != "" and not String.contains?(&1, "\n"))

  reason_kinds = fetch!.(data, "reason_kinds", "", object?, "an object")

  reasons =
    for {name, entry} <- fetch!.(data, "reasons", "", object?, "an object") do
      where = "reasons.#{name}"

      kind = fetch!.(entry, "kind", where, &is_binary/1, "a string")
      also = if Map.has_key?(entry, "also"), do: fetch!.(entry, "also", where, list?, "a list")
      kinds = [kind | also || []]

      for kind <- kinds,
          not Map.has_key?(reason_kinds, kind),
          do: Load.bad!(@path, where, "kind #{inspect(kind)} is not one of reason_kinds")

      sides = fetch!.(entry, "sides", where, list?, "a list")

      if sides == [] or sides -- @sides != [],
        do: Load.bad!(@path, where <> ".sides", "must name elixir and/or python")

      wire = fetch!.(entry, "wire", where, &is_boolean/1, "true or false")
      meaning = fetch!.(entry, "meaning", where, text?, "one non-empty line")
      {String.to_atom(name), %{kind: String.to_atom(kind), wire: wire, meaning: meaning}}
    end

  coded = fn table ->
    for {entry, i} <- Enum.with_index(fetch!.(data, table, "", list?, "a list")), into: %{} do
      where = "#{table}[#{i}]"
      name = fetch!.(entry, "name", where, text?, "a name")
      code = fetch!.(entry, "code", where, &(is_integer(&1) and &1 >= 0), "a code")
      {String.to_atom(name), code}
    end
  end

  formats = coded.("formats")
  codecs = coded.("codecs")
  object_kinds = coded.("object_kinds")

  # The stats forms the BEAM counts (stats.forms entries whose sides hold elixir).
  elixir_forms =
    for {form, entry} <-
          data
          |> fetch!.("stats", "", object?, "an object")
          |> fetch!.("forms", "stats", object?, "an object"),
        "elixir" in fetch!.(entry, "sides", "stats.forms.#{form}", list?, "a list"),
        into: %{},
        do: {form, true}

  handle_kinds =
    for {name, entry} <- fetch!.(data, "handle_kinds", "", object?, "an object") do
      where = "handle_kinds.#{name}"
      format = fetch!.(entry, "format", where, &is_binary/1, "a format name")

      unless Map.has_key?(formats, String.to_atom(format)),
        do: Load.bad!(@path, where, "format #{inspect(format)} is not one of formats")

      copied = fetch!.(entry, "copied", where, object?, "an object")

      ids? =
        &(is_nil(&1) or (is_list(&1) and Enum.all?(&1, fn id -> is_integer(id) and id >= 0 end)))

      schemas = fetch!.(entry, "schemas", where, ids?, "a list of schema ids")
      stats_form = fetch!.(entry, "stats_form", where, &is_map_key(elixir_forms, &1), "a form")

      {String.to_atom(name),
       %{
         format: String.to_atom(format),
         copied: fetch!.(copied, "elixir", where <> ".copied", &is_boolean/1, "true or false"),
         schemas: schemas,
         stats_form: String.to_atom(stats_form)
       }}
    end

  names = fn table ->
    for {entry, i} <- Enum.with_index(fetch!.(data, table, "", list?, "a list")),
        do: String.to_atom(fetch!.(entry, "name", "#{table}[#{i}]", text?, "a name"))
  end

  packed_dtypes =
    for dtype <- fetch!.(data, "packed_dtypes", "", list?, "a list"),
        do: if(text?.(dtype), do: dtype, else: Load.bad!(@path, "packed_dtypes", "strings"))

  @reasons Map.new(reasons)
  @reason_names reasons |> Enum.map(&elem(&1, 0)) |> Enum.sort()
  @reason_strings Map.new(@reason_names, &{Atom.to_string(&1), &1})
  @wire_reasons Enum.sort(for {name, %{wire: true}} <- reasons, do: name)
  @handle_kinds Map.new(handle_kinds, fn {kind, e} -> {kind, e.format} end)
  @handle_kind_schemas for {kind, %{schemas: [_ | _] = ids}} <- handle_kinds,
                           into: %{},
                           do: {kind, ids}
  @copied_kinds Enum.sort(for {kind, %{copied: true}} <- handle_kinds, do: kind)
  @formats formats
  @codecs codecs
  @object_kinds object_kinds
  @lane for {k, v} <- fetch!.(data, "lane", "", object?, "an object"),
            k != "meaning",
            do:
              if(is_integer(v) and v >= 0,
                do: {k, v},
                else: Load.bad!(@path, "lane." <> k, "bytes")
              )
  @signals for {k, v} <- fetch!.(data, "signals", "", object?, "an object"),
               k != "meaning",
               do:
                 if(is_binary(v) and String.starts_with?(v, "SIG"),
                   do:
                     {String.to_atom(k),
                      v |> String.trim_leading("SIG") |> String.downcase() |> String.to_atom()},
                   else: Load.bad!(@path, "signals." <> k, "a POSIX signal name")
                 )
  @policies names.("policies")
  @packed_dtypes packed_dtypes
  # {name, who sends it (nil for tags: whoever sends the data term)}
  used = fn table, from? ->
    for {name, entry} <- fetch!.(data, table, "", object?, "an object") do
      where = "#{table}.#{name}"

      from =
        if from?, do: fetch!.(entry, "from", where, &(&1 in (@sides ++ ["either"])), "a side")

      {name, from}
    end
  end

  messages = used.("messages", true)
  tags = used.("tags", false)

  @messages for {name, _} <- messages, do: name
  @tags for {name, _} <- tags, do: name
  @chunkable_tags for {name, %{"chunkable" => true}} <- data["tags"], do: String.to_atom(name)
  @layouts data |> fetch!.("records_layouts", "", object?, "an object") |> Map.keys()
  @sources data |> fetch!.("slice_sources", "", object?, "an object") |> Map.keys()
  @atoms Enum.map(@messages ++ @tags ++ @layouts ++ @sources, &String.to_atom/1)
         |> Kernel.++(@reason_names ++ Map.keys(@handle_kinds) ++ @policies)
         |> Kernel.++(Map.keys(@formats) ++ Map.keys(@codecs) ++ Map.keys(@object_kinds))
         |> Enum.uniq()
         |> Enum.sort()

  # What a worker may send (protocol/SPEC.md §8.3, §9).
  @wire_atoms (for(
                 {name, from} <- messages ++ tags,
                 from != "elixir",
                 do: String.to_atom(name)
               ) ++
                 Enum.map(@layouts ++ @sources, &String.to_atom/1) ++
                 Map.keys(@handle_kinds) ++ Map.keys(@object_kinds) ++ @wire_reasons)
              |> Enum.uniq()
              |> Enum.sort()
  @records_layouts @layouts |> Enum.map(&String.to_atom/1) |> Enum.sort()
  @stats_forms Map.new(handle_kinds, fn {kind, e} -> {kind, e.stats_form} end)
  @counted_forms elixir_forms |> Map.keys() |> Enum.map(&String.to_atom/1) |> Enum.sort()

  @typedoc "An error reason of the registry (`reasons/0`)."
  @type reason :: atom()

  @doc "Every error reason either side may produce or send, sorted."
  @spec reasons() :: [reason()]
  def reasons, do: @reason_names

  @doc """
  Whether `reason` (an atom, or its name as a binary: no atom is created) is a
  registered reason.
  """
  @spec reason?(atom() | binary()) :: boolean()
  def reason?(reason) when is_atom(reason), do: is_map_key(@reasons, reason)
  def reason?(reason) when is_binary(reason), do: is_map_key(@reason_strings, reason)

  @doc """
  The reasons a worker may send in a `{:bad_call, reason, message}` (SPEC §8.3):
  atoms the BEAM must know before it decodes the answer.
  """
  @spec wire_reasons() :: [reason()]
  def wire_reasons, do: @wire_reasons

  @doc "The one-line meaning of a registered reason, or `nil`."
  @spec reason_meaning(reason()) :: String.t() | nil
  def reason_meaning(reason) do
    case @reasons do
      %{^reason => %{meaning: meaning}} -> meaning
      _ -> nil
    end
  end

  @doc """
  The group a registered reason is listed under (`:header`, `:nif`,
  `:lease`, `:arena`, `:call`, `:format`, `:arrow`, `:table`, `:worker`), or
  `nil`.
  """
  @spec reason_kind(reason()) :: atom() | nil
  def reason_kind(reason) do
    case @reasons do
      %{^reason => %{kind: kind}} -> kind
      _ -> nil
    end
  end

  @doc "Handle kind => the frame format it reads (protocol/SPEC.md §9)."
  @spec handle_kinds() :: %{atom() => atom()}
  def handle_kinds, do: @handle_kinds

  @doc "Handle kinds of tensor frames => the tensor schema ids each reads."
  @spec handle_kind_schemas() :: %{atom() => [non_neg_integer()]}
  def handle_kind_schemas, do: @handle_kind_schemas

  @doc """
  Handle kinds whose value the BEAM copies out of the frame when it reads a
  result, ending the lease at once; the other kinds hand out zero-copy binaries
  that hold the lease while they live.
  """
  @spec copied_kinds() :: [atom()]
  def copied_kinds, do: @copied_kinds

  @doc "Frame `format` codes (SPEC §5.1): name => code."
  @spec formats() :: %{atom() => non_neg_integer()}
  def formats, do: @formats

  @doc "Frame `codec` codes (SPEC §5.1): name => code."
  @spec codecs() :: %{atom() => non_neg_integer()}
  def codecs, do: @codecs

  @doc "Shared-object `kind` codes (protocol/SPEC.md §1.1): name => code."
  @spec object_kinds() :: %{atom() => non_neg_integer()}
  def object_kinds, do: @object_kinds

  @doc "Byte offsets and sizes of a lane object (SPEC §8.5): name => bytes."
  @spec lane() :: %{String.t() => non_neg_integer()}
  def lane, do: Map.new(@lane)

  @doc """
  The signals the BEAM sends a worker (SPEC §8.7): name => the signal as
  `Bridge.NIF.kill/2` names it (`SIGUSR1` is `:usr1`).
  """
  @spec signals() :: %{atom() => atom()}
  def signals, do: Map.new(@signals)

  @doc "The format policies of the `format:` call option (SPEC §10.1), the default first."
  @spec policies() :: [atom()]
  def policies, do: @policies

  @doc "The nine dtypes of the packed form (SPEC §10.1), narrowest first."
  @spec packed_dtypes() :: [String.t()]
  def packed_dtypes, do: @packed_dtypes

  @doc "The layouts of the records form (SPEC §10.1), sorted."
  @spec records_layouts() :: [atom()]
  def records_layouts, do: @records_layouts

  @doc """
  Handle kind => the form (a key of `Bridge.format_stats/0`) a value of that
  kind is counted under when it travels in a slice.
  """
  @spec stats_forms() :: %{atom() => atom()}
  def stats_forms, do: @stats_forms

  @doc "Every form the BEAM counts values in (`Bridge.format_stats/0`), sorted."
  @spec counted_forms() :: [atom()]
  def counted_forms, do: @counted_forms

  @doc """
  Every atom a worker may send (protocol/SPEC.md §8): its
  control messages, the tags of data terms, records layouts, slice sources,
  handle kinds, object kinds and the wire reasons, sorted. The BEAM must know
  each before it decodes a worker's frame with `binary_to_term(_, [:safe])`.
  """
  @spec wire_atoms() :: [atom()]
  def wire_atoms, do: @wire_atoms

  @doc false
  # The type `a | b | ...` of a list of atoms, for a @type built from a table:
  # `@type policy :: unquote(Bridge.Registry.union_type(Bridge.Registry.policies()))`.
  @spec union_type([atom(), ...]) :: Macro.t()
  def union_type(atoms), do: atoms |> Enum.reverse() |> Enum.reduce(&{:|, [], [&1, &2]})

  @doc """
  The tags of inline terms whose payload may come as a stream of chunks (SPEC §8.6):
  `tags.chunkable` in the registry.
  """
  @spec chunkable_tags() :: [atom()]
  def chunkable_tags, do: @chunkable_tags

  @doc """
  Every name of the registry as an atom: reasons, control messages, tags,
  records layouts, slice sources, handle kinds, policies, formats, codecs and
  object kinds.
  """
  @spec atoms() :: [atom()]
  def atoms, do: @atoms
end
