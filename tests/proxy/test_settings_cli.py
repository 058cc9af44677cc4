"""The command line and the settings it reads: help, --check-config, --env-file, config/ files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.settings import (
    SHIPPED_SERVICE_REFRESH_MARGIN_S,
    SHIPPED_SERVICE_TOKEN_TTL_S,
    Settings,
)

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / "config" / "apideck-proxy.env.example"
TTL_TABLE = ROOT / "config" / "service-token-ttl.json"
SECRET = "sk_live_do_not_print_me_4242"


def console_script() -> str:
    beside = Path(sys.executable).with_name("apideck-proxy")
    found = str(beside) if beside.exists() else shutil.which("apideck-proxy")
    assert found, "the apideck-proxy console script is not installed"
    return found


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIDECK_PROXY_")}
    env.update({f"APIDECK_PROXY_{k.upper()}": v for k, v in settings.items()})
    return env


def run(
    args: list[str], *, module: bool = False, cwd: Path = ROOT, **settings: str
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "proxy", *args] if module else [console_script(), *args]
    return subprocess.run(
        cmd, cwd=cwd, env=clean_env(**settings), capture_output=True, text=True, timeout=30
    )


def test_help_works() -> None:
    """`apideck-proxy --help` exits 0 and documents --check-config and --env-file."""
    done = run(["--help"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: apideck-proxy")
    for flag in ("--check-config", "--env-file", "--port", "--host"):
        assert flag in done.stdout


def test_python_dash_m_is_the_console_script() -> None:
    """`python -m proxy --help` prints exactly what the console script prints."""
    assert run(["--help"], module=True).stdout == run(["--help"]).stdout


def test_check_config_prints_settings_with_secrets_masked() -> None:
    """--check-config prints the effective settings as JSON; the API key value never appears."""
    done = run(
        ["--check-config"],
        api_key=SECRET,
        app_id="app-1",
        redis_url=f"redis://:{SECRET}@127.0.0.1:6379/0",
        port="9123",
    )
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    shown = json.loads(done.stdout)
    assert shown["api_key"] == "********"
    assert shown["redis_url"] == "********"
    assert shown["app_id"] == "app-1"
    assert shown["port"] == 9123
    assert set(shown) == set(Settings.model_fields)


def check_config(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from proxy.cli import main

    code = main(["--check-config", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("APIDECK_PROXY_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_check_config_lists_every_field_error_at_once(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several invalid fields are all reported in one run, each by its variable name."""
    env.setenv("APIDECK_PROXY_PORT", "70000")
    env.setenv("APIDECK_PROXY_LOG_FORMAT", "xml")
    env.setenv("APIDECK_PROXY_HOLD_TIMEOUT_S", "-1")
    env.setenv("APIDECK_PROXY_API_KEY", SECRET)
    code, out, err = check_config(capsys)
    assert code != 0
    assert out == ""
    for name in ("APIDECK_PROXY_PORT", "APIDECK_PROXY_LOG_FORMAT", "APIDECK_PROXY_HOLD_TIMEOUT_S"):
        assert name in err
    assert "70000" not in err.replace("APIDECK_PROXY_PORT", "")  # values are never echoed
    assert SECRET not in err


def test_check_config_lists_field_and_margin_errors_together(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad port, a bad log format and a margin at or below 30 s are reported in one run."""
    env.setenv("APIDECK_PROXY_PORT", "70000")
    env.setenv("APIDECK_PROXY_LOG_FORMAT", "xml")
    env.setenv("APIDECK_PROXY_REFRESH_MARGIN_S", "20")
    code, _, err = check_config(capsys)
    assert code != 0
    assert "APIDECK_PROXY_PORT" in err
    assert "APIDECK_PROXY_LOG_FORMAT" in err
    assert "refresh window" in err


def test_margin_at_or_below_apideck_window_is_refused(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refresh margin at or below Apideck's 30 s in-request refresh window is refused."""
    env.setenv("APIDECK_PROXY_REFRESH_MARGIN_S", "30")
    code, out, err = check_config(capsys)
    assert code != 0
    assert out == ""
    assert "APIDECK_PROXY_REFRESH_MARGIN_S: 30s must be above" in err
    assert "refresh window" in err


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (
            {"REFRESH_MARGIN_S": "1800", "TOKEN_TTL_S": "1800"},
            "APIDECK_PROXY_REFRESH_MARGIN_S: 1800s must be below APIDECK_PROXY_TOKEN_TTL_S",
        ),
        (
            {"SERVICE_REFRESH_MARGIN_S": '{"salesforce": 900}'},
            "salesforce: refresh margin 900s must be below its token lifetime 900s",
        ),
        (
            {"SERVICE_TOKEN_TTL_S": '{"hubspot": 200}'},
            "hubspot: refresh margin 300s must be below its token lifetime 200s",
        ),
    ],
)
def test_margin_not_below_a_ttl_is_refused(
    env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    settings: dict[str, str],
    fragment: str,
) -> None:
    """A margin equal to or longer than a token lifetime (default or per service) is refused."""
    for name, value in settings.items():
        env.setenv(f"APIDECK_PROXY_{name}", value)
    code, _, err = check_config(capsys)
    assert code != 0
    assert fragment in err


