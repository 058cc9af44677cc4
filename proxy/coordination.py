"""How the gate shares token state and the right to validate with other replicas.

The in-process implementation does nothing: within one process the gate's own single-flight
task already guarantees one validate per connection. A Redis implementation lets every replica
sharing that Redis behave as one. Knows nothing about HTTP or Apideck.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SharedState:
    """What one replica tells the others about a connection (wall-clock seconds)."""

    validated_at: float | None
    expires_at: float | None
    cooldown_until: float | None


class Coordination(ABC):
    @abstractmethod
    def exclusive(
        self, connection_id: str, wait_s: float
    ) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold the connection's validate right across replicas for the body of the block.

        Yields True when this replica may validate (it holds the right, or coordination is
        unavailable and it falls back to in-process), False when the wait ran out while
        another live replica still holds it: then it must not validate beside it.
        """

    @abstractmethod
    async def read(self, connection_id: str) -> SharedState | None:
        """The freshest state any replica published, or None."""

    @abstractmethod
    async def publish(self, connection_id: str, state: SharedState) -> None:
        """Tell the other replicas what this replica's validate found."""

    async def start(self) -> None:  # noqa: B027  # optional hook, empty by design
        """Connect, if there is anything to connect to."""

    async def close(self) -> None:  # noqa: B027  # optional hook, empty by design
        """Release connections."""

    def health(self) -> dict[str, object]:
        return {"backend": "local", "ok": True}


class LocalCoordination(Coordination):
    """One process, no peers: nothing to share."""

    @contextlib.asynccontextmanager
    async def _noop(self) -> AsyncIterator[bool]:
        yield True

    def exclusive(
        self, connection_id: str, wait_s: float
    ) -> contextlib.AbstractAsyncContextManager[bool]:
        return self._noop()

    async def read(self, connection_id: str) -> SharedState | None:
        return None

    async def publish(self, connection_id: str, state: SharedState) -> None:
        return None
