"""A loopback TCP proxy in front of Redis that delays or cuts replies: a slow or flaky network
between one replica and Redis, while the server itself stays healthy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any


@dataclass
class _Rule:
    pattern: bytes
    times: int
    delay_s: float | None  # None: cut the connection instead of forwarding the command


class FaultProxy:
    """Forwards to 127.0.0.1:target_port. `delay_s` delays every reply; a rule delays the reply
    to (or cuts the connection on) the next commands whose bytes contain a pattern."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self.port = 0
        self._rules: list[_Rule] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def delay_next(self, pattern: bytes, delay_s: float, times: int = 1) -> None:
        self._rules.append(_Rule(pattern, times, delay_s))

    def cut_next(self, pattern: bytes, times: int = 1) -> None:
        self._rules.append(_Rule(pattern, times, None))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _match(self, data: bytes) -> _Rule | None:
        for rule in self._rules:
            if rule.times > 0 and rule.pattern in data:
                rule.times -= 1
                return rule
        return None

    async def _connection(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        # The extra delay for the next reply: redis-py waits for each reply before it sends the
        # next command, so the next reply answers the last command.
        extra = [0.0]
        replies: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        def cut() -> None:
            for w in (cw, sw):
                with contextlib.suppress(Exception):
                    w.close()

        async def requests() -> None:
            try:
                while data := await cr.read(65536):
                    rule = self._match(data)
                    if rule is not None and rule.delay_s is None:
                        cut()
                        return
                    extra[0] = rule.delay_s if rule is not None and rule.delay_s else 0.0
                    sw.write(data)
                    await sw.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    sw.close()

        async def answers() -> None:
            try:
                while data := await sr.read(65536):
                    due = time.monotonic() + self.delay_s + extra[0]
                    extra[0] = 0.0
                    replies.put_nowait((due, data))
            except OSError:
                pass
            replies.put_nowait((0.0, b""))

        async def deliver() -> None:
            # Delayed replies keep their order: a later reply never overtakes an earlier one.
            try:
                while True:
                    due, data = await replies.get()
                    if not data:
                        break
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    cw.write(data)
                    await cw.drain()
            except OSError:
                pass
            finally:
                with contextlib.suppress(Exception):
                    cw.close()

        for coro in (requests(), answers(), deliver()):
            self._spawn(coro)
