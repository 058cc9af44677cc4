"""structlog set-up and the processor that scrubs secrets from every log line.

Configured once at start-up; the rest of the code only calls `structlog.get_logger()`. Every
path to output (structlog calls, stdlib `logging` from aiohttp and asyncio, formatted
tracebacks, Python warnings) runs `scrub_secrets` just before the renderer. Knows nothing about
HTTP, the gate or settings.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog

MASK = "********"

LogFormat = Literal["json", "console"]

# Event keys whose values are credentials wherever they appear in an event.
_SECRET_KEYS = re.compile(
    r"(authorization|api[-_]?key|token|secret|password|passwd|cookie|credential)", re.I
)
# Credentials embedded in free text (exception messages, URLs, bodies, repr of dicts):
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+")
# Basic credentials are base64; requiring 8+ such characters keeps "basic check" readable.
_BASIC = re.compile(r"(?i)\b(basic)\s+[A-Za-z0-9+/=]{8,}")
# name=value / "name": "value" pairs, in query strings, JSON, dict reprs and header dumps. The
# name must start a word, so `status_code=500` stays readable while `code=` (OAuth) does not.
_PAIR = re.compile(
    r"(?i)(?<![\w-])(?P<key>[\w-]*(?:token|secret|password|passwd|api[-_]?key|apikey"
    r"|authorization|credential|cookie)|code|pwd)"
    r"(?P<sep>(?:\\?[\"'])?\s*[=:]\s*)"
    r"(?:(?P<q>\\?[\"'])(?:\\.|.)*?(?P=q)|[^&\s\"',;}\]\\]+)"
)
# userinfo in URLs: redis://:pw@host, https://user:pw@host. Up to the first "@" even across a
# "/": an unencoded slash in a password is invalid but common, and over-masking costs nothing.
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/\s@]*:)[^@\s]+?@")
# Known secrets shorter than this are not matched literally: masking every "abc" helps nobody.
_MIN_LITERAL = 6


def _pair_repl(m: re.Match[str]) -> str:
    q = m.group("q")
    value = f"{q}{MASK}{q}" if q else MASK
    return f"{m.group('key')}{m.group('sep')}{value}"


def scrub_text(text: str, known: Iterable[str] = ()) -> str:
    """Mask credentials in free text: bearer/basic tokens, secret pairs, URL passwords, and
    any of the `known` secret values (the configured API key) wherever they appear."""
    for secret in known:
        if len(secret) >= _MIN_LITERAL and secret in text:
            text = text.replace(secret, MASK)
    text = _BEARER.sub(r"\1 " + MASK, text)
    text = _BASIC.sub(r"\1 " + MASK, text)
    text = _PAIR.sub(_pair_repl, text)
    return _URL_PASSWORD.sub(r"\1" + MASK + "@", text)


_PLAIN = (bool, int, float, type(None))


def _scrub(value: Any, known: tuple[str, ...], depth: int = 0) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if depth > 6:
        return MASK  # too deep to inspect: do not print what was not looked at
    if isinstance(value, str):
        return scrub_text(value, known)
    if isinstance(value, bytes | bytearray):
        return scrub_text(bytes(value).decode("utf-8", "backslashreplace"), known)
    if isinstance(value, Mapping):
        return {k: _scrub_field(str(k), v, known, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v, known, depth + 1) for v in value]
    # Anything else (an exception passed as a field, a URL object) would be printed through its
    # repr by the renderer, unscrubbed: render it here instead.
    return scrub_text(repr(value), known)


def _scrub_field(key: str, value: Any, known: tuple[str, ...], depth: int = 0) -> Any:
    # Flags and counts named after a secret (`api_key_injected=True`) are not secrets.
    if _SECRET_KEYS.search(key) and not isinstance(value, _PLAIN):
        return MASK
    return _scrub(value, known, depth)


class SecretScrubber:
    """structlog processor: no credential survives into a rendered line, at any level.

    `known` are secret values the proxy itself holds (its API key, the Redis URL); they are
    masked literally, even where no pattern would recognise them.
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        self.known = tuple(sorted({s for s in known if s}, key=len, reverse=True))

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            event_dict[key] = _scrub_field(key, event_dict[key], self.known)
        return event_dict


scrub_secrets = SecretScrubber()


def add_logger_name(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """`logger` is the name given to `structlog.get_logger(name)` or the stdlib record's."""
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def _lead_with_essentials(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # A human scanning JSON lines reads time, level and event first.
    head = {
        k: event_dict.pop(k) for k in ("timestamp", "level", "logger", "event") if k in event_dict
    }
    return {**head, **event_dict}


class _NamedPrintLogger(structlog.PrintLogger):
    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedPrintLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(self._file, str(args[0]) if args else "")


class _ScrubbedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]  # TextIO stream
    """The stdlib's own error report prints the raw message and its arguments: not here."""

    def handleError(self, record: logging.LogRecord) -> None:
        # Nowhere left to report a broken stream: swallow like the stdlib does.
        with contextlib.suppress(Exception):
            self.stream.write(f"logging error in {record.name}: message could not be formatted\n")


def resolve_format(fmt: LogFormat | None, stream: TextIO) -> LogFormat:
    """None means: console for a person at a terminal, JSON for a collector (containers)."""
    if fmt is not None:
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def configure_logging(
    fmt: LogFormat | None,
    level: str,
    stream: TextIO | None = None,
    *,
    secrets: Iterable[str] = (),
) -> None:
    """Route structlog and the stdlib through one processor chain ending in the scrubber."""
    out = stream if stream is not None else sys.stderr
    isatty = getattr(out, "isatty", None)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if resolve_format(fmt, out) == "json"
        else structlog.dev.ConsoleRenderer(colors=bool(isatty and isatty()))
    )
    scrubber = SecretScrubber(secrets)
    # Tracebacks are formatted to text *before* the scrubber: a renderer that formats them
    # itself would print exception messages (which may quote a token) unscrubbed.
    tail: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        scrubber,
        _lead_with_essentials,
        renderer,
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, add_logger_name, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_NamedPrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # aiohttp and asyncio log through the stdlib; route them through the same scrubbing.
    handler = _ScrubbedStreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                add_logger_name,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # A warning's text can quote a URL with its query. Off-then-on re-installs the hook even
    # when an earlier set-up left the stdlib believing it already captures.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    logging.getLogger("aiohttp.access").disabled = True  # the proxy writes its own access line
