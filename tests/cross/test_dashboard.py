"""The dashboard (Bridge.Dashboard) as its users see it: a real BEAM serves it
(`tests/cross/dashboard_peer.exs`, after real calls, a slowed handler, a stream and
held results); Prometheus' own Python parser reads `/metrics`; Debian's chromium,
headless, renders the page, whose script draws the charts from `/data.json`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dashboard() -> Iterator[str]:
    peer = subprocess.Popen(
        ["mix", "run", "tests/cross/dashboard_peer.exs"],
        cwd=ROOT,
        env=dict(os.environ, MIX_ENV="test"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert peer.stdout is not None and peer.stdin is not None
    seen = []
    for line in peer.stdout:
        seen.append(line)
        if line.startswith("DASHBOARD "):
            break
    else:
        peer.wait(timeout=60)
        pytest.fail("the dashboard peer ended:\n" + "".join(seen)[-4000:])
    url = line.split()[1]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
    try:
        yield url
    finally:
        peer.stdin.close()
        peer.wait(timeout=60)


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_metrics_parse_as_prometheus_text(dashboard: str) -> None:
    status, ctype, text = _get(dashboard + "metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    calls = {
        s.labels["function"]: s.value
        for s in families["beambridge_calls"].samples
        if s.labels["pool"] == "DashboardPeer"
    }
    assert calls["bbt_handlers.identity"] == 30 and calls["bbt_handlers.sleep"] == 101
    hist = families["beambridge_call_microseconds"]
    assert hist.type == "histogram"
    handler = [
        s
        for s in hist.samples
        if s.name.endswith("_count")
        and s.labels.get("part") == "handler"
        and s.labels["function"] == "bbt_handlers.sleep"
    ]
    assert handler and handler[0].value == 101
    crossed = families["beambridge_bytes"]
    assert any(
        s.labels["form"] == "raw_slice" and s.labels["direction"] == "to_python" and s.value > 0
        for s in crossed.samples
    )


def test_data_and_errors(dashboard: str) -> None:
    status, ctype, text = _get(dashboard + "data.json")
    assert status == 200 and ctype == "application/json"
    data = json.loads(text)
    assert {p["form"] for p in data["latency"]} >= {"raw", "raw_slice", "etf"}
    assert len(data["memory"]) >= 2
    assert any(a["rule"] == "latency" for a in data["alerts"])
    assert any(r["rule"] == "held_results" for r in data["recommendations"])
    assert _get(dashboard + "nope")[0] == 404


def test_the_page_renders_non_empty_charts_in_a_real_browser(dashboard: str) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here: install Debian's chromium package (.ci/setup does)")
    run = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
            "--dump-dom",
            dashboard,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = run.stdout
    assert 'data-ready="1"' in dom, run.stderr[-3000:]
    latency = re.search(r'<svg id="latency".*?</svg>', dom, re.S)
    memory = re.search(r'<svg id="memory".*?</svg>', dom, re.S)
    assert latency and memory
    assert len(re.findall(r'<circle class="point"', latency.group(0))) >= 3
    polylines = re.findall(r'<polyline class="series" points="([^"]*)"', memory.group(0))
    assert polylines and all(len(p.split()) >= 2 for p in polylines)
    assert "bbt_handlers.identity" in dom and "[held_results]" in dom and "[latency]" in dom
