"""`apideck-proxy demo` as a user runs it: offline, quick, exit 0, the race shown side by side."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_the_race_and_the_fix() -> None:
    """The demo exits 0 and its table shows failures straight at the simulator and none
    through the proxy, with one validate per connection."""
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--connections", "3", "--concurrency", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = {
        m.group(1).strip(): m.group(2).split()
        for m in re.finditer(r"^([a-z0-9 ()-]+?)\s{2,}(\d.*)$", out.stdout, re.M)
    }
    direct, proxied, warm = (list(col) for col in zip(*rows.values(), strict=True))
    names = list(rows)
    assert int(direct[names.index("client-visible failures")]) > 0
    assert int(proxied[names.index("client-visible failures")]) == 0
    assert int(warm[names.index("client-visible failures")]) == 0
    assert int(proxied[names.index("validates")]) == 3
    assert int(proxied[names.index("refreshes inside requests")]) == 0
    assert int(warm[names.index("validates")]) == 0
