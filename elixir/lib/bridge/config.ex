defmodule Bridge.Config do
  @moduledoc false
  # The validated options of one Bridge (see `Bridge` "## Options"). Stored in
  # :persistent_term under {Bridge.Config, name} by the pool, together with the
  # bridge's arena set (`arena`), so callers find them without a message to the
  # pool: callers encode their arguments into the arenas themselves.

  import Bitwise

  alias Bridge.Error

  @gib 1024 * 1024 * 1024

  defstruct name: Bridge,
            python: nil,
            python_path: [],
            pool_size: 1,
            max_queue: 1_000,
            timeout: 5_000,
            threshold: 65_536,
            arena_limit: @gib,
            min_arena: 8 * 1024 * 1024,
            untrusted: false,
            huge_pages: true,
            heap_keep: @gib,
            spin_us: :auto,
            start_timeout: 10_000,
            verify: false,
            strings: :bytes,
            dashboard: nil,
            compress: :auto,
            spill: true,
            node_timeout: 5_000,
            cancel_grace: 1_000,
            callbacks: [],
            arena: nil,
            peer_minor: nil

  @type t :: %__MODULE__{}

  @keys [
    :name,
    :python,
    :python_path,
    :pool_size,
    :max_queue,
    :timeout,
    :threshold,
    :arena_limit,
    :min_arena,
    :untrusted,
    :huge_pages,
    :heap_keep,
    :spin_us,
    :start_timeout,
    :verify,
    :strings,
    :dashboard,
    :compress,
    :spill,
    :node_timeout,
    :cancel_grace,
    :callbacks
  ]

  @spec new(keyword()) :: {:ok, t()} | {:error, Error.t()}
  def new(opts) when is_list(opts) do
    if Keyword.keyword?(opts) do
      defaults = %__MODULE__{
        python: Bridge.Python.default(),
        pool_size: System.schedulers_online()
      }

      Enum.reduce_while(opts, {:ok, defaults}, fn {key, value}, {:ok, config} ->
        with :ok <- check(key, value),
             {:ok, value} <- normalize(key, value) do
          {:cont, {:ok, Map.put(config, key, value)}}
        else
          {:error, _} = error -> {:halt, error}
        end
      end)
    else
      {:error, bad(:opts, opts, "a keyword list")}
    end
  end

  def new(opts), do: {:error, bad(:opts, opts, "a keyword list")}

  @spec put(t()) :: :ok
  def put(%__MODULE__{name: name} = config), do: :persistent_term.put({__MODULE__, name}, config)

  @doc false
  # The protocol minor the pool's workers announced (0 until one is ready):
  # what the BEAM may send them (SPEC §8.4). The pool makes the counter.
  @spec peer_minor(t()) :: non_neg_integer()
  def peer_minor(%__MODULE__{peer_minor: nil}), do: 0
  def peer_minor(%__MODULE__{peer_minor: ref}), do: :atomics.get(ref, 1)

  @doc false
  @spec note_peer_minor(atom(), non_neg_integer()) :: :ok
  def note_peer_minor(name, minor) do
    case get(name) do
      %__MODULE__{peer_minor: ref} when ref != nil -> :atomics.put(ref, 1, minor)
      _ -> :ok
    end
  end

  @spec get(atom()) :: t() | nil
  def get(name), do: :persistent_term.get({__MODULE__, name}, nil)

  @spec erase(atom()) :: :ok
  def erase(name) do
    _ = :persistent_term.erase({__MODULE__, name})
    :ok
  end

  defp check(:name, v) when is_atom(v) and v != nil, do: :ok
  defp check(:python, v) when is_binary(v) and v != "", do: :ok
  defp check(:python_path, v) when is_list(v), do: check_paths(v)
  defp check(:pool_size, v) when is_integer(v) and v >= 1, do: :ok
  defp check(:max_queue, v) when is_integer(v) and v >= 0, do: :ok
  defp check(:timeout, v) when (is_integer(v) and v > 0) or v == :infinity, do: :ok
  defp check(:threshold, v) when is_integer(v) and v >= 0, do: :ok
  defp check(:arena_limit, v) when is_integer(v) and v >= 0, do: :ok
  defp check(:min_arena, v) when is_integer(v) and v >= 4096 and v <= 1 <<< 40, do: :ok
  defp check(:untrusted, v) when is_boolean(v), do: :ok
  defp check(:huge_pages, v) when is_boolean(v), do: :ok
  defp check(:heap_keep, v) when is_integer(v) and v >= 0 and v <= 1 <<< 40, do: :ok

  defp check(:spin_us, v) when v == :auto or (is_integer(v) and v >= 0 and v <= 1_000_000),
    do: :ok

  defp check(:start_timeout, v) when is_integer(v) and v > 0, do: :ok
  defp check(:verify, v) when is_boolean(v), do: :ok
  defp check(:strings, v) when v in [:bytes, :str], do: :ok
  defp check(:dashboard, nil), do: :ok
  defp check(:compress, v) when v in [:auto, :none, :lz4, :zstd, :gzip], do: :ok
  defp check(:spill, v) when is_boolean(v), do: :ok
  defp check(:node_timeout, v) when is_integer(v) and v > 0, do: :ok
  defp check(:cancel_grace, v) when is_integer(v) and v >= 0 and v <= 3_600_000, do: :ok

  defp check(:callbacks, v) do
    if Bridge.Worker.Callbacks.check(v) == :ok,
      do: :ok,
      else: {:error, bad(:callbacks, v, expectation(:callbacks))}
  end

  defp check(:dashboard, v) do
    if dashboard?(v),
      do: :ok,
      else: {:error, bad(:dashboard, v, "nil or [port: 0..65535, bind: an IP address string]")}
  end

  defp check(key, v) when key in @keys, do: {:error, bad(key, v)}
  defp check(key, v), do: {:error, bad(key, v, "one of #{inspect(@keys)}")}

  defp check_paths(paths) do
    if Enum.all?(paths, &path?/1),
      do: :ok,
      else:
        {:error,
         bad(:python_path, paths, "a list of directories: names, or {app, \"priv/python\"}")}
  end

  defp path?(path) when is_binary(path), do: path != ""
  defp path?({app, path}) when is_atom(app) and is_binary(path), do: true
  defp path?(_), do: false

  # {app, "priv/python"} is that directory of the application, wherever it is
  # installed (a release included): :code.lib_dir/1, as Application.app_dir/2
  # does, resolved at start.
  defp normalize(:python_path, paths), do: resolve_paths(paths, [])
  defp normalize(_key, value), do: {:ok, value}

  defp resolve_paths([], acc), do: {:ok, Enum.reverse(acc)}

  defp resolve_paths([{app, path} | rest], acc) do
    case :code.lib_dir(app) do
      dir when is_list(dir) ->
        resolve_paths(rest, [Path.join(List.to_string(dir), path) | acc])

      {:error, _} ->
        {:error,
         Error.new(:bad_call, :bad_option,
           field: :python_path,
           value: {app, path},
           limit: "an application the code server knows",
           message:
             "bad call: bad_option: python_path names the application #{inspect(app)}, " <>
               "which is not loaded (list it in your project's deps, or give a directory)"
         )}
    end
  end

  defp resolve_paths([path | rest], acc), do: resolve_paths(rest, [path | acc])

  defp dashboard?(v) when is_list(v) do
    port = Keyword.get(v, :port, 0)
    bind = Keyword.get(v, :bind, "127.0.0.1")

    Keyword.keyword?(v) and Keyword.keys(v) -- [:port, :bind] == [] and is_integer(port) and
      port in 0..65_535 and is_binary(bind) and
      match?({:ok, _}, :inet.parse_address(String.to_charlist(bind)))
  end

  defp dashboard?(_v), do: false

  defp bad(field, value, expected \\ nil) do
    expected = expected || expectation(field)
    Error.new(:bad_call, :bad_option, field: field, value: value, limit: expected)
  end

  defp expectation(:name), do: "an atom"
  defp expectation(:python), do: "the path or name of a Python interpreter"
  defp expectation(:min_arena), do: "an integer from 4096 to 2^40 (bytes)"
  defp expectation(:untrusted), do: "a boolean"
  defp expectation(:huge_pages), do: "a boolean"
  defp expectation(:heap_keep), do: "an integer from 0 to 2^40 (bytes)"
  defp expectation(:spin_us), do: ":auto or an integer from 0 to 1_000_000 (microseconds)"
  defp expectation(:timeout), do: "a positive integer (milliseconds) or :infinity"
  defp expectation(:verify), do: "a boolean"
  defp expectation(:strings), do: ":bytes or :str"
  defp expectation(:pool_size), do: "a positive integer"
  defp expectation(:start_timeout), do: "a positive integer (milliseconds)"
  defp expectation(:node_timeout), do: "a positive integer (milliseconds)"
  defp expectation(:cancel_grace), do: "an integer from 0 to 3_600_000 (milliseconds)"

  defp expectation(:callbacks),
    do: "a list of {module, function, arity} and {:send, registered_name} entries"

  defp expectation(:spill), do: "a boolean"
  defp expectation(:compress), do: ":auto, :none, :lz4, :zstd or :gzip"
  defp expectation(_), do: "a non-negative integer"
end
