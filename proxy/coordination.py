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
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the connection's validate right across replicas (best effort on timeout)."""

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
    async def _noop(self) -> AsyncIterator[None]:
        yield

    def exclusive(
        self, connection_id: str, wait_s: float
    ) -> contextlib.AbstractAsyncContextManager[None]:
        return self._noop()

    async def read(self, connection_id: str) -> SharedState | None:
        return None

    async def publish(self, connection_id: str, state: SharedState) -> None:
        return None
