defmodule Bridge.JSONTest do
  # The strict JSON decoder of protocol/registry.json and the golden vector
  # descriptions: values, exact integers, and every refusal with its offset.
  use ExUnit.Case, async: true

  alias Bridge.JSON
  alias Bridge.JSON.DecodeError

  test "values" do
    assert JSON.decode(~s( {"a": [1, -2.5, 1E3, true, false, null], "b": {}, "c": []} )) ==
             {:ok, %{"a" => [1, -2.5, 1000.0, true, false, nil], "b" => %{}, "c" => []}}

    assert JSON.decode("18446744073709551615") == {:ok, 18_446_744_073_709_551_615}

    assert JSON.decode(~s("a\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00")) ==
             {:ok, "a\"\\/\b\f\n\r\té😀"}

    assert JSON.decode!(~s(["é"])) == ["é"]
  end

  test "refusals name the offset and what is wrong there" do
    for {text, offset, reason} <- [
          {"", 0, "the input ends where a value should be"},
          {~s({"a": 1, "a": 2}), 9, ~s(the key "a" appears twice)},
          {"[1,]", 3, "a value should start here"},
          {"[1 2]", 3, "expected , or ] in an array"},
          {~s({"a" 1}), 5, "expected : after an object key"},
          {"{1: 2}", 1, "expected a string key in an object"},
          {"01", 0, "a number with a leading zero"},
          {"-", 0, "a malformed number"},
          {"1e400", 0, "a number beyond the float range"},
          {~s("a\nb"), 2, "a control character in a string (escape it)"},
          {~s("\\x"), 1, "an unknown escape in a string"},
          {~s("\\u12"), 1, "a \\u escape needs 4 hex digits"},
          {~s("\\ud800"), 1, "a lone surrogate \\ud800"},
          {~s("\\ud800\\u0041"), 1, "a high surrogate without its low surrogate"},
          {<<?", 0xFF, ?">>, 1, "a string that is not UTF-8"},
          {~s("abc), 4, "the input ends inside a string"},
          {"[1] x", 4, "data after the value"}
        ] do
      assert JSON.decode(text) == {:error, %DecodeError{offset: offset, reason: reason}},
             inspect(text)
    end

    error = assert_raise DecodeError, fn -> JSON.decode!("[1,]") end
    assert Exception.message(error) == "invalid JSON at byte 3: a value should start here"
  end

  test "every golden vector description and the registry decode" do
    root = Path.expand("../..", __DIR__)

    for path <- [
          Path.join(root, "protocol/registry.json")
          | Path.wildcard(Path.join(root, "protocol/vectors/*.json"))
        ] do
      assert {:ok, %{}} = JSON.decode(File.read!(path)), path
    end
  end
end
