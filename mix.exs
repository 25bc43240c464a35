defmodule Mix.Tasks.Compile.BridgeNif do
  @moduledoc false
  # Builds shm/beambridge_nif.c with `make -C shm` into the app's priv dir.
  # make decides what is out of date; a failing build fails `mix compile`
  # with make's output.
  use Mix.Task.Compiler

  @impl Mix.Task.Compiler
  def run(_args) do
    priv_dir = Path.join(Mix.Project.app_path(), "priv")
    File.mkdir_p!(priv_dir)

    erts_include =
      Path.join([
        List.to_string(:code.root_dir()),
        "erts-#{:erlang.system_info(:version)}",
        "include"
      ])

    args = [
      "--no-print-directory",
      "-C",
      "shm",
      "ERTS_INCLUDE_DIR=#{erts_include}",
      "PRIV_DIR=#{priv_dir}"
    ]

    {output, status} = make(args)

    cond do
      status != 0 ->
        message =
          "make -C shm failed with exit status #{status}:\n" <> output <> missing_packages(output)

        Mix.shell().error(message)

        diagnostic = %Mix.Task.Compiler.Diagnostic{
          compiler_name: "bridge_nif",
          file: Path.expand("shm/beambridge_nif.c"),
          message: message,
          position: nil,
          severity: :error
        }

        {:error, [diagnostic]}

      output =~ "Nothing to be done" or output =~ "is up to date" ->
        {:noop, []}

      true ->
        Mix.shell().info(String.trim_trailing(output))
        {:ok, []}
    end
  end

  defp make(args) do
    System.cmd("make", args, stderr_to_stdout: true)
  rescue
    ErlangError -> {"make: command not found\n", 127}
  end

  # What the build output says is missing, as the Debian packages that provide it.
  @build_packages [
    {~r/xxhash\.h: No such file|cannot find -lxxhash/, "libxxhash-dev"},
    {~r/zstd\.h: No such file|cannot find -lzstd/, "libzstd-dev"},
    {~r/lz4frame\.h: No such file|cannot find -llz4/, "liblz4-dev"},
    {~r/zlib\.h: No such file|cannot find -lz\b/, "zlib1g-dev"},
    {~r/erl_nif\.h: No such file/, "erlang-dev"},
    {~r/make: command not found|cc: (command )?not found|cc: No such file or directory/,
     "build-essential"}
  ]

  @doc false
  def missing_packages(output) do
    case for({pattern, package} <- @build_packages, output =~ pattern, do: package) do
      [] ->
        "\nThe NIF needs a C compiler, make, and the headers of libxxhash, libzstd, liblz4 " <>
          "and zlib (Debian: apt install build-essential libxxhash-dev libzstd-dev " <>
          "liblz4-dev zlib1g-dev)."

      packages ->
        "\nMissing build packages; on Debian or Ubuntu: apt install #{Enum.join(packages, " ")}"
    end
  end

  @impl Mix.Task.Compiler
  def clean do
    System.cmd("make", [
      "--no-print-directory",
      "-C",
      "shm",
      "clean",
      "PRIV_DIR=#{Path.join(Mix.Project.app_path(), "priv")}"
    ])

    :ok
  end
end

defmodule Beambridge.MixProject do
  use Mix.Project

  def project do
    [
      app: :beambridge,
      version: "0.1.0",
      elixir: "~> 1.14",
      compilers: [:bridge_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      test_paths: ["elixir/test"],
      start_permanent: Mix.env() == :prod,
      deps: []
    ]
  end

  def application do
    [
      mod: {Bridge.Application, []},
      extra_applications: [:logger, :crypto, :inets],
      # where `mix beambridge.python` puts the application's Python: the build
      # directory of the project being built (ours, or the app that depends on us)
      env: [python_venv: Path.join(Path.dirname(Mix.Project.build_path()), "beambridge_python")]
    ]
  end

  defp elixirc_paths(:test), do: ["elixir/lib", "elixir/test/support"]
  defp elixirc_paths(_), do: ["elixir/lib"]
end
