[
  inputs: [
    "mix.exs",
    ".formatter.exs",
    "elixir/**/*.{ex,exs}",
    "tests/**/*.exs",
    "bench/**/*.exs"
  ]
]
