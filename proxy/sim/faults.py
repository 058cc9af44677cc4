"""Fault rules for the simulator: which requests misbehave, and how.

Pure bookkeeping (matching, counting, seeded dice); it knows nothing about aiohttp or tokens.
The HTTP layer reads a fired rule and acts it out.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

FaultKind = Literal["status", "delay", "reset", "truncate", "cooldown"]
_KINDS: tuple[str, ...] = get_args(FaultKind)


@dataclass(kw_only=True)
class FaultRule:
    """One misbehaviour, fired for matching requests.

    kind: "status" answers `status` (with `retry_after_s` as Retry-After and `body` if given);
    "delay" only adds `delay_s` and then serves normally; "reset" aborts the transport without a
    response; "truncate" sends headers and part of the body, then closes; "cooldown" answers the
    fatal 401 Vault gives while a refresh is in cooldown (detail.debug.retry_after_ms).
    `delay_s` is applied before any kind. `times` caps how often it fires (None: unlimited);
    `probability` fires it on that share of matches, drawn from the simulator's seeded RNG.
    """

    kind: FaultKind
    path_prefix: str | None = None
    method: str | None = None
    times: int | None = None
    probability: float | None = None
    status: int = 500
    retry_after_s: float | None = None
    body: Any = None
    delay_s: float = 0.0
    cooldown_s: float = 30.0
    id: str = ""
    fired: int = field(default=0)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)

    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "path_prefix": self.path_prefix,
            "method": self.method,
            "times": self.times,
            "probability": self.probability,
            "status": self.status,
            "retry_after_s": self.retry_after_s,
            "body": self.body,
            "delay_s": self.delay_s,
            "cooldown_s": self.cooldown_s,
            "fired": self.fired,
        }


_FIELDS = frozenset(
    {
        "kind",
        "path_prefix",
        "method",
        "times",
        "probability",
        "status",
        "retry_after_s",
        "body",
        "delay_s",
        "cooldown_s",
    }
)


def parse_rule(raw: Mapping[str, Any]) -> FaultRule:
    """Build a rule from its JSON form, reporting every problem at once as ValueError."""
    problems: list[str] = []
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        problems.append(f"unknown fields: {', '.join(unknown)}")
    kind = raw.get("kind")
    if kind not in _KINDS:
        problems.append(f"kind must be one of {', '.join(_KINDS)}")

    def number(name: str, *, allow_none: bool) -> float | None:
        value = raw.get(name)
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problems.append(f"{name} must be a number >= 0")
            return None
        return float(value)

    times = raw.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 0):
        problems.append("times must be an integer >= 0")
    probability = number("probability", allow_none=True)
    if probability is not None and probability > 1:
        problems.append("probability must be <= 1")
    status = raw.get("status", 500)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        problems.append("status must be an HTTP status code")
    retry_after_s = number("retry_after_s", allow_none=True)
    delay_s = number("delay_s", allow_none=True) or 0.0
    cooldown_raw = raw.get("cooldown_s")
    cooldown_s = 30.0 if cooldown_raw is None else number("cooldown_s", allow_none=False)
    for name in ("path_prefix", "method"):
        if raw.get(name) is not None and not isinstance(raw.get(name), str):
            problems.append(f"{name} must be a string")
    if problems:
        raise ValueError("; ".join(problems))
    return FaultRule(
        kind=cast(FaultKind, kind),
        path_prefix=raw.get("path_prefix"),
        method=raw.get("method"),
        times=times,
        probability=probability,
        status=status,
        retry_after_s=retry_after_s,
        body=raw.get("body"),
        delay_s=delay_s,
        cooldown_s=cooldown_s or 0.0,
    )


class FaultBook:
    """The active rules, in the order they were added; the first rule that fires wins."""

    def __init__(self, seed: int) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)
        self._random = random.Random(seed)
        self.fired_total = 0

    def add(self, rule: FaultRule) -> FaultRule:
        rule.id = f"fault-{next(self._ids)}"
        self._rules.append(rule)
        return rule

    def clear(self) -> None:
        self._rules.clear()

    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def fire(self, method: str, path: str) -> FaultRule | None:
        """The rule to act out for this request, if any, counting it as fired."""
        for rule in self._rules:
            if rule.exhausted() or not rule.matches(method, path):
                continue
            if rule.probability is not None and self._random.random() >= rule.probability:
                continue
            rule.fired += 1
            self.fired_total += 1
            return rule
        return None
