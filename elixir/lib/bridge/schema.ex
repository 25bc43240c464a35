defmodule Bridge.Schema do
  @moduledoc """
  Typed schemas: a record type declared once, whose values are the same SSZ bytes on
  both sides (protocol/formats/ssz.md).

      defmodule MyApp.ModelConfig do
        use Bridge.Schema, name: "truthgpt.ModelConfig", version: "2.1"
        field :name, :string
        field :hidden_size, :uint32
        field :layers, {:list, :uint16, max: 1024}
        field :dtype, :string, default: "float32", since: "2.1"
        migrate from: "1.0", with: &__MODULE__.from_v1/1
      end

  The module becomes a struct of its fields, in order. Field types: `:uint8` …
  `:uint64`, `:int8` … `:int64`, `:float32`, `:float64`, `:boolean`, `:bytes`,
  `:string`, `{:list, t, max: n}`, `{:vector, t, n}`, `{:optional, t}`,
  `{:union, [t, ...]}` (a value is `{index, value}`; only the first option may be
  `nil`), and other schema modules. `to_ssz/1` and `from_ssz/2` give and read the
  bytes; each module's container code is generated at compile time: one binary
  pattern for its fixed part.

  A struct passed to `Bridge.call/3` arrives as the Python class declared for its
  name, a list of them as one SSZ list (`Bridge.Schema.Batch`); tables of them carry
  their name and version (`Bridge.Schema.Tables`). Versions: `since:` marks the
  fields a minor added, `migrate/1` the way from an older major, and data of older
  versions is read as the newest module (`Bridge.Schema.Versions`).

  ## Examples

      iex> defmodule Doc.Point do
      ...>   use Bridge.Schema, name: "doc.Point", version: "1.0"
      ...>   field :x, :int32
      ...>   field :y, :int32
      ...>   field :label, {:optional, :string}
      ...> end
      iex> {:ok, bin} = Bridge.Schema.to_ssz(struct(Doc.Point, x: -1, y: 2, label: "p"))
      iex> Base.encode16(bin, case: :lower)
      "ffffffff020000000c0000000170"
      iex> {:ok, point} = Bridge.Schema.from_ssz(Doc.Point, bin)
      iex> {point.x, point.y, point.label}
      {-1, 2, "p"}
      iex> {:error, e} = Bridge.Schema.to_ssz(struct(Doc.Point, x: 2_147_483_648, y: 0))
      iex> e.message
      "bad_value: Point.x is 2147483648, expected int32 (-2147483648 to 2147483647)"
  """

  alias Bridge.Error
  alias Bridge.Schema.{SSZ, Versions}

  @doc false
  defmacro __using__(opts) do
    name = Keyword.fetch!(opts, :name)
    version = Keyword.fetch!(opts, :version)

    quote do
      import Bridge.Schema, only: [field: 2, field: 3, migrate: 1]
      Module.register_attribute(__MODULE__, :bb_fields, accumulate: true)
      Module.register_attribute(__MODULE__, :bb_migrations, accumulate: true)
      @bb_name unquote(name)
      @bb_version Bridge.Schema.__version__!(unquote(version))
      @before_compile Bridge.Schema
    end
  end

  @doc """
  Declares a field of a schema: its name, type, and options `default:` and `since:`
  (the minor version that added it: `since: "2.1"`; such fields go last, in order,
  each with a default or of an `{:optional, t}` type).
  """
  defmacro field(name, type, opts \\ []) do
    quote do
      @bb_fields {unquote(name), unquote(type), unquote(opts)}
    end
  end

  @doc """
  Declares a migration from an older major version: `migrate from: "1.0", with:
  &__MODULE__.from_v1/1`, a captured function from the older version's fields (a map)
  to this version's (a map or a struct). `Bridge.Schema.Versions` chains them.
  """
  defmacro migrate(opts) do
    quote do
      @bb_migrations {Keyword.fetch!(unquote(opts), :from), Keyword.fetch!(unquote(opts), :with)}
    end
  end

  @doc false
  defmacro __before_compile__(env) do
    fields =
      env.module
      |> Module.get_attribute(:bb_fields)
      |> Enum.reverse()
      |> Enum.map(fn {name, type, opts} -> {name, SSZ.check_type!(type), opts} end)

    short = env.module |> Module.split() |> List.last()
    version = Module.get_attribute(env.module, :bb_version)
    struct_fields = for {name, _t, opts} <- fields, do: {name, Keyword.get(opts, :default)}
    types = for {name, t, _} <- fields, do: {name, t}
    sizes = Enum.map(types, fn {_, t} -> SSZ.fixed_size(t) end)
    fixed = if nil in sizes, do: nil, else: Enum.sum(sizes)
    since = Bridge.Schema.Versions.since!(short, version, fields)
    migrations = Bridge.Schema.Versions.migrations!(short, version, env.module)
    older = Bridge.Schema.Versions.older_minors(version, types, since)

    quote do
      defstruct unquote(Macro.escape(struct_fields))

      @doc false
      def __schema__(:name), do: @bb_name
      def __schema__(:version), do: @bb_version
      def __schema__(:fields), do: unquote(Macro.escape(types))
      def __schema__(:fixed_size), do: unquote(fixed)
      def __schema__(:short), do: unquote(short)
      def __schema__(:since), do: unquote(Macro.escape(since))
      def __schema__(:migrations), do: unquote(Macro.escape(migrations))

      unquote(Bridge.Schema.Codegen.encoder(types))
      unquote(Bridge.Schema.Codegen.decoder(types))

      # the bytes of older minors: their fields only, the later ones' defaults
      unquote_splicing(
        for n <- older |> Enum.map(&elem(&1, 1)) |> Enum.uniq() do
          Bridge.Schema.Codegen.decoder(Enum.take(types, n), :"__bb_decode_#{n}__")
        end
      )

      @doc false
      def __bb_read__(minor, bin, path)

      unquote_splicing(
        for {minor, n} <- older do
          quote do
            def __bb_read__(unquote(minor), bin, path),
              do: unquote(:"__bb_decode_#{n}__")(bin, path)
          end
        end
      )

      def __bb_read__(_minor, bin, path), do: __bb_decode__(bin, path)
    end
  end

  @doc false
  # "major.minor", checked at compile time.
  @spec __version__!(String.t()) :: String.t()
  def __version__!(version) do
    if Versions.parse(version) != :error,
      do: version,
      else:
        raise(
          ArgumentError,
          "a schema version is \"major.minor\" (each 0 to 65535), got #{inspect(version)}"
        )
  end

  @doc """
  The SSZ bytes of a schema struct: `{:ok, binary}`, or `{:error, %Bridge.Error{}}`
  (reason `:bad_value`) naming the field path, the value and the type expected.
  """
  @spec to_ssz(struct()) :: {:ok, binary()} | {:error, Error.t()}
  def to_ssz(%module{} = value) do
    if function_exported?(module, :__bb_encode__, 2) do
      {:ok, IO.iodata_to_binary(module.__bb_encode__(value, module.__schema__(:short)))}
    else
      {:error,
       Error.new(:bad_call, :badarg, field: :schema, value: module, limit: "a schema struct")}
    end
  catch
    {:ssz, %Error{} = error} -> {:error, error}
  end

  @doc """
  The newest schema module declared for `name` in this VM (`{:ok, module}` or
  `:error`): looked for among the loaded modules and the modules of the loaded
  applications, then remembered. `register/1` makes one known before it is loaded.
  A name has one module per major version (`modules/2`).
  """
  @spec module(String.t()) :: {:ok, module()} | :error
  def module(name) when is_binary(name) do
    case modules(name, nil) do
      majors when map_size(majors) > 0 -> {:ok, majors[Enum.max(Map.keys(majors))]}
      _ -> :error
    end
  end

  @doc false
  # %{major => module} for `name`; looked for again when `major` is not among them.
  @spec modules(String.t(), non_neg_integer() | nil) :: %{non_neg_integer() => module()}
  def modules(name, major) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      %{^major => _} = majors -> majors
      %{} = majors when major == nil and map_size(majors) > 0 -> majors
      _ -> find(name)
    end
  end

  @doc "Makes schema `module` known by its name and major version (`module/1`)."
  @spec register(module()) :: :ok
  def register(module) do
    name = module.__schema__(:name)
    majors = :persistent_term.get({__MODULE__, name}, %{})
    :persistent_term.put({__MODULE__, name}, Map.put(majors, major(module), module))
  end

  defp find(name) do
    loaded = for {m, _} <- :code.all_loaded(), do: m
    in_apps = for {app, _, _} <- Application.loaded_applications(), m <- app_modules(app), do: m

    # one module per major is the rule; if there are more, the newest minor wins
    majors =
      (loaded ++ in_apps)
      |> Enum.uniq()
      |> Enum.filter(&named?(&1, name))
      |> Enum.sort_by(&Versions.parse(&1.__schema__(:version)))
      |> Map.new(&{major(&1), &1})

    if map_size(majors) > 0, do: :persistent_term.put({__MODULE__, name}, majors)
    majors
  end

  defp major(module), do: module.__schema__(:version) |> Versions.parse() |> elem(0)

  defp app_modules(app), do: Application.spec(app, :modules) || []

  defp named?(m, name), do: schema?(m) and m.__schema__(:name) == name

  defp schema?(m) do
    function_exported?(m, :__bb_encode__, 2) or
      (Code.ensure_loaded?(m) and function_exported?(m, :__bb_encode__, 2))
  end

  @doc false
  # The value a {:"$bb_schema", name, version, data} term stands for (SPEC §9).
  @spec read_value(String.t(), String.t(), binary()) :: {:ok, struct()} | {:error, Error.t()}
  defdelegate read_value(name, version, data), to: Versions

  @doc """
  The value of schema `module` that `binary` holds: `{:ok, struct}`, or
  `{:error, %Bridge.Error{}}` (reason `:bad_ssz`) naming the field path.
  """
  @spec from_ssz(module(), binary()) :: {:ok, struct()} | {:error, Error.t()}
  def from_ssz(module, binary) when is_atom(module) and is_binary(binary) do
    {:ok, module.__bb_decode__(binary, module.__schema__(:short))}
  catch
    {:ssz, %Error{} = error} -> {:error, error}
  end
end
