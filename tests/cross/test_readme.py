"""The README's "A region from each side" example, run as written.

The Elixir block runs in a real BEAM (its `region.name  #=> ...` line prints the name
instead); the Python block then runs with the example's name replaced by the real one.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_NAME = re.compile(r'"(/bb-4242-[0-9a-f]{16})"')


def blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_region_example_runs() -> None:
    [elixir] = blocks("elixir")
    [python] = blocks("python")
    example_name = EXAMPLE_NAME.search(python)
    assert example_name, "the Python example no longer names the example region"

    # Show the name, keep the region alive until told, then close it.
    script = re.sub(
        r"^region\.name\s+#=>.*$", 'IO.puts("NAME " <> region.name)', elixir, flags=re.M
    )
    script += '\n_ = IO.gets("")\nBridge.Region.close!(region)\n'
    path = ROOT / "_build" / "readme_example.exs"
    path.parent.mkdir(exist_ok=True)
    path.write_text(script)

    beam = subprocess.Popen(
        ["mix", "run", str(path)],
        cwd=ROOT,
        env=dict(os.environ, MIX_ENV="test"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert beam.stdout is not None and beam.stdin is not None
    try:
        line = beam.stdout.readline()
        assert line.startswith("NAME /bb-"), line + (beam.stderr.read() if beam.stderr else "")
        name = line.split()[1]
        code = python.replace(example_name.group(1), name)
        run = subprocess.run(
            [str(ROOT / ".venv/bin/python"), "-c", code], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
    finally:
        _, err = beam.communicate("done\n", timeout=60)
    assert beam.returncode == 0, err
    assert not Path("/dev/shm", name.lstrip("/")).exists()
