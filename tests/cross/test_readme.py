"""The README's examples, run as written against a real BEAM and real Python.

* "Calling Python": the Python block becomes the handler module it names, the Elixir
  block runs in `mix run` with the placeholder interpreter and path filled in.
* "Streams": the same, with a handler module of generators.
* "Timeouts keep the worker": the same, with a handler that sleeps past its timeout.
* "Callbacks into Elixir": the same, with a handler that calls back and sends.
* "Sessions and kept objects": the same, with a handler that keeps an object.
* "Typed schemas": the same, with schema classes in the handler module.
* "Provenance and inspection": the same, with a handler that adds to its call's meta.
* "Telemetry" and "Metrics, advice, alerts and a dashboard": against the handler
  module of "Calling Python".
* "Data formats": the Elixir block runs as written (its pattern matches are the
  assertions).
* "An arena from each side": the Elixir block runs in a real BEAM (its `#=> ...`
  line prints the real announcement and slice instead); the Python block then runs
  with the example's numbers replaced by the real ones.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
EXAMPLE = re.compile(
    r"#=> \{\{:object, :arena, (\d+), (\d+), (\d+), (\d+), (\d+)\}, (\d+), (\d+), (\d+)\}"
)


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(title: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section(title), flags=re.S)


def mix_run(
    script: str, name: str, *, require: tuple[Path, ...] = (), **kwargs: object
) -> subprocess.Popen[str]:
    path = ROOT / "_build" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(script)
    return subprocess.Popen(
        ["mix", "run", *(arg for r in require for arg in ("-r", str(r))), str(path)],
        cwd=ROOT,
        env=dict(os.environ, MIX_ENV="test"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_against_handler(handler: str, elixir: str, name: str, tmp_path: Path) -> None:
    """Write ``handler`` (a block starting ``# priv/python/<file>.py``) into ``tmp_path``
    and run ``elixir`` with the placeholder interpreter and path filled in."""
    module_path = re.match(r"# priv/python/(\w+\.py)\n", handler)
    assert module_path, "the handler block no longer starts with its file name"
    (tmp_path / module_path.group(1)).write_text(handler)
    assert '"/path/to/python"' in elixir and '[{:my_app, "priv/python"}]' in elixir
    script = elixir.replace('"/path/to/python"', f'"{PYTHON}"')
    script = script.replace('[{:my_app, "priv/python"}]', f'["{tmp_path}"]')
    proc = mix_run(script + '\nIO.puts("README OK")\n', name)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "README OK" in out


#: Sections whose one Python block is a handler module and whose one Elixir block runs
#: against it: (title, the script's name under _build/).
HANDLER_SECTIONS = [
    ("Calling Python", "readme_calling.exs"),
    ("Typed schemas", "readme_schemas.exs"),
    ("Streams", "readme_streams.exs"),
    ("Timeouts keep the worker", "readme_timeouts.exs"),
    ("Callbacks into Elixir", "readme_callbacks.exs"),
    ("Sessions and kept objects", "readme_sessions.exs"),
    ("Across nodes, and compression", "readme_nodes.exs"),
    ("Provenance and inspection", "readme_provenance.exs"),
]


@pytest.mark.parametrize(
    ("title", "script"), HANDLER_SECTIONS, ids=[t for t, _ in HANDLER_SECTIONS]
)
def test_readme_section_with_a_handler_runs(title: str, script: str, tmp_path: Path) -> None:
    [handler] = blocks(title, "python")
    [elixir] = blocks(title, "elixir")
    run_against_handler(handler, elixir, script, tmp_path)


def test_readme_telemetry_example_runs(tmp_path: Path) -> None:
    [handler] = blocks("Calling Python", "python")
    [elixir] = blocks("Telemetry", "elixir")
    run_against_handler(handler, elixir, "readme_telemetry.exs", tmp_path)


def test_readme_metrics_and_dashboard_example_runs(tmp_path: Path) -> None:
    [handler] = blocks("Calling Python", "python")
    [elixir] = blocks("Metrics, advice, alerts and a dashboard", "elixir")
    run_against_handler(handler, elixir, "readme_metrics.exs", tmp_path)


def run_elixir_block(title: str, name: str) -> None:
    """Run the one Elixir block of section ``title`` on its own; it must finish."""
    [elixir] = blocks(title, "elixir")
    proc = mix_run(elixir + '\nIO.puts("README OK")\n', name)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "README OK" in out


def test_readme_data_formats_example_runs() -> None:
    run_elixir_block("Data formats", "readme_formats.exs")


def test_readme_arrow_types_example_runs() -> None:
    run_elixir_block("Arrow types and values", "readme_arrow_types.exs")


def test_readme_arena_example_runs() -> None:
    [elixir] = blocks("An arena from each side", "elixir")
    [python] = blocks("An arena from each side", "python")
    example = EXAMPLE.search(elixir)
    assert example, "the Elixir example no longer shows its announcement and slice"
    pid, fd, oid, size, nonce, off, length, gen = example.groups()
    assert f'PeerObject.open("arena", {pid}, {fd}, {oid}, {size}, {nonce})' in python
    assert f"read_frame({off}, {length}, {gen})" in python

    # Print the real values, keep the arena alive until told, then close it.
    script = elixir.replace(
        example.group(0),
        "|> then(fn {{:object, :arena, p, f, i, s, n}, o, l, g} -> "
        'IO.puts(Enum.join(["VALUES", p, f, i, s, n, o, l, g], " ")) end)',
    )
    script += '\n_ = IO.gets("")\nBridge.Arena.close(arena)\n'
    beam = mix_run(script, "readme_arena.exs", stdin=subprocess.PIPE)
    assert beam.stdout is not None and beam.stdin is not None
    try:
        line = beam.stdout.readline()
        assert line.startswith("VALUES "), line + (beam.stderr.read() if beam.stderr else "")
        rp, rf, ri, rs, rn, ro, rl, rg = line.split()[1:]
        code = python.replace(
            f'PeerObject.open("arena", {pid}, {fd}, {oid}, {size}, {nonce})',
            f'PeerObject.open("arena", {rp}, {rf}, {ri}, {rs}, {rn})',
        ).replace(f"read_frame({off}, {length}, {gen})", f"read_frame({ro}, {rl}, {rg})")
        run = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    finally:
        _, err = beam.communicate("done\n", timeout=60)
    assert beam.returncode == 0, err


def test_readme_formats_and_custom_types_example_runs(tmp_path: Path) -> None:
    [handler] = blocks("Choosing formats, custom types", "python")
    [struct, elixir] = blocks("Choosing formats, custom types", "elixir")
    struct_path = re.match(r"# lib/(\w+\.ex)\n", struct)
    assert struct_path, "the struct block no longer starts with its file name"
    (tmp_path / struct_path.group(1)).write_text(struct)
    module_path = re.match(r"# priv/python/(\w+\.py)\n", handler)
    assert module_path, "the handler block no longer starts with its file name"
    (tmp_path / module_path.group(1)).write_text(handler)

    assert '"/path/to/python"' in elixir and '[{:my_app, "priv/python"}]' in elixir
    script = elixir.replace('"/path/to/python"', f'"{PYTHON}"')
    script = script.replace('[{:my_app, "priv/python"}]', f'["{tmp_path}"]')
    proc = mix_run(
        script + '\nIO.puts("README OK")\n',
        "readme_choosing.exs",
        require=(tmp_path / struct_path.group(1),),
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "README OK" in out


def test_readme_shared_memory_example_runs(tmp_path: Path) -> None:
    """The refusal example of "Shared memory, limits and safety", against the handler
    module of "Calling Python"."""
    [handler] = blocks("Calling Python", "python")
    [elixir] = blocks("Shared memory, limits and safety", "elixir")
    run_against_handler(handler, elixir, "readme_shared_memory.exs", tmp_path)
