defmodule Bridge.Schema.Versions do
  @moduledoc """
  Versions of typed schemas (protocol/formats/ssz.md, "Versions").

  A version is `"major.minor"`. Within a major, a minor adds fields at the end, each
  with a default (or of an `{:optional, t}` type), and says so with `since:`; a reader
  reads the bytes of every older minor of its major and fills in the rest. Across
  majors, a module declares `migrate from: "1.0", with: &__MODULE__.from_v1/1`: a
  function from the older major's fields (a map) to its own. Data of an older major is
  read with that major's module (declared too: one module per major of a name) and
  migrated step by step to the newest module of the name.

  ## Examples

      iex> defmodule Doc.ModelV1 do
      ...>   use Bridge.Schema, name: "doc.Model", version: "1.0"
      ...>   field :title, :string
      ...>   field :hidden, :uint32
      ...> end
      iex> defmodule Doc.Model do
      ...>   use Bridge.Schema, name: "doc.Model", version: "2.1"
      ...>   field :name, :string
      ...>   field :hidden_size, :uint32
      ...>   field :dtype, :string, default: "float32", since: "2.1"
      ...>   migrate from: "1.0", with: &__MODULE__.from_v1/1
      ...>   def from_v1(old), do: %{name: old.title, hidden_size: old.hidden}
      ...> end
      iex> {:ok, v1} = Bridge.Schema.to_ssz(struct(Doc.ModelV1, title: "tiny", hidden: 64))
      iex> {:ok, model} = Bridge.Schema.Versions.read_value("doc.Model", "1.0", v1)
      iex> {model.name, model.hidden_size, model.dtype}
      {"tiny", 64, "float32"}
      iex> {:error, e} = Bridge.Schema.Versions.read_value("doc.Model", "0.3", "")
      iex> e.reason
      :no_migration
      iex> e.message |> String.split("Declare what is missing: ") |> List.last()
      ~s|the version 0.3 itself (use Bridge.Schema, name: "doc.Model", version: "0.3"); a migration from 0.3 to 1.0 (migrate from: "0.3", with: f in a module of 1.0 or later)|
  """

  alias Bridge.{Error, Schema}

  @doc "`\"major.minor\"` (each 0 to 65535) as `{major, minor}`, or `:error`."
  @spec parse(term()) :: {non_neg_integer(), non_neg_integer()} | :error
  def parse(version) when is_binary(version) do
    with [a, b] <- String.split(version, "."),
         {major, ""} <- Integer.parse(a),
         {minor, ""} <- Integer.parse(b),
         true <- major <= 65_535 and minor <= 65_535,
         true <- a =~ ~r/\A\d+\z/ and b =~ ~r/\A\d+\z/ do
      {major, minor}
    else
      _ -> :error
    end
  end

  def parse(_version), do: :error

  ## At compile time (Bridge.Schema.__before_compile__)

  @doc false
  # The `since:` of the fields, checked: minors of the module's major up to its
  # version, on the last fields, in order, each with a default or optional.
  @spec since!(String.t(), String.t(), list()) :: %{atom() => {integer(), integer()}}
  def since!(short, version, fields) do
    {major, _} = own = parse(version)

    since =
      for {name, t, opts} <- fields, v = Keyword.get(opts, :since), into: %{} do
        at = parse(v)

        unless at != :error and elem(at, 0) == major and at <= own,
          do:
            raise(
              ArgumentError,
              "#{short}.#{name}: since #{inspect(v)} is no minor of #{version}"
            )

        unless Keyword.has_key?(opts, :default) or match?({:optional, _}, t),
          do: raise(ArgumentError, "#{short}.#{name}: a field added in #{v} needs a default")

        {name, at}
      end

    order = for {name, _, _} <- fields, do: Map.get(since, name, {major, 0})

    if order != Enum.sort(order),
      do: raise(ArgumentError, "#{short}: fields added by later minors go last, in order")

    since
  end

  @doc false
  # The `migrate` declarations, checked: %{from_major => function}.
  @spec migrations!(String.t(), String.t(), module()) :: %{non_neg_integer() => function()}
  def migrations!(short, version, module) do
    {major, _} = parse(version)

    for {from, fun} <- Module.get_attribute(module, :bb_migrations), into: %{} do
      at = parse(from)

      unless at != :error and elem(at, 0) < major,
        do: raise(ArgumentError, "#{short}: migrate from: #{inspect(from)} is no older major")

      unless is_function(fun, 1) and Function.info(fun, :type) == {:type, :external},
        do:
          raise(
            ArgumentError,
            "#{short}: migrate with: takes a captured function, &Module.fun/1, " <>
              "got #{inspect(fun)}"
          )

      {elem(at, 0), fun}
    end
  end

  @doc false
  # The older minors whose bytes hold fewer fields: [{minor, number of fields}].
  @spec older_minors(String.t(), list(), map()) :: [{non_neg_integer(), pos_integer()}]
  def older_minors(version, types, since) do
    {major, own} = parse(version)

    for minor <- 0..(own - 1)//1,
        n = length(at_minor(types, since, major, minor)),
        n < length(types),
        do: {minor, n}
  end

  @doc false
  # The fields ({name, type}) the values of schema `module` had at `minor` of its
  # major: those with no `since:` or one of that minor or before.
  @spec fields_at(module(), non_neg_integer()) :: [{atom(), term()}]
  def fields_at(module, minor) do
    {major, _} = parse(module.__schema__(:version))
    at_minor(module.__schema__(:fields), module.__schema__(:since), major, minor)
  end

  defp at_minor(types, since, major, minor),
    do: Enum.filter(types, fn {name, _} -> Map.get(since, name, {major, 0}) <= {major, minor} end)

  ## Reading

  @doc """
  The value a `{:"$bb_schema", name, version, data}` term stands for: a struct of the
  newest module declared for `name`, migrated from an older version when it came in
  one. Errors (kind `:bad_call`): `:unknown_schema` and `:no_migration` say what to
  declare, `:migration_failed` names the step, `:bad_ssz` the field.
  """
  @spec read_value(String.t(), String.t(), binary()) :: {:ok, struct()} | {:error, Error.t()}
  def read_value(name, version, data) do
    with {:ok, {module, minor, finish}} <- reader(name, version),
         {:ok, value} <- read(module, minor, data) do
      if finish, do: finish.(value), else: {:ok, value}
    end
  end

  @doc """
  The structs a `{:"$bb_schema_list", name, version, data}` term stands for (the SSZ
  list of `Bridge.Schema.Batch`), each read as `read_value/3` reads one.
  """
  @spec read_list(String.t(), String.t(), binary()) :: {:ok, [struct()]} | {:error, Error.t()}
  def read_list(name, version, data) do
    with {:ok, {module, minor, finish}} <- reader(name, version),
         {:ok, values} <- Bridge.Schema.Batch.decode(module, data, minor) do
      if finish == nil, do: {:ok, values}, else: migrate_all(values, finish)
    end
  end

  @doc false
  # Each of `values` through `finish` (reader/2), or the first error.
  @spec migrate_all([struct()], (struct() -> {:ok, struct()} | {:error, Error.t()}), list()) ::
          {:ok, [struct()]} | {:error, Error.t()}
  def migrate_all(values, finish, acc \\ [])
  def migrate_all([], _finish, acc), do: {:ok, Enum.reverse(acc)}

  def migrate_all([value | rest], finish, acc) do
    case finish.(value) do
      {:ok, migrated} -> migrate_all(rest, finish, [migrated | acc])
      error -> error
    end
  end

  @doc false
  # The module and minor to read data of `version` with, and what makes each struct
  # it reads one of the newest module ({:ok, struct} or an error; nil: nothing).
  @spec reader(String.t(), String.t()) ::
          {:ok,
           {module(), non_neg_integer(),
            nil | (struct() -> {:ok, struct()} | {:error, Error.t()})}}
          | {:error, Error.t()}
  def reader(name, version) do
    with {:ok, {major, minor}} <- wire_version(name, version),
         {:ok, majors} <- declared(name, version, major),
         target = majors[Enum.max(Map.keys(majors))],
         :ok <- not_newer(target, name, version, major),
         {:ok, steps} <- path(name, {major, minor}, majors, target),
         :ok <- not_newer_minor(majors[major], minor, version) do
      where = "the migrations of schema #{inspect(name)} from #{version}"

      finish = if steps != [], do: &migrate(&1, steps, target, where)

      {:ok, {majors[major], minor, finish}}
    end
  end

  defp wire_version(name, version) do
    case parse(version) do
      :error ->
        message = "bad_ssz: schema #{inspect(name)}: #{inspect(version)} is no \"major.minor\""
        {:error, Error.new(:bad_call, :bad_ssz, field: :schema, value: version, message: message)}

      parsed ->
        {:ok, parsed}
    end
  end

  defp declared(name, version, major) do
    case Schema.modules(name, major) do
      majors when map_size(majors) > 0 ->
        {:ok, majors}

      _ ->
        {:error,
         error(
           :unknown_schema,
           "no module is declared for schema #{inspect(name)} here: declare it with " <>
             "use Bridge.Schema, name: #{inspect(name)}, version: #{inspect(version)}"
         )}
    end
  end

  defp not_newer(target, name, version, major) do
    {have, _} = parse(target.__schema__(:version))

    if major > have,
      do:
        {:error, newer(name, version, target, "a reader migrates older majors, never newer ones")},
      else: :ok
  end

  defp newer(name, version, module, rule) do
    error(
      :unknown_schema,
      "schema #{inspect(name)} came in version #{version}, newer than #{inspect(module)} " <>
        "here (#{module.__schema__(:version)}): #{rule}; declare #{version} here"
    )
  end

  # The migrations from `major` to the target's, or :no_migration listing every
  # declaration and migration that is missing.
  defp path(name, {major, minor}, majors, target) do
    {goal, _} = parse(target.__schema__(:version))

    first =
      if Map.has_key?(majors, major),
        do: [],
        else: [
          "the version #{major}.#{minor} itself (use Bridge.Schema, name: #{inspect(name)}, " <>
            "version: \"#{major}.#{minor}\")"
        ]

    {steps, missing} = walk({name, majors}, major, goal, minor, {[], first})

    if missing == [] do
      {:ok, Enum.reverse(steps)}
    else
      {:error,
       error(
         :no_migration,
         "schema #{inspect(name)} came in version #{major}.#{minor}; the newest here is " <>
           "#{inspect(target)} #{target.__schema__(:version)}. Declare what is missing: " <>
           Enum.join(Enum.reverse(missing), "; ")
       )}
    end
  end

  defp walk(_declared, at, goal, _minor, {steps, missing}) when at >= goal, do: {steps, missing}

  defp walk({name, majors} = declared, at, goal, minor, {steps, missing}) do
    old = version_of(majors, at, minor)

    edge =
      majors
      |> Enum.filter(fn {m, mod} -> at < m and m <= goal and edge?(mod, at) end)
      |> Enum.max_by(&elem(&1, 0), fn -> nil end)

    case edge do
      {to, mod} ->
        label =
          "the migration of schema #{inspect(name)} from #{old} to #{version_of(majors, to, 0)}"

        step = {label, mod.__schema__(:migrations)[at]}
        walk(declared, to, goal, 0, {[step | steps], missing})

      nil ->
        new = version_of(majors, at + 1, 0)

        need =
          "a migration from #{old} to #{new} (migrate from: \"#{old}\", with: f in a module " <>
            "of #{new} or later)"

        walk(declared, at + 1, goal, 0, {steps, [need | missing]})
    end
  end

  defp edge?(module, major), do: is_map_key(module.__schema__(:migrations), major)

  defp version_of(majors, major, minor) do
    case majors do
      %{^major => mod} -> mod.__schema__(:version)
      _ -> "#{major}.#{minor}"
    end
  end

  defp not_newer_minor(module, minor, version) do
    {_, have} = parse(module.__schema__(:version))

    if minor > have,
      do:
        {:error,
         newer(module.__schema__(:name), version, module, "a reader reads older minors only")},
      else: :ok
  end

  defp read(module, minor, data) do
    {:ok, module.__bb_read__(minor, data, module.__schema__(:short))}
  catch
    {:ssz, %Error{} = error} -> {:error, error}
  end

  defp migrate(value, steps, target, where) do
    fields =
      Enum.reduce_while(steps, {:ok, Map.from_struct(value)}, fn {step, fun}, {:ok, fields} ->
        case step(fun, fields, step) do
          {:ok, _} = ok -> {:cont, ok}
          error -> {:halt, error}
        end
      end)

    with {:ok, fields} <- fields, do: make(target, fields, where)
  end

  defp step(fun, fields, step) do
    case fun.(fields) do
      %{__struct__: module} = out when is_atom(module) ->
        if function_exported?(module, :__schema__, 1),
          do: {:ok, Map.from_struct(out)},
          else: {:error, failed("#{step} gave #{inspect(out, limit: 5)}, not a map of fields")}

      %{} = out ->
        {:ok, out}

      out ->
        {:error, failed("#{step} gave #{inspect(out, limit: 5)}, not a map of fields")}
    end
  rescue
    e -> {:error, failed("#{step} raised #{inspect(e.__struct__)}: #{Exception.message(e)}")}
  end

  defp make(target, fields, where) do
    value = struct!(target, fields)

    case Schema.to_ssz(value) do
      {:ok, _} -> {:ok, value}
      {:error, e} -> {:error, failed("#{where} gave a bad value: #{e.message}")}
    end
  rescue
    e in KeyError ->
      {:error,
       failed("#{where} gave fields #{inspect(target)} takes not: #{Exception.message(e)}")}
  end

  defp failed(message), do: error(:migration_failed, message)

  defp error(reason, message),
    do: Error.new(:bad_call, reason, field: :schema, message: "bad call: #{reason}: #{message}")
end
