"""The `sim` CLI: its options mirror SimConfig and `run` serves until SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from proxy.sim.cli import add_arguments, config_from_args

ROOT = Path(__file__).resolve().parents[2]


def test_arguments_build_the_config() -> None:
    """Every CLI option lands on the matching SimConfig field."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--window-s=5",
            "--token-ttl-s=60",
            "--initial-token-expires-in-s=2",
            "--refresh-latency-s=0.1",
            "--request-latency-s=0.01",
            "--mode=strict",
            "--api-key=a",
            "--api-key=b",
            "--app-id=demo",
            "--keepalive-timeout-s=3",
        ]
    )
    config = config_from_args(args)
    assert (config.window_s, config.token_ttl_s, config.initial_token_expires_in_s) == (5, 60, 2)
    assert (config.refresh_latency_s, config.request_latency_s) == (0.1, 0.01)
    assert config.mode == "strict"
    assert config.api_keys == frozenset({"a", "b"})
    assert config.app_id == "demo"
    assert args.keepalive_timeout_s == 3
    assert args.host == "127.0.0.1"


def test_run_serves_until_sigterm() -> None:
    """`run` binds, answers /_sim/counters, and exits 0 on SIGTERM."""
    code = (
        "import argparse, sys\n"
        "from proxy.sim.cli import add_arguments, run\n"
        "p = argparse.ArgumentParser(); add_arguments(p)\n"
        "sys.exit(run(p.parse_args(['--port', '0'])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "listening on" in line, line
            url = line.strip().rsplit(" ", 1)[1]
            with urllib.request.urlopen(f"{url}/_sim/counters", timeout=5) as resp:
                assert resp.status == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
