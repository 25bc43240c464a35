defmodule Bridge.Python do
  @moduledoc false
  # Finds the interpreter and checks, once per bridge, that it can import the
  # worker, so a wrong path or a missing package is a :start_failed error with
  # Python's own output instead of a worker that never becomes ready.

  alias Bridge.{Config, Error}

  @spec check(Config.t()) :: {:ok, String.t()} | {:error, Error.t()}
  def check(%Config{python: python} = config) do
    with {:ok, path} <- resolve(python) do
      try do
        case System.cmd(path, ["-c", "import beambridge, beambridge.worker"],
               stderr_to_stdout: true,
               env: [{"PYTHONPATH", pythonpath(config)}, {"PYTHONSAFEPATH", "1"}]
             ) do
          {_, 0} ->
            {:ok, path}

          {output, status} ->
            {:error,
             failed(
               python,
               "#{path} cannot import beambridge.worker (exit status #{status}):\n" <>
                 String.trim_trailing(output) <> "\n" <> install_hint(path)
             )}
        end
      rescue
        e in ErlangError ->
          {:error, failed(python, "#{path} cannot run: #{Exception.message(e)}")}
      end
    end
  end

  @spec pythonpath(Config.t()) :: String.t()
  def pythonpath(%Config{python_path: paths}) do
    (Enum.map(paths, &Path.expand/1) ++ List.wrap(System.get_env("PYTHONPATH")))
    |> Enum.join(":")
  end

  # The beambridge source this application was built from (a path or git
  # dependency's checkout): its Python package is installed from there.
  @source Path.expand("../../..", __DIR__)

  @doc false
  @spec source() :: String.t()
  def source, do: @source

  @doc false
  # Where `mix beambridge.python` makes the application's Python environment:
  # `_build/beambridge_python` of the project that built this application,
  # recorded in the :beambridge application's env at build time (mix.exs), so a
  # release made on the same machine finds it too.
  @spec venv_dir() :: String.t()
  def venv_dir do
    Application.get_env(:beambridge, :python_venv) || Path.expand("_build/beambridge_python")
  end

  @doc false
  # The interpreter of a bridge given no :python: BEAMBRIDGE_PYTHON, else the
  # environment `mix beambridge.python` made, else python3 from PATH.
  @spec default() :: String.t()
  def default do
    venv_python = Path.join([venv_dir(), "bin", "python"])

    cond do
      python = System.get_env("BEAMBRIDGE_PYTHON") -> python
      File.regular?(venv_python) -> venv_python
      true -> "python3"
    end
  end

  @doc false
  # The command that puts the beambridge Python package into `python`.
  @spec install_hint(String.t()) :: String.t()
  def install_hint(python) do
    if File.regular?(Path.join(@source, "pyproject.toml")) do
      "Install beambridge's Python package into that interpreter:\n\n    " <>
        "#{python} -m pip install #{@source}\n"
    else
      "Install beambridge's Python package into that interpreter " <>
        "(`#{python} -m pip install <the beambridge source directory>`)."
    end
  end

  defp resolve(python) do
    path =
      if String.contains?(python, "/"),
        do: Path.expand(python),
        else: System.find_executable(python)

    cond do
      path == nil -> {:error, failed(python, "#{python} is not in PATH")}
      not File.regular?(path) -> {:error, failed(python, "#{path} does not exist")}
      true -> {:ok, path}
    end
  end

  defp failed(python, why) do
    Error.new(:start_failed, :start_failed,
      field: :python,
      value: python,
      message:
        "worker start failed: #{why} (run `mix beambridge.python` to set up the " <>
          "application's Python, or set the :python option or BEAMBRIDGE_PYTHON to an " <>
          "interpreter where `import beambridge` works)"
    )
  end
end
