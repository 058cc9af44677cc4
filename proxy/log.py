"""structlog set-up and the processor that scrubs secrets from every log line.

Configured once at start-up; the rest of the code only calls `structlog.get_logger()`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

MASK = "********"

# Keys whose values are credentials wherever they appear in an event.
_SECRET_KEYS = re.compile(
    r"(authorization|api[-_]?key|token|secret|password|passwd|cookie|credential)", re.I
)
# Credentials embedded in free text: bearer tokens, key=value pairs in query strings or bodies,
# JSON "token": "..." pairs and passwords in URLs.
_INLINE = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + MASK),
    (
        re.compile(
            r"(?i)([?&;\s\"']?(?:access_token|refresh_token|id_token|token|api_key|apikey|"
            r"client_secret|password|code)\"?\s*[=:]\s*\"?)[^&\s\"',;]+"
        ),
        r"\1" + MASK,
    ),
    (re.compile(r"(?i)(\w+://[^:/\s@]*:)[^@\s/]+@"), r"\1" + MASK + "@"),
)


def scrub_text(text: str) -> str:
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return text


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {
            k: MASK if isinstance(k, str) and _SECRET_KEYS.search(k) else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    return value


def scrub_secrets(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no credential survives into a rendered line, at any level."""
    for key in list(event_dict):
        value = event_dict[key]
        if _SECRET_KEYS.search(key) and value is not None:
            event_dict[key] = MASK
        else:
            event_dict[key] = _scrub(value)
    return event_dict


def configure_logging(fmt: str, level: str, stream: Any = None) -> None:
    out = stream if stream is not None else sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        scrub_secrets,  # last before rendering: it also sees formatted tracebacks
        renderer,
    ]
    structlog.configure(
        processors=shared,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # aiohttp and asyncio log through the stdlib; route them through the same scrubbing.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                scrub_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True  # the proxy writes its own access line
