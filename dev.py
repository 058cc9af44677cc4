#!/usr/bin/env python3
"""Set-up and the two everyday commands, needing nothing but Python 3.11+.

    python3 dev.py demo    # make .venv, install, run `apideck-proxy demo` (offline simulator)
    python3 dev.py test    # make .venv, install test tools, run lint, types and the whole suite
    python3 dev.py proxy   # make .venv, install, run `apideck-proxy` with your environment
    python3 dev.py bench   # forwarding and gate benchmarks (prints figures, asserts nothing)

Every run re-installs only when pyproject.toml changed. Extra arguments go to the command
(`python3 dev.py test -k gate`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("APIDECK_PROXY_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def sh(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT, env=env)
    if code != 0:
        sys.exit(code)


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    """Become the command (exec): signals reach it directly, and no orphan is left behind."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    os.chdir(ROOT)
    os.execve(str(cmd[0]), [str(c) for c in cmd], env if env is not None else dict(os.environ))


def ensure_venv(extra: str | None) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"apideck-proxy needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    spec = "." + (f"[{extra}]" if extra else "")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + spec.encode()).hexdigest()
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.read_text() == digest:
        return
    sh(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    sh(BIN / "python", "-m", "pip", "install", "--quiet", "-e", spec)
    stamp.write_text(digest)


def ensure_redis() -> None:
    """The fleet tests start their own redis-server; install Debian's when it is missing."""
    if shutil.which("redis-server"):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh("apt-get", "update", "-qq", env=env)
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server", env=env)
        # Debian starts a system-wide instance on 6379; the tests start their own on free ports.
        subprocess.call(["service", "redis-server", "stop"], stderr=subprocess.DEVNULL)
        return
    sys.exit(
        "redis-server is needed by the fleet-mode tests and is not installed: install it "
        "(apt-get install redis-server / brew install redis) or run as root on Debian/Ubuntu"
    )


def main(argv: list[str]) -> None:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "demo":
        ensure_venv(None)
        run(BIN / "apideck-proxy", "demo", *rest)
    elif command == "proxy":
        ensure_venv(None)
        run(BIN / "apideck-proxy", *rest)
    elif command == "test":
        ensure_venv("test")
        ensure_redis()
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        sh(BIN / "ruff", "check", "proxy", "tests", "dev.py", env=env)
        sh(BIN / "mypy", "--strict", "proxy", env=env)
        sh("bash", ".ci/lint-deploy.sh", env=env)
        run(BIN / "python", "-m", "pytest", "-q", *rest, env=env)
    elif command == "bench":
        ensure_venv("test")
        sh(BIN / "python", "tests/bench_forwarding.py", *rest)
        sh(BIN / "python", "tests/bench_gate.py")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
