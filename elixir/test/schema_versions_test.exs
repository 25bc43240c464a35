defmodule Vers.Minor20 do
  use Bridge.Schema, name: "t.Minor", version: "2.0"
  field(:name, :string)
  field(:size, :uint32)
end

defmodule Vers.Minor23 do
  use Bridge.Schema, name: "t.Minor", version: "2.3"
  field(:name, :string)
  field(:size, :uint32)
  field(:tags, {:list, :uint16, max: 8}, default: [7], since: "2.1")
  field(:note, {:optional, :string}, since: "2.2")
  field(:more, :uint32, default: 5, since: "2.3")
end

defmodule Vers.ChainV1 do
  use Bridge.Schema, name: "t.Chain", version: "1.0"
  field(:title, :string)
  field(:hidden, :uint16)
end

defmodule Vers.ChainV2 do
  use Bridge.Schema, name: "t.Chain", version: "2.0"
  field(:name, :string)
  field(:hidden_size, :uint32)
  migrate(from: "1.0", with: &__MODULE__.from_v1/1)

  def from_v1(old), do: %{name: old.title, hidden_size: old.hidden * 2}
end

defmodule Vers.ChainV3 do
  use Bridge.Schema, name: "t.Chain", version: "3.1"
  field(:name, :string)
  field(:hidden_size, :uint32)
  field(:layers, {:list, :uint16, max: 16})
  field(:dtype, :string, default: "float32", since: "3.1")
  migrate(from: "2.0", with: &__MODULE__.from_v2/1)

  def from_v2(old), do: Map.put(old, :layers, [rem(old.hidden_size, 65_536)])
end

defmodule Vers.Fails1 do
  use Bridge.Schema, name: "t.Fails", version: "1.0"
  field(:a, :uint32)
end

defmodule Vers.Fails2 do
  use Bridge.Schema, name: "t.Fails", version: "2.0"
  field(:a, :uint32)
  migrate(from: "1.0", with: &__MODULE__.from_v1/1)

  def from_v1(%{a: 1}), do: raise(KeyError, key: :b)
  def from_v1(%{a: 2}), do: %{a: -1}
  def from_v1(%{a: 3}), do: %{a: 1, zz: 2}
  def from_v1(%{a: 4}), do: [:no]
  def from_v1(%{a: a}), do: %{a: a + 100}
end

defmodule Vers.Gap1 do
  use Bridge.Schema, name: "t.Gap", version: "1.2"
  field(:a, :uint32)
end

defmodule Vers.Gap4 do
  use Bridge.Schema, name: "t.Gap", version: "4.0"
  field(:a, :uint32)
  migrate(from: "3.0", with: &Function.identity/1)
end

