"""The README's "Add to your application", followed word for word in a throwaway Mix
project that depends on this checkout by path: the deps line, `mix deps.get` and
`mix beambridge.python`, the handler, the supervision tree, the calls; then a prod
release, started from another working directory, answers the same calls. Nothing is
configured beyond what the section says (no BEAMBRIDGE_PYTHON: the bridge finds the
environment the setup command made)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from test_readme import ROOT, section

TITLE = "Add to your application"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section(TITLE), flags=re.S)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BEAMBRIDGE_", "MIX_"))}
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd: list[str], cwd: Path, *, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _file_blocks(lang: str) -> dict[str, str]:
    """The blocks that start with a ``# <path>`` line, by that path."""
    out = {}
    for block in _blocks(lang):
        first, _, rest = block.partition("\n")
        if first.startswith("# ") and "." in first:
            out[first[2:].strip()] = rest
    return out


def test_the_readme_section_works_in_a_new_application_and_its_release(tmp_path: Path) -> None:
    app = tmp_path / "myapp"
    _run(["mix", "new", "myapp", "--sup"], tmp_path)

    elixir = _file_blocks("elixir")
    deps = elixir["mix.exs"].replace('path: "../beambridge"', f'path: "{ROOT}"')
    mix_exs = (app / "mix.exs").read_text()
    mix_exs = re.sub(r"  defp deps do\n.*?\n  end\n", deps, mix_exs, flags=re.S)
    assert str(ROOT) in mix_exs
    (app / "mix.exs").write_text(mix_exs)
    (app / "lib" / "myapp" / "application.ex").write_text(elixir["lib/myapp/application.ex"])
    for path, text in _file_blocks("python").items():
        (app / path).parent.mkdir(parents=True, exist_ok=True)
        (app / path).write_text(text)

    setup, release, _other_machine = _blocks("sh")
    for line in setup.strip().splitlines():
        _run(line.split(), app)
    # the second run finds everything in place
    assert "up to date" in _run(["mix", "beambridge.python"], app)

    calls = next(b for b in _blocks("elixir") if b.startswith("{:ok,"))
    out = _run(["mix", "run", "-e", calls + 'IO.puts("CALLS OK")'], app)
    assert "CALLS OK" in out

    build, start = release.strip().splitlines()
    env, _, cmd = build.partition(" ")
    _run(cmd.split(), app, env=dict(_env(), **dict([env.split("=")])))
    binary = app / start.split()[0]
    assert start.split()[1] == "start" and binary.exists()
    # `start` runs until stopped: `eval` starts the same release for one script,
    # from a working directory that is not the project's
    script = f'{{:ok, _}} = Application.ensure_all_started(:myapp)\n{calls}IO.puts("RELEASE OK")'
    out = _run([str(binary), "eval", script], tmp_path.parent)
    assert "RELEASE OK" in out
