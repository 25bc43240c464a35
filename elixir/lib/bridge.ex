defmodule Bridge do
  @moduledoc """
  Call Python functions from Elixir; large data travels through shared memory.

  A `Bridge` is a supervisor running a pool of Python worker processes
  (`python -m beambridge.worker`, protocol/SPEC.md §8). Put it in your
  supervision tree:

      children = [
        {Bridge, name: Bridge, python: "/path/to/python", python_path: [{:my_app, "priv/python"}], pool_size: 2}
      ]

  and call plain Python functions found on `python_path` — no decorator, no
  registration:

      # priv/python/arith.py:  def add(a, b): return a + b
      {:ok, 6} = Bridge.call({:arith, :add}, [2, 4])
      {:ok, t} = Bridge.call({:stats, :normalize}, [tensor], timeout: 10_000, pool: Bridge)
      6 = Bridge.call!({:arith, :add}, [2, 4])

  ## Types (protocol/SPEC.md §10)

  | Elixir | Python receives | Python returns | Elixir receives |
  |---|---|---|---|
  | integer (any size) | `int` | `int` | integer |
  | float | `float` | `float` (not NaN/±inf) | float |
  | `true` / `false` | `True` / `False` | `bool` | boolean |
  | `nil` | `None` | `None` | `nil` |
  | other atom | `beambridge.Atom` (a `str`) | `beambridge.Atom` | atom (must exist already) |
  | binary | `bytes` | `bytes` / `bytearray` / `memoryview` | binary |
  | — | — | `str` | binary (UTF-8) |
  | list | `list` | `list` | list |
  | tuple | `tuple` | `tuple` | tuple |
  | map | `dict` | `dict` | map |
  | `%Bridge.Buffer{}` | read-only `memoryview` | — | — |
  | `%Bridge.Tensor{}` | read-only `numpy.ndarray` | `numpy.ndarray` | `%Bridge.Tensor{}` |
  | `%Bridge.Table{}` | `pyarrow.Table` | `pyarrow.Table`, `RecordBatch`, `pandas.DataFrame` | `%Bridge.Table{}` |
  | struct of a registered type | the registered class | an object of a registered class | the struct |
  | other struct | `dict` (its map, `__struct__` included) | — | — |

  Structs of your own types cross with a serializer registered on both sides
  (`Bridge.Serializer`, protocol/formats/custom.md).

  ## Formats (protocol/SPEC.md §10.1)

  How a value travels never changes what the other side gets. Lists of
  numbers (at least 128 elements) go *packed*, as one array of the narrowest
  integer type or of doubles, instead of one term per element; lists of maps
  with the same keys and maps of equal-length lists (at least 256 cells) go
  as Arrow *records*. Python still gets a `list`, a `list` of `dict`s or a
  `dict` of `list`s, and results come back the same way. The call option
  `format:` (`:auto`, `:etf`, `:packed`, `:arrow`) overrides the choice; see
  `Bridge.Format`. `format_stats/0` counts the decisions.

  Binaries, buffers, tensors and the other bulk forms of at least
  `:threshold` bytes travel through shared memory instead of inside the control
  frame: the calling process writes them straight into a *slice* of the bridge's
  arenas (sealed anonymous shared memory, protocol/SPEC.md) and the
  worker reads them in place; the Python type is the same either way. Results at
  or above the threshold come back as zero-copy binaries over a slice of the
  worker's arenas, which the worker does not reuse while any such binary (or
  sub-binary) is alive. Keep a `:binary.copy/1` instead if you hold a small slice
  of a large result for a long time. A handler that returns (a slice of) the
  `memoryview` it was given sends it back without a copy.

  Pids, references, ports, funs, bit-strings, improper lists and atoms that
  start with `$bb_` cannot cross: the call returns a `:bad_call` error.

  ## Errors

  Every failure is `{:error, %Bridge.Error{kind: kind}}` (`call!/3` raises it):
  `:python_exception` (with `python_type`, the message and `traceback`),
  `:timeout`, `:worker_died`, `:overloaded`, `:bad_frame` (the worker broke
  the protocol; it is restarted), `:bad_call` (no such module or function,
  arguments that cannot cross, no such bridge) and `:start_failed` (from
  `start_link/1`).

  ## Options

    * `:name` — the name callers pass as `:pool` (default `Bridge`).
    * `:python` — the interpreter (default: env `BEAMBRIDGE_PYTHON`, else the
      environment `mix beambridge.python` set up for the application, else
      `"python3"` looked up in `PATH`). It must be able to
      `import beambridge`; `start_link/1` checks that first and fails with a
      `:start_failed` error carrying Python's output and the command to run.
    * `:python_path` — directories put first on the workers' `PYTHONPATH`
      (default `[]`): `{app, "priv/python"}` is that directory of the
      application `app` wherever it is installed (`Application.app_dir/2`, so
      the same code works in a release); a plain string is a directory relative
      to the current one. Handlers import from these first: the worker's working
      directory never shadows them.
    * `:strings` — how Elixir binaries in the arguments reach Python: `:bytes`
      (default) or `:str`. Under `:str` every binary, map keys included, arrives
      as a `str` decoded as strict UTF-8, so `%{"score" => 1.5}` (JSON-decoded
      Phoenix params) is `{"score": 1.5}`; a binary that is not UTF-8 fails the
      call with a `:bad_call` error, reason `:invalid_utf8`, naming where it is.
      `Bridge.Buffer` arguments stay `memoryview`s either way. Python `str` and
      `bytes` results are binaries either way. The default is `:bytes` because
      moving binary payloads is what the bridge is for: under `:str` a payload
      that is not text cannot cross as a plain binary, and a large one is
      decoded (copied) once more. Per call: the `:strings` option of `call/3`.
    * `:dashboard` — `[port: p]` serves a web page of the node's metrics and a
      Prometheus `/metrics` endpoint with this pool (`Bridge.Dashboard`;
      `port: 0` picks a free port, `Bridge.Dashboard.url/1` says which); bound
      to 127.0.0.1 unless `bind:` says otherwise. Default: none.
    * `:pool_size` — number of workers (default `System.schedulers_online()`).
    * `:max_queue` — callers that may wait for a worker (default `1_000`);
      beyond that a call returns `:overloaded` at once.
    * `:timeout` — default per-call timeout in ms, queueing included (default
      `5_000`). A call that runs out of time returns `:timeout` at once, and
      its handler is interrupted in the worker (`CallCancelled`, a
      `KeyboardInterrupt`, raised in it; an `async def` handler's task is
      cancelled): the worker keeps its interpreter, and everything its modules
      loaded, when the handler unwinds within `:cancel_grace`. No late answer
      reaches anyone. `:infinity` is accepted when given explicitly.
    * `:cancel_grace` — ms a timed-out handler has to unwind before its
      interpreter is killed and replaced (default `1_000`; `0` kills at once).
      A handler stuck in C code that holds the GIL, or one that catches the
      interrupt and carries on, takes that path.
    * `:threshold` — bytes; binaries, buffers and tensors at or above it travel
      through shared memory (default `65_536`, chosen by measurement: see README).
    * `:arena_limit` — bytes of shared memory the bridge may hold for arguments,
      and each worker for its results (default 1 GiB). A value that can never
      fit is refused at once (a `:bad_call` error, reason `:too_large`, field
      `:arena_limit`) unless a control frame (64 MiB) can carry it inline; when
      the arenas are full of values still in use, values go inline (counted in
      `format_stats/0` as `:arena_full`, and logged). Arenas grow under load up
      to the limit and shrink back after a few idle seconds.
    * `:min_arena` — bytes of the first arena, and of the one kept warm when
      idle (default 8 MiB).
    * `:untrusted` — make every result the BEAM holds kernel-immutable: each
      large result travels in a shared object of its own that the worker seals
      against writes before the BEAM maps it (default `false`; the cost is in the
      README). Without it a handler, which runs as your user, can rewrite the bytes
      of a result it returned while you hold it; it can never resize shared
      memory or make the VM read outside it.
    * `:huge_pages` — workers' malloc asks for transparent huge pages
      (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, default `true`): a large `bytes`
      argument or NumPy array is made several times faster (no 4 KiB page faults);
      the kernel may take a moment the first time it assembles huge pages.
    * `:heap_keep` — bytes of Python's small-object memory that a call freed
      (the values of a large batch, say) a worker keeps for its next call instead
      of giving them back to the system at once (default 1 GiB; `0`: none). The
      next call that makes as many objects does not fault them in again (a batch
      of 1M schema values is read twice as fast); a worker that has had no call
      for a second gives it all back. The peak is unchanged: only memory the last
      call used is kept.
    * `:spin_us` — microseconds each side polls for the other before it goes
      to sleep: a worker for the next call after it answers one, the BEAM for
      the answer (at most 1,000) after it sends a call. Default `:auto`: 50 when
      the side may use more than one CPU (the worker by its CPU affinity and its
      cgroup's CPU quota, the BEAM by its schedulers), else 0; each side polls
      up to 4 times longer while the other's recent replies came just after
      its poll would have ended. While both poll,
      a call and its answer pass through a *lane*, shared memory of the worker's
      own (protocol/SPEC.md §8.5), and nobody is woken through the kernel: on a
      virtual machine a wake-up costs tens of microseconds, most of a small call
      (README "Benchmark"). The price is up to that much CPU time per call while
      a side waits; `0` turns polling and the lane off.
    * `:start_timeout` — ms a worker may take to become ready (default
      `10_000`).
    * `:compress` — the default `:compress` of calls made on this node
      (`:auto`, `:none`, `:lz4`, `:zstd`, `:gzip`; default `:auto`): across
      nodes `:auto` compresses large binaries when that is estimated to be
      faster than sending them as they are; through shared memory it never does
      (README "Across nodes, and compression").
    * `:spill` — a call this pool refuses as `:overloaded` goes to another
      node's pool of the same name when one answers (default `true`).
    * `:node_timeout` — ms another node may stay silent before the calls
      waiting on it fail with `:node_down` (default `5_000`).
    * `:verify` — checksum slice payloads (xxh3) when writing them and verify
      them on read, on both sides: results here, arguments in the
      worker (default `false`; SPEC §6 check 17). Headers are always validated
      and their checksums always checked. Payload checksums are off by default
      on the call path because they cost more than they protect there: the lease
      protocol already rules out torn reads between the two processes, a peer
      that rewrites memory after publishing defeats a check made at read time,
      and at this machine's memory bandwidth the hashing passes made a 64 MiB
      round trip about 1.6x slower (see the README's benchmark notes).

  Unknown or ill-typed options are refused:

      iex> {:error, e} = Bridge.start_link(pool_size: 0)
      iex> {e.kind, e.reason, e.field}
      {:bad_call, :bad_option, :pool_size}
      iex> {:error, e} = Bridge.start_link(timeout: -1)
      iex> e.field
      :timeout
  """

  use Supervisor

  require Logger

  alias Bridge.{Config, Error, Pool, Worker}

  @typedoc "A Python module and function, as atoms or binaries: `{:arith, :add}`."
  @type function_ref :: {atom() | String.t(), atom() | String.t()}

  @doc """
  A child specification; `opts` are the options of `start_link/1`. The child
  id is the bridge's name, so several bridges can share a supervisor.

  ## Examples

      iex> Bridge.child_spec(name: MyBridge, pool_size: 1).id
      MyBridge
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, Bridge),
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor
    }
  end

  @doc """
  Starts a bridge: checks the interpreter, then starts `:pool_size` workers
  and waits until each is ready. See "Options".

  Returns `{:error, %Bridge.Error{kind: :start_failed}}` when the interpreter
  is missing, cannot `import beambridge`, or a worker does not become ready.

  ## Examples

      iex> {:error, e} = Bridge.start_link(name: NoPython, python: "/nonexistent/python3")
      iex> e.kind
      :start_failed
      iex> e.message =~ "/nonexistent/python3"
      true
  """
  @spec start_link(keyword()) :: Supervisor.on_start() | {:error, Error.t()}
  def start_link(opts \\ []) do
    with {:ok, config} <- Config.new(opts),
         {:ok, python} <- Bridge.Python.check(config) |> logged() do
      case Supervisor.start_link(__MODULE__, %{config | python: python}) do
        {:error, reason} -> {:error, unwrap(reason)} |> logged()
        other -> other
      end
    end
  end

  # A bridge that cannot start says why in the log, readably: in a supervision
  # tree the error itself reaches the user only as an inspected struct.
  defp logged({:error, %Error{kind: :start_failed} = error} = result) do
    Logger.error(Exception.message(error))
    result
  end

  defp logged(result), do: result

  defp unwrap({:shutdown, {:failed_to_start_child, _id, reason}}), do: unwrap(reason)
  defp unwrap(reason), do: reason

  @impl true
  def init(%Config{} = config) do
    workers =
      for index <- 1..config.pool_size do
        Supervisor.child_spec({Worker, {config, index}}, id: {Worker, index})
      end

    children = [
      {Pool, config},
      %{
        id: :workers,
        type: :supervisor,
        start: {Supervisor, :start_link, [workers, [strategy: :one_for_one]]}
      }
    ]

    dashboard = if config.dashboard, do: [{Bridge.Dashboard, config}], else: []
    Supervisor.init(children ++ dashboard, strategy: :rest_for_one)
  end

  @doc """
  Calls `module.function(*args)` in a Python worker of the bridge `:pool`.

  Options: `:pool` (the bridge's name, default `Bridge`), `:timeout` (ms,
  default the bridge's `:timeout`), `:strings` (`:bytes` or `:str`, default the
  bridge's `:strings`), `:format` (`:auto` (default), `:etf`,
  `:packed` or `:arrow`: how number lists, record lists and column maps
  travel, both ways; see `Bridge.Format`). With `:arrow` a list of maps or a
  map of lists that cannot go as records is a `:bad_call` error, reason
  `:format_unsuitable`.

  Other nodes (protocol/SPEC.md §15; README "Across nodes, and compression"):
  a call goes to the local pool when there is one, else to a node of the
  cluster that runs a pool of that name; `:node` sends it to that node.
  `:compress` (`:auto`, `:none`, `:lz4`, `:zstd` or `:gzip`; default the
  pool's, else `:auto`) says how its large binaries travel; `:node_timeout`
  (ms, default the pool's, else 5,000) is how long a node may stay silent
  before the call fails with `:node_down`; `:retry` (default 0) sends a call
  that failed with `:node_down` to up to that many other nodes: only for calls
  that may run twice. `result: :handle` keeps the result on the node that ran
  the call and returns a `Bridge.Handle` instead.

  ## Examples

      iex> {:error, e} = Bridge.call({:arith, :add}, [1, 2], pool: NoSuchBridge)
      iex> {e.kind, e.reason}
      {:bad_call, :no_pool}
      iex> {:error, e} = Bridge.call({:arith, 42}, [])
      iex> {e.kind, e.field}
      {:bad_call, :function}
  """
  @spec call(function_ref(), list(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def call(function_ref, args, opts \\ []), do: Bridge.Call.run(function_ref, args, opts)

  @doc """
  Calls `module.function(*args)` as a stream: the handler returns a generator,
  an async generator, an iterator or iterable, or a `pyarrow.Table`, and its
  elements come as a lazy Elixir stream, each as a call result would (see
  `Bridge.Stream` for flow control, checkpoints and integrity).

  Options: those of `call/3` (`:timeout` applies to each element), and

    * `:window` — elements on their way at once (default 4, at most 1024);
    * `:resume` — a `Bridge.Stream.Checkpoint` (from the `checkpoint` of the
      `Bridge.Error` that ended a stream) or a checkpoint token to start after,
      or `:auto` to resume by itself when the worker dies;
    * `:max_resumes` — how many times `resume: :auto` resumes (default 3).

  Enumerating it raises `Bridge.Error` when the call fails.

  ## Examples

      iex> Bridge.stream({:arith, :count}, [3], pool: NoSuchBridge) |> Enum.to_list()
      ** (Bridge.Error) bad call: no_pool: no bridge named NoSuchBridge is running
  """
  @spec stream(function_ref(), list(), keyword()) :: Enumerable.t()
  def stream(function_ref, args, opts \\ []),
    do: Bridge.Remote.Stream.new(function_ref, args, opts)

  @doc """
  The format decisions made so far on this node, by every bridge: one map per
  `{direction, form, reason}` with how many values took that way and their
  bytes (SPEC §10.1). With `config :beambridge, log_formats: true` each call's
  decisions are also logged at debug level (off by default: a line per call).

    * `direction` — `:to_python` (arguments) or `:from_python` (results);
    * `form` — `:etf`, `:raw`, `:buffer`, `:tensor`, `:arrow`, `:packed`,
      `:records` or `:custom`, with a `_slice` suffix (`:packed_slice`) when
      the value went through shared memory;
    * `reason` — for arguments: `:auto` (big enough to pack or send as
      records), `:forced` (the `format:` option), `:below_min` (too small:
      ETF), `:policy`
      (`format: :etf`), `:below_threshold` / `:threshold` (inline or slice,
      for binaries, buffers, tensors, tables and custom types),
      `:arena_full` / `:too_large` (a slice was due but none could be had:
      inline),
      `:encode_failed` (a serializer failed: the struct went as its map);
      for results `:received` (the worker chose the form) or, for a result
      value at or above the threshold that the worker sent inline because no
      slice could be had, the cause (`:arena_full`, `:too_large`, `:no_space`,
      `:no_tickets`; form `:raw`, `:tensor`, `:arrow`...). Other inline binaries
      and ETF values in results are not counted.

  ## Examples

      iex> stats = Bridge.format_stats()
      iex> Enum.all?(stats, &match?(%{direction: _, form: _, reason: _, count: _, bytes: _}, &1))
      true
  """
  @spec format_stats() :: [
          %{
            direction: :to_python | :from_python,
            form: atom(),
            reason: atom(),
            count: non_neg_integer(),
            bytes: non_neg_integer()
          }
        ]
  def format_stats, do: Bridge.FormatStats.all()

  @doc "Clears the counts of `format_stats/0` (for tests and benchmarks)."
  @spec reset_format_stats() :: :ok
  def reset_format_stats, do: Bridge.FormatStats.reset()

  @doc """
  Like `call/3` but returns the result or raises `Bridge.Error`.

  ## Examples

      iex> Bridge.call!({:arith, :add}, [1, 2], pool: NoSuchBridge)
      ** (Bridge.Error) bad call: no_pool: no bridge named NoSuchBridge is running
  """
  @spec call!(function_ref(), list(), keyword()) :: term()
  def call!(function_ref, args, opts \\ []) do
    case call(function_ref, args, opts) do
      {:ok, value} -> value
      {:error, error} -> raise error
    end
  end

  @doc """
  Concrete advice from what this node's calls and memory show: a list of maps
  with `rule`, `pool`, `function`, `evidence`, `suggestion` and
  `estimated_gain` (`Bridge.Metrics.Advice` lists the rules).

  ## Examples

      iex> is_list(Bridge.recommendations())
      true
  """
  @spec recommendations() :: [map()]
  def recommendations do
    Bridge.Metrics.Advice.from(
      Bridge.Metrics.snapshot(),
      Bridge.Metrics.memory(),
      Bridge.Metrics.Advice.thresholds()
    )
  end

  @doc """
  The alerts raised lately, newest first (the last 50): `rule`, `pool`,
  `function`, `form`, `evidence`, `suggestion`, `at` (`Bridge.Metrics.Alerts`
  lists the rules). Each was also logged as a warning and sent as a
  `[:beambridge, :alert]` event.
  """
  @spec alerts() :: [map()]
  def alerts, do: Bridge.Metrics.Monitor.alerts()

  @doc """
  Runs `fun` with one worker of `pool` to itself (`Bridge.Session`, protocol/SPEC.md
  §8.9) and returns what `fun` returns.

  Every call given `session: session` runs on that worker, one at a time, so what a
  handler leaves in its module is there for the next; no other call of the pool runs
  there meanwhile. A handler may return `beambridge.keep(obj)`: Elixir gets a
  `%Bridge.Ref{}`, and a call of the session that passes it gets `obj` back. Kept
  objects go when their ref is garbage-collected or the session ends; the session
  ends when `fun` returns or raises, or when the process running it exits.

  Options: `:timeout` (ms to wait for a free worker, default the pool's `:timeout`).

  ## Examples

      iex> Bridge.session(NoSuchBridge, fn _session -> :unreached end)
      {:error, Bridge.Error.new(:bad_call, :no_pool,
         field: :pool,
         value: NoSuchBridge,
         message: "bad call: no_pool: no bridge named NoSuchBridge is running"
       )}
  """
  @spec session(atom(), (Bridge.Session.t() -> result), keyword()) :: result | {:error, Error.t()}
        when result: term()
  def session(pool \\ Bridge, fun, opts \\ []), do: Bridge.Session.run(pool, fun, opts)

  @doc """
  The workers of a bridge: id, Erlang pid, the interpreter's OS pid and phase
  (`:starting`, `:ready`, `:busy`, `:killing`, `:down`), how many of the
  bridge's slices it holds (`lent_slices`), how many of its arenas are mapped
  here (`worker_arenas`) and their bytes (`worker_arena_bytes`), how many of
  its result slices callers still hold (`held_slices`, `held_bytes`: a result
  binary keeps its slice until it is garbage collected), whether its interpreter has a lane (`lane`: calls and
  answers pass through shared memory while both sides poll, protocol/SPEC.md
  §8.5), how many calls went that way since the worker started (`lane_calls`)
  and for how many of those the answer took longer than `:spin_us`, so the BEAM
  stopped polling and was woken for it (`lane_parked`).

  ## Examples

      iex> Bridge.workers(NoSuchBridge)
      []
  """
  @spec workers(atom()) :: [map()]
  def workers(pool \\ Bridge) do
    pool
    |> Pool.workers()
    |> Enum.sort()
    |> Enum.map(&Worker.info/1)
    |> Enum.sort_by(& &1.id)
  catch
    :exit, _ -> []
  end
end
