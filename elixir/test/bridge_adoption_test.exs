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
end
