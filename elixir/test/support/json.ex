defmodule Bridge.Test.JSON do
  @moduledoc false
  # The golden vector descriptions are read with the strict decoder of the
  # library (Bridge.JSON, which also reads protocol/registry.json at compile
  # time): objects -> maps with string keys, integers stay exact (u64 values).

  defdelegate decode!(text), to: Bridge.JSON
end
