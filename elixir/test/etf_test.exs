defmodule Bridge.ETFTest do
  # Bridge.ETF tells "names atoms this VM lacks" from "malformed" for frames that
  # binary_to_term(_, [:safe]) refused; and the worker turns the first into a
  # :bad_call for the caller instead of replacing the interpreter.
  use ExUnit.Case, async: false

  import Bridge.Test.BridgeCase

  alias Bridge.ETF

  # A name no code has made into an atom (a fresh random one per run).
  defp fresh_name, do: "bbt_unknown_" <> Base.encode16(:crypto.strong_rand_bytes(8), case: :lower)

  defp small_atom_utf8(name), do: <<119, byte_size(name), name::binary>>

  test "a well-formed frame whose only problem is unknown atoms" do
    name = fresh_name()
    # {:ok, 1, %{"status" => <unknown>, "n" => [1, 2.5, <<1,2>>]}} with the atom spliced in
    known =
      :erlang.term_to_binary(
        {:ok, 1, %{"status" => :placeholder_atom, "n" => [1, 2.5, <<1, 2>>]}}
      )

    # OTP 25 writes ATOM_EXT (100, latin-1, 2-byte length) for these atoms
    frame = :binary.replace(known, <<100, 16::16, "placeholder_atom">>, small_atom_utf8(name))

    assert frame != known
    assert_raise ArgumentError, fn -> :erlang.binary_to_term(frame, [:safe]) end
    assert ETF.classify(frame) == {:unknown_atoms, [name], {:ok, 1}}
    # the classification created nothing
    assert_raise ArgumentError, fn -> String.to_existing_atom(name) end
  end

  test "malformed frames are malformed, whatever atoms they hold" do
    name = fresh_name()
    good = <<131, 104, 2, 97, 1>> <> small_atom_utf8(name)
    assert ETF.classify(good) == {:unknown_atoms, [name], :other}

    for bad <- [
          <<>>,
          <<130, 97, 1>>,
          binary_part(good, 0, byte_size(good) - 1),
          good <> <<0>>,
          # a list claiming 2^32-1 elements in a few bytes
          <<131, 108, 255, 255, 255, 255, 106>>,
          # an improper list
          <<131, 108, 0, 0, 0, 1, 97, 1, 97, 2>>,
          # a pid (NEW_PID_EXT) is not in the tag set
          <<131, 88>> <> small_atom_utf8("nonode@nohost") <> <<0::32, 0::32, 0::32>>,
          # invalid UTF-8 in an atom
          <<131, 119, 2, 255, 254>>
        ] do
      assert ETF.classify(bad) == :malformed, inspect(bad)
    end
  end

  test "deep nesting is refused, not recursed into without bound" do
    deep = :binary.copy(<<104, 1>>, 10_000) <> <<106>>
    assert ETF.classify(<<131>> <> deep) == :malformed
  end

  describe "through a real worker" do
    setup do
      start_supervised!({Bridge, bridge_opts(ETFBridge, pool_size: 1)})
      :ok
    end

    test "a result naming an unknown atom is a :bad_call; the worker carries on" do
      {:ok, pid} = Bridge.call({:bbt_atoms, :pid}, [], pool: ETFBridge)
      name = fresh_name()

      assert {:error, %Bridge.Error{kind: :bad_call, reason: :unknown_atom, value: [^name]} = e} =
               Bridge.call({:bbt_atoms, :make_atom}, [name], pool: ETFBridge)

      assert Exception.message(e) =~ ":#{name}"

      assert {:ok, %{"status" => :ok}} =
               Bridge.call({:bbt_atoms, :make_atom}, ["ok"], pool: ETFBridge)

      # same interpreter: nothing was killed
      assert {:ok, ^pid} = Bridge.call({:bbt_atoms, :pid}, [], pool: ETFBridge)
    end
  end
end
