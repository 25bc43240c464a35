"""Each ratio of a benchmark run against the same ratio of an earlier run.

    python bench/compare.py BEFORE.json AFTER.json

(also the one-CPU figures of bench/cpu.exs, from cpu.json beside latest.json and
v1_cpu.json beside v1.json)

Only ratios are compared (each measured against its own baseline in its own run), so a
machine that is slower today does not read as a regression. Prints every ratio that got
more than 10% worse, then how many did.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

#: How much worse a ratio may get before it is reported.
TOLERANCE = 0.10


def ratios(run: dict[str, Any]) -> Iterator[tuple[str, float, bool]]:
    """``(name, value, higher_is_better)`` for every comparable ratio of a run."""
    for row in run.get("echo", []):
        size = row["size"]
        yield f"echo {size} B: bytes vs ETF/Port", row["speedup_vs_etf_port"], True
        yield f"echo {size} B: Buffer vs ETF/Port", row["buffer_speedup_vs_etf_port"], True
        if size >= 16 << 20:  # below, two memcpys take microseconds: the ratio is noise
            yield f"echo {size} B: bytes over 2x memcpy", row["bridge_over_two_memcpy"], False
            yield f"echo {size} B: Buffer over 2x memcpy", row["buffer_over_two_memcpy"], False
    small = run.get("small_call")
    if small:
        yield "small call over the raw Port floor", small["bridge_over_raw_port_p50"], False
    throughput = run.get("throughput")
    if throughput:
        yield "pool of 2 over pool of 1", throughput["pool2_over_pool1"], True
    tables = run.get("tables")
    if tables:
        yield "Arrow table vs ETF list of maps", tables["speedup"], True
        yield "Arrow table + to_rows vs ETF list of maps", tables["speedup_with_to_rows"], True
    nested = run.get("nested")
    if nested:
        yield "nested Arrow decode vs ETF list of maps", nested["speedup"], True
        yield "nested Arrow + values vs ETF list of maps", nested["speedup_with_values"], True
    cluster = run.get("cluster")
    if cluster:
        for row in cluster["rows"]:
            yield f"cross-node 64 MiB {row['data']}: auto over best", row["auto_vs_best"], False
            yield f"cross-node 64 MiB {row['data']}: auto over none", row["auto_vs_none"], False
    tensor = run.get("tensor_open")
    if tensor:
        yield "tensor open, 1 GiB over 1 KiB", tensor["large_over_small"], False
    for row in run.get("threshold_sweep", []):
        shared = row.get("slice_us", row.get("region_us"))  # transport 1 called it region
        if shared and row.get("inline_us"):
            value = round(shared / row["inline_us"], 2)
            yield f"sweep {row['size']} B: shared memory over inline", value, False
    for row in run.get("one_cpu", []):  # bench/cpu.exs
        size = row["size"]
        yield f"one CPU, echo {size} B: bridge vs ETF/Port", row["speedup_vs_etf_port"], True
        yield f"one CPU, echo {size} B: slice over inline", row["slice_over_inline"], False
    for row in run.get("formats", []):
        where = f"{row['kind']} x{row['n']} as {row['form']}"
        for direction in ("to_python", "from_python"):
            value = row.get(f"{direction}_speedup")
            if value is not None:
                yield f"formats {where} {direction} vs ETF", value, True


def worse(before: float, after: float, higher_is_better: bool) -> float:
    """How much worse ``after`` is than ``before`` (0.25: 25% worse; <= 0: not worse)."""
    if before <= 0 or after <= 0:
        return 0.0
    return before / after - 1 if higher_is_better else after / before - 1


def load(path: str) -> dict[str, Any]:
    """A results file, with the one-CPU figures of its run beside it (cpu.json next to
    latest.json, v1_cpu.json next to v1.json) when there are any."""
    with open(path, encoding="utf-8") as f:
        run: dict[str, Any] = json.load(f)
    cpu = path.replace("latest.json", "cpu.json").replace("v1.json", "v1_cpu.json")
    if cpu != path:
        with contextlib.suppress(OSError), open(cpu, encoding="utf-8") as f:
            run.update(json.load(f))
    return run


def main(before_path: str, after_path: str) -> int:
    before = {name: (value, hib) for name, value, hib in ratios(load(before_path))}
    after = list(ratios(load(after_path)))
    print(f"Against {before_path} (ratios more than {TOLERANCE:.0%} worse):")
    slower = 0
    compared = 0
    for name, value, higher_is_better in after:
        if name not in before or value is None or before[name][0] is None:
            continue
        compared += 1
        was = before[name][0]
        loss = worse(was, value, higher_is_better)
        if loss > TOLERANCE:
            slower += 1
            print(f"  {name}: {was} -> {value} ({loss:.0%} worse)")
    print(f"  {slower} of {compared} ratios more than {TOLERANCE:.0%} worse")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
