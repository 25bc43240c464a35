defmodule Bridge.Serializer do
  @moduledoc """
  Custom serializers: how values of your own struct types cross to Python and
  back (protocol/formats/custom.md).

  A serializer names a struct module, a **type name** shared with the Python
  side (a UTF-8 string of 1 to 255 bytes, such as `"geo.Point"`), the
  **version** it writes (1..2^32-1), the versions it can **read** and two
  functions:

    * `encode` — `fn struct -> binary (or iodata)`: the bytes sent for a value;
    * `decode` — `fn bytes, version -> {:ok, term} | {:error, reason}`: the value
      rebuilt from bytes written with `version` (one of `reads`).

  The Python side registers a serializer for the same name with
  `beambridge.serializers.register(cls, name, version=..., reads=..., encode=...,
  decode=...)`. A struct argument of a registered module then reaches the
  handler as the Python class, and a Python result of that class comes back as
  the struct: `{:"$bb_custom", name, version, bytes}` inline, or a slice frame
  of format `custom` at or above the bridge's `:threshold`.

  Writing never fails because of a serializer: an `encode` that raises, or
  returns something other than a binary or iodata, logs a warning naming the
  serializer, the type and the error, and the struct goes as its plain map
  (ETF, `__struct__` key included). Reading never falls back: a result whose
  type has no serializer, whose version the serializer does not read, or whose
  bytes `decode` refuses is a `:bad_call` error (reasons `:unknown_type`,
  `:unsupported_version`, `:serializer_failed`) saying what to register; the worker
  is kept.

  The registry is node-wide (`:persistent_term`): register once, at
  application start, not per call.

  ## Examples

      iex> :ok =
      ...>   Bridge.Serializer.register(URI,
      ...>     name: "std.URI",
      ...>     version: 2,
      ...>     reads: [1, 2],
      ...>     encode: &URI.to_string/1,
      ...>     decode: fn bin, _version -> {:ok, URI.parse(bin)} end
      ...>   )
      iex> Bridge.Serializer.fetch(URI).name
      "std.URI"
      iex> Bridge.Serializer.fetch("std.URI").reads
      [1, 2]
      iex> Bridge.Serializer.unregister(URI)
      :ok
      iex> Bridge.Serializer.fetch("std.URI")
      nil
      iex> {:error, e} = Bridge.Serializer.register(URI, name: "", version: 1, encode: & &1, decode: & &1)
      iex> {e.kind, e.reason, e.field}
      {:bad_call, :bad_option, :name}
  """

  require Logger

  alias Bridge.Error

  @key {__MODULE__, :registry}
  @max_version 4_294_967_295
  @builtin [Bridge.Tensor, Bridge.Tensor.Bundle, Bridge.Tensor.COO, Bridge.Table, Bridge.Buffer]

  @enforce_keys [:module, :name, :version, :reads, :encode, :decode, :schema_id]
  defstruct [:module, :name, :version, :reads, :encode, :decode, :schema_id]

  @typedoc """
  A registered serializer. `schema_id` is `xxh3_64(name)`, the `schema_id` of
  its slice frames.
  """
  @type t :: %__MODULE__{
          module: module(),
          name: String.t(),
          version: pos_integer(),
          reads: [pos_integer()],
          encode: (struct() -> iodata()),
          decode: (binary(), pos_integer() -> {:ok, term()} | {:error, term()}),
          schema_id: non_neg_integer()
        }

  @doc """
  Registers the serializer of `struct_module`.

  Options (all but `:reads` required):

    * `:name` — the type name shared with Python, 1..255 bytes of UTF-8;
    * `:version` — the version written, an integer 1..2^32-1;
    * `:reads` — the versions `decode` accepts (default `[version]`; `version`
      is always added);
    * `:encode` — a function of arity 1;
    * `:decode` — a function of arity 2.

  Registering a module again replaces its serializer. A name belongs to one
  module: registering it for another module is an error until the first is
  unregistered. Errors are `{:error, %Bridge.Error{kind: :bad_call, reason:
  :bad_option, field: option}}`.

  ## Examples

      iex> {:error, e} = Bridge.Serializer.register(URI, name: "std.URI", version: 0, encode: & &1, decode: & &1)
      iex> {e.field, e.value}
      {:version, 0}
      iex> {:error, e} = Bridge.Serializer.register(String, name: "s", version: 1, encode: & &1, decode: fn b, _ -> b end)
      iex> e.field
      :module
  """
  @spec register(module(), keyword()) :: :ok | {:error, Error.t()}
  def register(struct_module, opts) when is_list(opts) do
    with :ok <- check_module(struct_module),
         :ok <- check_keys(opts),
         {:ok, name} <- check_name(Keyword.get(opts, :name)),
         {:ok, version} <- check_version(:version, Keyword.get(opts, :version)),
         {:ok, reads} <- check_reads(Keyword.get(opts, :reads, [version]), version),
         {:ok, encode} <- check_fun(:encode, Keyword.get(opts, :encode), 1),
         {:ok, decode} <- check_fun(:decode, Keyword.get(opts, :decode), 2) do
      {:ok, schema_id} = Bridge.NIF.xxh3_64(name)

      entry = %__MODULE__{
        module: struct_module,
        name: name,
        version: version,
        reads: reads,
        encode: encode,
        decode: decode,
        schema_id: schema_id
      }

      update(fn %{modules: modules, names: names} = registry ->
        case names do
          %{^name => %{module: other}} when other != struct_module ->
            {{:error,
              bad(
                :name,
                name,
                "a name not registered yet (it belongs to #{inspect(other)}; unregister it first)"
              )}, registry}

          _ ->
            names =
              case modules do
                %{^struct_module => old} -> Map.delete(names, old.name)
                _ -> names
              end

            {:ok,
             %{
               modules: Map.put(modules, struct_module, entry),
               names: Map.put(names, name, entry)
             }}
        end
      end)
    end
  end

  def register(_struct_module, opts), do: {:error, bad(:opts, opts, "a keyword list")}

  @doc """
  Removes the serializer of a struct module or of a type name. Removing what is
  not registered is a no-op.
  """
  @spec unregister(module() | String.t()) :: :ok
  def unregister(module_or_name) do
    update(fn %{modules: modules, names: names} = registry ->
      case fetch_in(registry, module_or_name) do
        nil ->
          {:ok, registry}

        entry ->
          {:ok,
           %{modules: Map.delete(modules, entry.module), names: Map.delete(names, entry.name)}}
      end
    end)
  end

  @doc """
  The registered serializers, sorted by type name.

  ## Examples

      iex> is_list(Bridge.Serializer.registered())
      true
  """
  @spec registered() :: [t()]
  def registered, do: registry().names |> Map.values() |> Enum.sort_by(& &1.name)

  @doc """
  The serializer of a struct module or of a type name, or `nil`.
  """
  @spec fetch(module() | String.t()) :: t() | nil
  def fetch(module_or_name), do: fetch_in(registry(), module_or_name)

  defp fetch_in(registry, name) when is_binary(name), do: Map.get(registry.names, name)
  defp fetch_in(registry, module) when is_atom(module), do: Map.get(registry.modules, module)
  defp fetch_in(_registry, _other), do: nil

  defp registry, do: :persistent_term.get(@key, %{modules: %{}, names: %{}})

  # Read-modify-write under a node-local lock, so concurrent registrations
  # do not lose each other's entries.
  defp update(fun) do
    :global.trans(
      {@key, self()},
      fn ->
        {reply, new} = fun.(registry())
        if new != registry(), do: :persistent_term.put(@key, new)
        reply
      end,
      [node()]
    )
  end

  ## Encoding (Bridge.Encoder)

  @doc false
  # The wire bytes of a struct: {:ok, serializer, data} with a registered
  # serializer, :none without one, or {:fallback, serializer, why} when encode
  # failed (a warning has been logged: the caller sends the plain map).
  @spec encode_struct(struct()) :: {:ok, t(), binary()} | :none | {:fallback, t(), String.t()}
  def encode_struct(%module{} = value) do
    case registry() do
      %{modules: %{^module => entry}} -> run_encode(entry, value)
      _ -> :none
    end
  end

  defp run_encode(entry, value) do
    result =
      try do
        {:ok, entry.encode.(value)}
      catch
        kind, reason -> {:raised, Exception.format_banner(kind, reason, __STACKTRACE__)}
      end

    case result do
      {:ok, data} when is_binary(data) ->
        {:ok, entry, data}

      {:ok, other} ->
        case iodata(other) do
          {:ok, data} -> {:ok, entry, data}
          :error -> fallback(entry, "it returned #{inspect(other, limit: 5)}, not a binary")
        end

      {:raised, banner} ->
        fallback(entry, "it raised #{banner}")
    end
  end

  defp iodata(term) do
    {:ok, IO.iodata_to_binary(term)}
  rescue
    ArgumentError -> :error
  end

  defp fallback(entry, why) do
    Logger.warning(
      "beambridge: serializer #{inspect(entry.name)} (version #{entry.version}) failed to encode " <>
        "a #{inspect(entry.module)}: #{why}; the value is sent as its plain map (ETF) instead"
    )

    {:fallback, entry, why}
  end

  ## Decoding (Bridge.Decoder)

  @doc false
  # The value of a custom payload from Python; errors are :bad_call
  # (unknown_type, unsupported_version, serializer_failed): the frame was well formed.
  @spec decode_payload(String.t(), non_neg_integer(), binary()) ::
          {:ok, term()} | {:error, Error.t()}
  def decode_payload(name, version, data) do
    case fetch(name) do
      nil ->
        {:error,
         Error.new(:bad_call, :unknown_type,
           field: :result,
           value: {name, version},
           message:
             "bad call: unknown_type: the result holds a value of custom type #{inspect(name)} " <>
               "version #{version}, and no serializer is registered for that name; register one " <>
               "with Bridge.Serializer.register(YourStruct, name: #{inspect(name)}, version: ..., " <>
               "reads: [#{version}, ...], encode: ..., decode: ...)"
         )}

      entry ->
        if version in entry.reads,
          do: run_decode(entry, version, data),
          else: unsupported(entry, version)
    end
  end

  defp unsupported(entry, version) do
    {:error,
     Error.new(:bad_call, :unsupported_version,
       field: :result,
       value: {entry.name, version},
       limit: entry.reads,
       message:
         "bad call: unsupported_version: the result holds a #{inspect(entry.name)} written with " <>
           "version #{version}; the serializer registered for #{inspect(entry.module)} reads " <>
           "versions #{inspect(entry.reads)}; register a serializer whose :reads include #{version}"
     )}
  end

  defp run_decode(entry, version, data) do
    result =
      try do
        entry.decode.(data, version)
      catch
        kind, reason -> {:raised, Exception.format_banner(kind, reason, __STACKTRACE__)}
      end

    case result do
      {:ok, value} ->
        {:ok, value}

      {:error, reason} ->
        serializer_failed(entry, version, "it returned {:error, #{inspect(reason)}}")

      {:raised, banner} ->
        serializer_failed(entry, version, "it raised #{banner}")

      other ->
        serializer_failed(entry, version, "it returned #{inspect(other, limit: 5)}")
    end
  end

  defp serializer_failed(entry, version, why) do
    {:error,
     Error.new(:bad_call, :serializer_failed,
       field: :result,
       value: {entry.name, version},
       message:
         "bad call: serializer_failed: the decode function of serializer " <>
           "#{inspect(entry.name)} (#{inspect(entry.module)}) failed on a version " <>
           "#{version} payload: #{why}"
     )}
  end

  ## Option checks

  @keys [:name, :version, :reads, :encode, :decode]

  defp check_module(module) when module in @builtin,
    do:
      {:error,
       bad(:module, module, "a struct module of your own (#{inspect(module)} has its own format)")}

  defp check_module(module) when is_atom(module) do
    if Code.ensure_loaded?(module) and function_exported?(module, :__struct__, 0),
      do: :ok,
      else: {:error, bad(:module, module, "a struct module (defstruct)")}
  end

  defp check_module(module), do: {:error, bad(:module, module, "a struct module (defstruct)")}

  defp check_keys(opts) do
    case Enum.find(opts, fn
           {k, _} -> k not in @keys
           _ -> true
         end) do
      nil -> :ok
      {k, v} -> {:error, bad(k, v, "one of #{inspect(@keys)}")}
      other -> {:error, bad(:opts, other, "a keyword list")}
    end
  end

  defp check_name(name) when is_binary(name) and byte_size(name) in 1..255 do
    if String.valid?(name),
      do: {:ok, name},
      else: {:error, bad(:name, name, "UTF-8 text of 1 to 255 bytes")}
  end

  defp check_name(name), do: {:error, bad(:name, name, "UTF-8 text of 1 to 255 bytes")}

  defp check_version(_field, v) when is_integer(v) and v >= 1 and v <= @max_version, do: {:ok, v}
  defp check_version(field, v), do: {:error, bad(field, v, "an integer 1..#{@max_version}")}

  defp check_reads(reads, version) when is_list(reads) do
    Enum.reduce_while(reads, {:ok, [version]}, fn r, {:ok, acc} ->
      case check_version(:reads, r) do
        {:ok, r} ->
          {:cont, {:ok, [r | acc]}}

        {:error, _} ->
          {:halt, {:error, bad(:reads, reads, "a list of integers 1..#{@max_version}")}}
      end
    end)
    |> case do
      {:ok, all} -> {:ok, all |> Enum.uniq() |> Enum.sort()}
      error -> error
    end
  end

  defp check_reads(reads, _version),
    do: {:error, bad(:reads, reads, "a list of integers 1..#{@max_version}")}

  defp check_fun(_field, f, arity) when is_function(f, arity), do: {:ok, f}
  defp check_fun(field, f, arity), do: {:error, bad(field, f, "a function of arity #{arity}")}

  defp bad(field, value, expected) do
    Error.new(:bad_call, :bad_option, field: field, value: value, limit: expected)
  end
end
