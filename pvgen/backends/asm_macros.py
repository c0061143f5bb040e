"""Backend: emits asm macro includes: x86 .S macros and one IA64 header per pv instance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pvgen import ir
from pvgen.backends import Output


class AsmMacroBackend:
    """Emits asm macro includes: x86 .S macros and one IA64 header per pv instance (in progress: renders nothing yet)."""

    name: ClassVar[str] = "asm_macros"

    def render(self, build: ir.Build, sources: Sequence[str]) -> list[Output]:
        del build, sources
        return []