defmodule Bridge.SchemaVersionsTest do
  # Versions of typed schemas (protocol/formats/ssz.md, "Versions"): older minors are
  # read with what later minors added filled in, older majors are migrated step by
  # step, and what cannot be read says exactly what to declare. The same cases as
  # tests/python/test_schema_versions.py.
  use ExUnit.Case, async: true
  import Bitwise

  alias Bridge.Schema
  alias Bridge.Schema.Versions
  alias Vers.{ChainV1, ChainV2, ChainV3, Minor20, Minor23}

  doctest Bridge.Schema.Versions

  defp read(name, version, data), do: Versions.read_value(name, version, data)
  defp ssz!(value), do: elem(Schema.to_ssz(value), 1)

  test "older minors are read with the later fields filled in" do
    data = ssz!(%Minor20{name: "a", size: 3})
    assert read("t.Minor", "2.0", data) == {:ok, %Minor23{name: "a", size: 3}}
    assert %Minor23{tags: [7], note: nil, more: 5} = %Minor23{name: "a", size: 3}

    # what a 2.1 writer wrote: name, size and tags (the bytes Python's test reads too)
    v21 = Base.decode16!("0c000000010000000d0000006201000200", case: :lower)
    assert read("t.Minor", "2.1", v21) == {:ok, %Minor23{name: "b", size: 1, tags: [1, 2]}}
    all = %Minor23{name: "c", size: 2, tags: [], note: "x", more: 1}
    assert read("t.Minor", "2.3", ssz!(all)) == {:ok, all}

    assert {:error, e} = read("t.Minor", "2.1", binary_part(v21, 0, byte_size(v21) - 1))
    assert e.reason == :bad_ssz and e.message =~ "Minor23.tags"
  end

  test "every older-minor value reads as itself plus the defaults" do
    for _ <- 1..200 do
      name = for(_ <- 1..:rand.uniform(20), into: "", do: <<Enum.random(?a..?z)>>)
      size = :rand.uniform(1 <<< 32) - 1
      data = ssz!(%Minor20{name: name, size: size})
      assert read("t.Minor", "2.0", data) == {:ok, %Minor23{name: name, size: size}}
    end
  end

  test "a newer minor or major is refused, saying what to declare" do
    assert {:error, e} = read("t.Minor", "2.4", "")
    assert e.reason == :unknown_schema
    assert e.message =~ "newer than Vers.Minor23 here (2.3)" and e.message =~ "declare 2.4 here"

    assert {:error, e} = read("t.Chain", "4.0", "")
    assert e.reason == :unknown_schema and e.message =~ "newer than Vers.ChainV3 here (3.1)"
  end

  test "two older majors are migrated step by step" do
    assert read("t.Chain", "1.0", ssz!(%ChainV1{title: "m", hidden: 300})) ==
             {:ok, %ChainV3{name: "m", hidden_size: 600, layers: [600]}}

    assert read("t.Chain", "2.0", ssz!(%ChainV2{name: "m", hidden_size: 70_000})) ==
             {:ok, %ChainV3{name: "m", hidden_size: 70_000, layers: [rem(70_000, 65_536)]}}

    three_oh = Base.decode16!("0c000000010000000d0000006d0200", case: :lower)

    assert read("t.Chain", "3.0", three_oh) ==
             {:ok, %ChainV3{name: "m", hidden_size: 1, layers: [2]}}

    for _ <- 1..200 do
      v1 = %ChainV1{
        title: Base.encode16(:crypto.strong_rand_bytes(3)),
        hidden: :rand.uniform(65_536) - 1
      }

      expected = v1 |> Map.from_struct() |> ChainV2.from_v1() |> ChainV3.from_v2()
      assert read("t.Chain", "1.0", ssz!(v1)) == {:ok, struct!(ChainV3, expected)}
    end
  end

  test "no path lists every missing step exactly" do
    assert {:error, e} = read("t.Gap", "1.1", ssz!(%Vers.Gap1{a: 1}))
    assert e.reason == :no_migration

    assert e.message ==
             ~s|bad call: no_migration: schema "t.Gap" came in version 1.1; the newest here is | <>
               ~s|Vers.Gap4 4.0. Declare what is missing: | <>
               ~s|a migration from 1.2 to 2.0 (migrate from: "1.2", with: f in a module of 2.0 or later); | <>
               ~s|a migration from 2.0 to 3.0 (migrate from: "2.0", with: f in a module of 3.0 or later)|

    assert {:error, e} = read("t.Gap", "0.5", "")

    assert e.message =~
             ~s|the version 0.5 itself (use Bridge.Schema, name: "t.Gap", version: "0.5")|
  end

  test "a migration that fails names the step" do
    read = fn a -> read("t.Fails", "1.0", ssz!(%Vers.Fails1{a: a})) end
    assert read.(7) == {:ok, %Vers.Fails2{a: 107}}

    assert {:error, e} = read.(1)
    assert e.reason == :migration_failed

    assert e.message =~
             ~s|the migration of schema "t.Fails" from 1.0 to 2.0 raised KeyError: key :b not found|

    assert {:error, e} = read.(2)
    assert e.message =~ "gave a bad value: bad_value: Fails2.a is -1, expected uint32"
    assert {:error, e} = read.(3)
    assert e.message =~ "gave fields Vers.Fails2 takes not" and e.message =~ ":zz"
    assert {:error, e} = read.(4)
    assert e.message =~ "gave [:no], not a map of fields"
  end

  test "bad declarations are refused when the module compiles" do
    bad = fn body ->
      assert_raise ArgumentError, fn ->
        Code.compile_string("""
        defmodule Vers.Bad#{System.unique_integer([:positive])} do
          use Bridge.Schema, name: "t.Bad", version: "2.1"
          #{body}
        end
        """)
      end
    end

    assert bad.("field :a, :uint32, default: 0, since: \"2.2\"").message =~ "is no minor of 2.1"
    assert bad.("field :a, :uint32, default: 0, since: \"1.1\"").message =~ "is no minor of 2.1"
    assert bad.("field :a, :uint32, since: \"2.1\"").message =~ "needs a default"

    assert bad.("field :a, :uint32, default: 0, since: \"2.1\"\nfield :b, :uint32").message =~
             "go last, in order"

    assert bad.(~s(field :a, :uint32\nmigrate from: "2.0", with: &Function.identity/1)).message =~
             "is no older major"

    assert bad.(~s(field :a, :uint32\nmigrate from: "1.0", with: fn x -> x end)).message =~
             "takes a captured function"
  end

  test "a bad version on the wire is a typed error" do
    assert {:error, e} = read("t.Chain", "three", "")
    assert e.reason == :bad_ssz and e.message =~ ~s|"three" is no "major.minor"|
  end

  test "the newest module of a name is the reader, one per major" do
    assert Schema.module("t.Chain") == {:ok, ChainV3}
    assert %{1 => ChainV1, 2 => ChainV2, 3 => ChainV3} = Schema.modules("t.Chain", 1)
  end
end
