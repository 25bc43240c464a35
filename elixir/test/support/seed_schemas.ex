# The seed's four typed schemas (protocol/vectorgen/ssz.py declares the same in
# Python): the golden vectors' (elixir/test/schema_test.exs) and the benchmark's
# (bench/schemas.exs, which runs in the test environment).
defmodule Seed.ModelConfig do
  @moduledoc false
  use Bridge.Schema, name: "truthgpt.ModelConfig", version: "2.0"
  field(:name, :string)
  field(:hidden_size, :uint32)
  field(:num_heads, :uint16)
  field(:layers, {:list, :uint16, max: 1024})
  field(:vocab_size, :uint32)
  field(:dropout, :float32)
  field(:tie_embeddings, :boolean)
  field(:dtype, :string, default: "float32")
end

defmodule Seed.OptimizationConfig do
  @moduledoc false
  use Bridge.Schema, name: "truthgpt.OptimizationConfig", version: "1.0"
  field(:learning_rate, :float64)
  field(:weight_decay, :float64)
  field(:betas, {:vector, :float64, 2})
  field(:warmup_steps, :uint32)
  field(:max_steps, :uint64)
  field(:gradient_clipping, {:optional, :float64})
  field(:scheduler, :string)
end

defmodule Seed.PerformanceMetrics do
  @moduledoc false
  use Bridge.Schema, name: "truthgpt.PerformanceMetrics", version: "1.0"
  field(:step, :uint64)
  field(:loss, :float32)
  field(:accuracy, :float32)
  field(:tokens_per_second, :float64)
  field(:latency_ms, {:vector, :float32, 3})
  field(:memory_bytes, :uint64)
  field(:gpu_utilization, :uint8)
  field(:delta, :int64)
end

defmodule Seed.ModelInfo do
  @moduledoc false
  use Bridge.Schema, name: "truthgpt.ModelInfo", version: "1.0"
  field(:config, Seed.ModelConfig)
  field(:optimizer, Seed.OptimizationConfig)
  field(:metrics, {:list, Seed.PerformanceMetrics, max: 64})
  field(:checkpoint, {:optional, :bytes})
  field(:tags, {:list, :string, max: 16})
  field(:status, {:union, [nil, :uint32, :string]})
end
