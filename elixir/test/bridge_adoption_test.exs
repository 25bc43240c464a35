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

  test "strings: :str — binaries and map keys arrive as str; :bytes and Buffers stay bytes" do
    start_supervised!({Bridge, bridge_opts(Str, pool_size: 1, strings: :str)}, id: :str)
    params = %{"score" => 1.5, "tags" => ["a", "é"], "nested" => %{"k" => {"v", 1}}}

    # JSON-decoded Phoenix params: row["score"] works in the handler
    assert {:ok, 1.5} = Bridge.call({:operator, :getitem}, [params, "score"], pool: Str)
    assert {:ok, "str"} = Bridge.call({:bbt_handlers, :type_name}, ["x"], pool: Str)

    assert {:ok, ["str", "str", "dict", "list", "memoryview", "str"]} =
             Bridge.call(
               {:bbt_handlers, :types},
               ["", "naïve", params, ["a"], Bridge.Buffer.new(<<255>>), "b"],
               pool: Str
             )

    # a binary in a slice too (the pool's threshold is 64 KiB)
    big = String.duplicate("é", 50_000)
    assert {:ok, 50_000} = Bridge.call({:builtins, :len}, [big], pool: Str)

    # a list of maps big enough to travel as Arrow records: the same rule
    rows = for i <- 1..300, do: %{"name" => "n#{i}", "score" => i}
    Bridge.reset_format_stats()

    assert {:ok, ["str", "str", 300]} =
             Bridge.call(
               {:builtins, :eval},
               [
                 "[type(next(iter(x[0]))).__name__, type(x[299]['name']).__name__, len(x)]",
                 %{"x" => rows}
               ],
               pool: Str
             )

    assert Enum.any?(Bridge.format_stats(), &(&1.form in [:records, :records_slice]))

    # per call, back to bytes
    assert {:ok, "bytes"} =
             Bridge.call({:bbt_handlers, :type_name}, ["x"], pool: Str, strings: :bytes)

    # results come back as binaries whatever they were in Python
    assert {:ok, %{"score" => 1.5}} =
             Bridge.call({:bbt_handlers, :identity}, [%{"score" => 1.5}], pool: Str)

    # not UTF-8: an error naming where, and the worker goes on
    assert {:error, %Bridge.Error{kind: :bad_call, reason: :invalid_utf8} = e} =
             Bridge.call({:bbt_handlers, :identity}, [%{"k" => ["ok", <<0xFF, 0xFE>>]}], pool: Str)

    assert Exception.message(e) =~ ~s(argument 0 ['k'] [1] is not UTF-8)
    assert Exception.message(e) =~ "Bridge.Buffer"
    assert {:ok, 3} = Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Str)

    # the default pool: bytes, as before
    start_supervised!({Bridge, bridge_opts(Bytes, pool_size: 1)}, id: :bytes)
    assert {:ok, "bytes"} = Bridge.call({:bbt_handlers, :type_name}, ["x"], pool: Bytes)

    assert {:ok, "str"} =
             Bridge.call({:bbt_handlers, :type_name}, ["x"], pool: Bytes, strings: :str)

    assert {:error, %Bridge.Error{reason: :badarg, field: :strings}} =
             Bridge.call({:bbt_handlers, :add}, [1, 2], pool: Bytes, strings: :text)

    assert {:error, %Bridge.Error{reason: :bad_option, field: :strings}} =
             Bridge.start_link(bridge_opts(BadStr, strings: "str"))
  end

  test "a bridge given no :python uses BEAMBRIDGE_PYTHON, else the application's environment",
       %{tmp_dir: dir} do
    saved = {System.get_env("BEAMBRIDGE_PYTHON"), Application.get_env(:beambridge, :python_venv)}
    System.delete_env("BEAMBRIDGE_PYTHON")
    Application.put_env(:beambridge, :python_venv, dir)

    try do
      assert Bridge.Python.default() == "python3"
      File.mkdir_p!(Path.join(dir, "bin"))
      File.write!(Path.join([dir, "bin", "python"]), "")
      assert Bridge.Python.default() == Path.join([dir, "bin", "python"])
      assert {:ok, %{python: python}} = Bridge.Config.new([])
      assert python == Path.join([dir, "bin", "python"])
      System.put_env("BEAMBRIDGE_PYTHON", "/opt/py/bin/python")
      assert Bridge.Python.default() == "/opt/py/bin/python"
    after
      {env, venv} = saved

      if env,
        do: System.put_env("BEAMBRIDGE_PYTHON", env),
        else: System.delete_env("BEAMBRIDGE_PYTHON")

      restore_venv(venv)
    end
  end

  defp restore_venv(nil), do: Application.delete_env(:beambridge, :python_venv)
  defp restore_venv(venv), do: Application.put_env(:beambridge, :python_venv, venv)
end
