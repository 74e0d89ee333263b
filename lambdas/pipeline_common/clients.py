"""boto3 clients created once, on first use, and replaceable in tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ClientCache:
    """Named clients built lazily by factories; creating clients at import time would slow cold starts."""

    def __init__(self, **factories: Callable[[], Any]) -> None:
        """Remember a factory per client name; no client is created yet."""
        self._factories = factories
        self._clients: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """The client called `name`, created on first use."""
        if name not in self._clients:
            self._clients[name] = self._factories[name]()
        return self._clients[name]

    def inject(self, **clients: Any) -> None:
        """Use these clients instead of creating them (tests, local mode)."""
        unknown = set(clients) - set(self._factories)
        if unknown:
            raise KeyError(f"unknown clients {sorted(unknown)}; known: {sorted(self._factories)}")
        self._clients.update(clients)

    def clear(self) -> None:
        """Drop every client; the next `get` creates a fresh one."""
        self._clients.clear()
