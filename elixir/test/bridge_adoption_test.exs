defmodule Bridge.AdoptionTest do
  # What a new application meets (issue 9): handlers found where python_path says,
  # whatever directory the VM runs in.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  @moduletag :tmp_dir

  test "a module in the working directory with the handler's name does not shadow it", %{
    tmp_dir: dir
  } do
    # the test handlers' module name, and a `beambridge` package that fails to import
    File.write!(Path.join(dir, "bbt_handlers.py"), "def add(a, b):\n    return b'shadowed'\n")
    File.mkdir_p!(Path.join(dir, "beambridge"))
    File.write!(Path.join([dir, "beambridge", "__init__.py"]), "raise ImportError('shadowed')\n")
    opts = bridge_opts(Shadow, pool_size: 1)
    cwd = File.cwd!()
    File.cd!(dir)

    try do
      start_supervised!({Bridge, opts})
      assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Shadow)
      # the worker does run there: only imports skip it
      assert {:ok, ^dir} = Bridge.call({:os, :getcwd}, [], pool: Shadow)
    after
      File.cd!(cwd)
    end
  end

  test "python_path entries {app, dir} are that directory of the application, wherever it is" do
    {:ok, config} = Bridge.Config.new(python_path: [{:beambridge, "priv"}, "rel/dir"])
    assert config.python_path == [Path.join(Application.app_dir(:beambridge), "priv"), "rel/dir"]

    assert {:error, %Bridge.Error{reason: :bad_option, field: :python_path} = e} =
             Bridge.start_link(bridge_opts(NoApp, python_path: [{:no_such_app_here, "priv"}]))

    assert Exception.message(e) =~ ":no_such_app_here, which is not loaded"

    for bad <- [[""], [{"app", "priv"}], [{:app, :priv}], "priv/python"] do
      assert {:error, %Bridge.Error{reason: :bad_option, field: :python_path}} =
               Bridge.start_link(bridge_opts(BadPath, python_path: bad))
    end
  end

  test "an interpreter without beambridge: the error and the log give the command to run", %{
    tmp_dir: dir
  } do
    venv = Path.join(dir, "venv")
    {_, 0} = System.cmd(Path.expand(".venv/bin/python"), ["-m", "venv", "--without-pip", venv])
    python = Path.join([venv, "bin", "python"])

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        assert {:error, %Bridge.Error{kind: :start_failed} = e} =
                 Bridge.start_link(bridge_opts(NoPkg, python: python))

        send(self(), {:message, Exception.message(e)})
      end)

    assert_received {:message, message}
    command = "#{python} -m pip install #{File.cwd!()}"
    assert message =~ "No module named 'beambridge'"
    assert message =~ command
    # the log has it as text, not as an inspected struct
    assert log =~ command
    assert File.regular?(Path.join(File.cwd!(), "pyproject.toml"))
  end

  test "a NIF build that fails names the Debian packages to install", %{tmp_dir: dir} do
    # a real failed build: no C compiler where make looks for one
    {output, status} =
      System.cmd("make", ["-C", "shm", "CC=#{dir}/no/cc", "PRIV_DIR=#{dir}"],
        stderr_to_stdout: true
      )

    assert status != 0

    assert Mix.Tasks.Compile.BridgeNif.missing_packages(output) =~
             ~r/apt install build-essential$/

    assert Mix.Tasks.Compile.BridgeNif.missing_packages("erl_nif.h: No such file") =~ "erlang-dev"

    assert Mix.Tasks.Compile.BridgeNif.missing_packages(
             "fatal error: xxhash.h: No such file\n/usr/bin/ld: cannot find -lzstd"
           ) =~ "apt install libxxhash-dev libzstd-dev"

    assert Mix.Tasks.Compile.BridgeNif.missing_packages("something else") =~
             "build-essential libxxhash-dev libzstd-dev"
  end

  test "a NIF that does not load names the runtime packages" do
    text = "Failed to load NIF library: libzstd.so.1: cannot open shared object file"
    assert Bridge.NIF.load_failed(text) =~ "apt install libzstd1"
    assert Bridge.NIF.load_failed("undefined symbol: foo") =~ "mix deps.compile beambridge"
  end
end
