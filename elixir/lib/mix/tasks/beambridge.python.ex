defmodule Mix.Tasks.Beambridge.Python do
  @shortdoc "Sets up the Python environment of the application's bridges"

  @moduledoc """
  Sets up the Python environment `Bridge` uses when it is given no `:python`: a
  virtual environment with beambridge's Python package, installed from the
  source this application was built from, and the application's own Python
  requirements.

      mix beambridge.python

  Requirements come from the application's config:

      config :beambridge,
        python_requirements: ["numpy>=1.24", "scikit-learn"],
        python_requirements_file: "priv/python/requirements.txt"

  The environment lives in `_build/beambridge_python` of the project, shared
  by every Mix environment; a release built on this machine uses it as it is.
  Running the task again does nothing, in well under a second and without the
  network, unless the beambridge source, the requirements or the interpreter
  changed (then it installs again). `--force` installs again anyway.

  The interpreter the environment is made from is `python3` in `PATH`, or
  `config :beambridge, python_base: "/usr/bin/python3.11"`.
  """

  use Mix.Task

  @stamp ".beambridge_stamp"

  @impl Mix.Task
  def run(args) do
    {opts, _, _} = OptionParser.parse(args, strict: [force: :boolean])
    Mix.Task.run("compile")
    Application.load(:beambridge)
    venv = Bridge.Python.venv_dir()
    python = Path.join([venv, "bin", "python"])
    requirements = requirements()
    base = Application.get_env(:beambridge, :python_base, "python3")
    stamp = stamp(base, requirements)

    if opts[:force] != true and File.regular?(python) and read_stamp(venv) == stamp do
      Mix.shell().info("beambridge: the Python environment is up to date (#{python})")
    else
      install(base, venv, python, requirements)
      File.write!(Path.join(venv, @stamp), stamp)
      Mix.shell().info("beambridge: Python ready: #{python}; bridges without :python use it")
    end
  end

  defp install(base, venv, python, requirements) do
    if not File.regular?(python) do
      step("creating the virtual environment #{venv}")
      run!(base, ["-m", "venv", venv])
    end

    step("installing beambridge from #{Bridge.Python.source()}")
    pip = ["-m", "pip", "install", "--disable-pip-version-check", "--upgrade"]
    run!(python, pip ++ [Bridge.Python.source()])

    if requirements != [] do
      step("installing the application's requirements")
      run!(python, pip ++ Enum.flat_map(requirements, &requirement_args/1))
    end
  end

  defp requirement_args({:file, path}), do: ["-r", path]
  defp requirement_args(spec), do: [spec]

  defp requirements do
    listed = Application.get_env(:beambridge, :python_requirements, [])

    file =
      case Application.get_env(:beambridge, :python_requirements_file) do
        nil -> []
        path -> [{:file, Path.expand(path)}]
      end

    if not Enum.all?(listed, &is_binary/1) do
      Mix.raise(
        "config :beambridge, python_requirements must be a list of strings (pip " <>
          "requirement specifiers), got: #{inspect(listed)}"
      )
    end

    listed ++ file
  end

  defp step(text), do: Mix.shell().info("beambridge: #{text}...")

  defp run!(cmd, args) do
    exe = System.find_executable(cmd) || cmd

    case System.cmd(exe, args, into: IO.stream(:stdio, :line), stderr_to_stdout: true) do
      {_, 0} ->
        :ok

      {_, status} ->
        Mix.raise("beambridge: `#{cmd} #{Enum.join(args, " ")}` failed (exit #{status})")
    end
  rescue
    e in ErlangError ->
      Mix.raise(
        "beambridge: cannot run #{cmd} (#{Exception.message(e)}); install Python 3 with venv " <>
          "(Debian: apt install python3-venv) or set config :beambridge, python_base: \"/path\""
      )
  end

  # What the environment was made from: the interpreter, beambridge's Python
  # source (names, sizes and times of its files) and the requirements.
  defp stamp(base, requirements) do
    source = Bridge.Python.source()

    files =
      ["pyproject.toml" | Path.wildcard("python/beambridge/**/*", cwd: source)]
      |> Enum.reject(&String.contains?(&1, "__pycache__"))
      |> Enum.sort()
      |> Enum.map(fn rel ->
        case File.stat(Path.join(source, rel), time: :posix) do
          {:ok, st} -> {rel, st.size, st.mtime}
          _ -> {rel, :missing}
        end
      end)

    req_files = for {:file, path} <- requirements, do: {path, File.read(path)}

    :crypto.hash(:sha256, :erlang.term_to_binary({base, files, requirements, req_files}))
    |> Base.encode16(case: :lower)
  end

  defp read_stamp(venv) do
    case File.read(Path.join(venv, @stamp)) do
      {:ok, stamp} -> stamp
      _ -> nil
    end
  end
end
