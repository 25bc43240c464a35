defmodule Bridge.DoctestTest do
  use ExUnit.Case, async: true

  doctest Bridge
  doctest Bridge.Tensor
  doctest Bridge.Buffer
  doctest Bridge.Frame
  doctest Bridge.Provenance
  doctest Bridge.Telemetry
  doctest Bridge.Metrics.Histogram
  doctest Bridge.Metrics.Prometheus
end
