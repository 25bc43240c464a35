defmodule Bridge.ArrowDoctestTest do
  use ExUnit.Case, async: true

  doctest Bridge.Arrow
  doctest Bridge.Arrow.Array
  doctest Bridge.Arrow.Decimal
  doctest Bridge.Arrow.Field
  doctest Bridge.Arrow.Schema
  doctest Bridge.Arrow.Type
  doctest Bridge.Table
end
