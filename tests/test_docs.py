"""The README stays true: its commands, its configuration table and the CI entry point."""

from __future__ import annotations

import re
from pathlib import Path

from proxy.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_configuration_table_lists_every_setting() -> None:
    """Every APIDECK_PROXY_* setting has a row in the README's configuration table."""
    rows = set(re.findall(r"^\| `(APIDECK_PROXY_[A-Z0-9_]+)` \|", README, re.M))
    expected = {f"APIDECK_PROXY_{name.upper()}" for name in Settings.model_fields}
    assert rows == expected


def test_readme_commands_are_the_ones_ci_runs() -> None:
    """The README's two commands exist in dev.py, and .ci/run calls the same test command."""
    assert "python3 dev.py demo" in README
    assert "python3 dev.py test" in README
    assert re.search(r"^exec python3 dev\.py test$", (ROOT / ".ci" / "run").read_text(), re.M)
    dev = (ROOT / "dev.py").read_text()
    assert 'command == "demo"' in dev and 'command == "test"' in dev


def test_readme_has_no_unfilled_placeholders() -> None:
    """No section of the README was left as a placeholder."""
    assert not re.search(r"^[A-Z_]{6,}$", README, re.M)
