defmodule Bridge.Test.Seed do
  @moduledoc false
  # Seeded generators for the fuzz tests: one seed per run, printed so a failure can
  # be replayed with BB_FUZZ_SEED=<seed>, and a per-test :rand state derived from it.

  # For setup_all: the run's seed (from BB_FUZZ_SEED, else random), printed.
  def run_seed(module) do
    seed =
      case System.get_env("BB_FUZZ_SEED") do
        nil -> :rand.uniform(1_000_000_000)
        s -> String.to_integer(s)
      end

    IO.puts("\n#{inspect(module)} seed: #{seed} (replay with BB_FUZZ_SEED=#{seed})")
    seed
  end

  # For setup: seeds this process's :rand from the run seed and the test's name.
  def seed_test(seed, test, salt), do: :rand.seed(:exsss, {seed, :erlang.phash2(test), salt})
end
