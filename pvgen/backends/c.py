"""Backend: emits C headers, tables and call wrappers with patch-site records, per arch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pvgen import ir
from pvgen.backends import Output


class CBackend:
    """Emits C headers, tables and call wrappers with patch-site records, per arch (in progress: renders nothing yet)."""

    name: ClassVar[str] = "c"

    def render(self, build: ir.Build, sources: Sequence[str]) -> list[Output]:
        del build, sources
        return []
