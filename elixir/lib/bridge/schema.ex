defmodule Bridge.Schema do
  @moduledoc """
  Typed schemas: a record type declared once, whose values are the same SSZ bytes on
  both sides (protocol/formats/ssz.md).

      defmodule MyApp.ModelConfig do
        use Bridge.Schema, name: "truthgpt.ModelConfig", version: "2.0"
        field :name, :string
        field :hidden_size, :uint32
        field :layers, {:list, :uint16, max: 1024}
        field :dtype, :string, default: "float32"
      end

  The module becomes a struct of its fields, in order. Field types: `:uint8` …
  `:uint64`, `:int8` … `:int64`, `:float32`, `:float64`, `:boolean`, `:bytes`,
  `:string`, `{:list, t, max: n}`, `{:vector, t, n}`, `{:optional, t}`,
  `{:union, [t, ...]}` (a value is `{index, value}`; only the first option may be
  `nil`), and other schema modules. `to_ssz/1` and `from_ssz/2` give and read the
  bytes; each module's container code is generated at compile time: one binary
  pattern for its fixed part.

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
  alias Bridge.Schema.SSZ

  @doc false
  defmacro __using__(opts) do
    name = Keyword.fetch!(opts, :name)
    version = Keyword.fetch!(opts, :version)

    quote do
      import Bridge.Schema, only: [field: 2, field: 3]
      Module.register_attribute(__MODULE__, :bb_fields, accumulate: true)
      @bb_name unquote(name)
      @bb_version Bridge.Schema.__version__!(unquote(version))
      @before_compile Bridge.Schema
    end
  end

  @doc "Declares a field of a schema: its name, type and (optional) `default:`."
  defmacro field(name, type, opts \\ []) do
    quote do
      @bb_fields {unquote(name), unquote(type), unquote(opts)}
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
    struct_fields = for {name, _t, opts} <- fields, do: {name, Keyword.get(opts, :default)}
    types = for {name, t, _} <- fields, do: {name, t}
    sizes = Enum.map(types, fn {_, t} -> SSZ.fixed_size(t) end)
    fixed = if nil in sizes, do: nil, else: Enum.sum(sizes)

    quote do
      defstruct unquote(Macro.escape(struct_fields))

      @doc false
      def __schema__(:name), do: @bb_name
      def __schema__(:version), do: @bb_version
      def __schema__(:fields), do: unquote(Macro.escape(types))
      def __schema__(:fixed_size), do: unquote(fixed)
      def __schema__(:short), do: unquote(short)

      unquote(Bridge.Schema.Codegen.encoder(types))
      unquote(Bridge.Schema.Codegen.decoder(types))
    end
  end

  @doc false
  # "major.minor", checked at compile time.
  @spec __version__!(String.t()) :: String.t()
  def __version__!(version) when is_binary(version) do
    if version =~ ~r/\A\d+\.\d+\z/,
      do: version,
      else: raise(ArgumentError, "a schema version is \"major.minor\", got #{inspect(version)}")
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
  The schema module declared for `name` in this VM (`{:ok, module}` or `:error`):
  looked for among the loaded modules and the modules of the loaded applications,
  then remembered. `register/1` makes one known before it is loaded. A name has one
  module per VM.
  """
  @spec module(String.t()) :: {:ok, module()} | :error
  def module(name) when is_binary(name) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      nil -> find(name)
      module -> {:ok, module}
    end
  end

  @doc "Makes schema `module` known by its name (`module/1`)."
  @spec register(module()) :: :ok
  def register(module) do
    :persistent_term.put({__MODULE__, module.__schema__(:name)}, module)
  end

  defp find(name) do
    loaded = for {m, _} <- :code.all_loaded(), do: m
    in_apps = for {app, _, _} <- Application.loaded_applications(), m <- app_modules(app), do: m

    # one module per name is the rule; if there are more, the first by name wins
    case (loaded ++ in_apps) |> Enum.uniq() |> Enum.sort() |> Enum.filter(&named?(&1, name)) do
      [m | _] ->
        register(m)
        {:ok, m}

      [] ->
        :error
    end
  end

  defp app_modules(app), do: Application.spec(app, :modules) || []

  defp named?(m, name), do: schema?(m) and m.__schema__(:name) == name

  defp schema?(m) do
    function_exported?(m, :__bb_encode__, 2) or
      (Code.ensure_loaded?(m) and function_exported?(m, :__bb_encode__, 2))
  end

  @doc false
  # The value a {:"$bb_schema", name, version, data} term stands for (SPEC §9).
  @spec read_value(String.t(), String.t(), binary()) :: {:ok, struct()} | {:error, Error.t()}
  def read_value(name, version, data) do
    with {:ok, module} <- module(name) |> found(name, version),
         :ok <- same_major(module, name, version) do
      from_ssz(module, data)
    end
  end

  defp found({:ok, m}, _name, _version), do: {:ok, m}

  defp found(:error, name, version) do
    {:error,
     Error.new(:bad_call, :unknown_schema,
       field: :schema,
       value: name,
       message:
         "bad call: unknown_schema: no module is declared for schema #{inspect(name)} here: " <>
           "declare it with use Bridge.Schema, name: #{inspect(name)}, version: #{inspect(version)}"
     )}
  end

  defp same_major(module, name, version) do
    have = module.__schema__(:version)

    if major(have) == major(version) do
      :ok
    else
      {:error,
       Error.new(:bad_call, :unknown_schema,
         field: :schema,
         value: {name, version},
         message:
           "bad call: unknown_schema: schema #{inspect(name)} came in version #{version}; " <>
             "#{inspect(module)} here is #{have} (another major version)"
       )}
    end
  end

  defp major(version), do: version |> String.split(".") |> hd()

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