def test_env_file_is_read_and_environment_wins(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--env-file supplies settings; a variable set in the environment overrides the file."""
    env_file = tmp_path / "proxy.env"
    env_file.write_text(
        "APIDECK_PROXY_APP_ID=from-file\nAPIDECK_PROXY_PORT=9001\n"
        f"APIDECK_PROXY_API_KEY={SECRET}\nAPIDECK_PROXY_UPSTREAM_URL=http://sim.local:9000\n"
    )
    env.setenv("APIDECK_PROXY_PORT", "9002")
    code, out, err = check_config(capsys, "--env-file", str(env_file))
    assert code == 0, err
    shown = json.loads(out)
    assert shown["app_id"] == "from-file"
    assert shown["upstream_url"].rstrip("/") == "http://sim.local:9000"
    assert shown["port"] == 9002
    assert shown["api_key"] == "********"
    assert SECRET not in out + err


def test_missing_env_file_is_an_error(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A named env file that does not exist is reported, not silently ignored."""
    code, out, err = check_config(capsys, "--env-file", str(tmp_path / "nope.env"))
    assert code != 0
    assert out == ""
    assert "not found" in err


def test_example_env_file_names_every_setting() -> None:
    """Every APIDECK_PROXY_* setting appears in config/apideck-proxy.env.example."""
    text = ENV_EXAMPLE.read_text()
    missing = [
        f"APIDECK_PROXY_{name.upper()}"
        for name in Settings.model_fields
        if f"APIDECK_PROXY_{name.upper()}=" not in text
    ]
    assert missing == []


def test_ttl_table_mirrors_the_shipped_dict() -> None:
    """config/service-token-ttl.json holds exactly proxy.settings.SHIPPED_SERVICE_TOKEN_TTL_S."""
    table = json.loads(TTL_TABLE.read_text())
    assert table.pop("_shipped_margins") == SHIPPED_SERVICE_REFRESH_MARGIN_S
    table = {k: v for k, v in table.items() if not k.startswith("_")}  # allow "_comment"
    assert {k: float(v) for k, v in table.items()} == SHIPPED_SERVICE_TOKEN_TTL_S


def test_example_env_file_is_valid(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """config/apideck-proxy.env.example loads as it is: its active lines are valid settings."""
    code, out, err = check_config(capsys, "--env-file", str(ENV_EXAMPLE))
    assert code == 0, err
    assert json.loads(out)["port"] == 8475


def test_invalid_json_is_one_line_among_the_others(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON typo in a table setting is reported as one line with every other problem, not
    as a traceback."""
    env.setenv("APIDECK_PROXY_SERVICE_TOKEN_TTL_S", "{bad")
    env.setenv("APIDECK_PROXY_PORT", "70000")
    code, _, err = check_config(capsys)
    assert code != 0
    assert "Traceback" not in err
    assert "APIDECK_PROXY_SERVICE_TOKEN_TTL_S: not valid JSON" in err
    assert "APIDECK_PROXY_PORT" in err


def test_check_config_masks_credentials_in_urls(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """user:password in an upstream URL never reaches the printed settings."""
    env.setenv("APIDECK_PROXY_UPSTREAM_URL", "https://gw-user:gw-pass-123@gw.example/apideck")
    code, out, _ = check_config(capsys)
    assert code == 0
    assert "gw-pass-123" not in out and "gw-user" not in out
    assert json.loads(out)["upstream_url"].startswith("https://********@gw.example")


def test_malformed_redis_url_is_reported_without_its_password(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Redis URL redis-py cannot parse is a settings error at start-up, not a traceback
    later, and its password never appears."""
    env.setenv("APIDECK_PROXY_REDIS_URL", "redis://user:hunter2-pw@h:notaport/0")
    code, out, err = check_config(capsys)
    assert code != 0
    assert "APIDECK_PROXY_REDIS_URL: not a valid Redis URL" in err
    assert "hunter2-pw" not in out + err
