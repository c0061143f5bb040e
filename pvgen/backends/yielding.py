"""Backend: emits the yielding rules per arch: the IOMMU init table in dependency order and the yield checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import attrs

from pvgen import ir
from pvgen.backends import C, Output, banner, render_template

FINISH_IF_DETECTED = 1 << 0  # IOMMU_FINISH_IF_DETECTED in Linux's iommu_table.h


@attrs.frozen
class IommuView:
    detect: str
    depends: str
    early_init: str
    late_init: str
    flags: str
    location: str
    note: str


@attrs.frozen
class YieldView:
    name: str
    function: str
    hypervisors: str
    location: str


class YieldingBackend:
    """Emits c/<arch>/pvops_yield.h: the IOMMU_INIT table sorted by dependency, and each yield rule."""

    name: ClassVar[str] = "yielding"

    def render(self, build: ir.Build, sources: Sequence[str]) -> list[Output]:
        outputs = []
        for arch in build.spec.arches:
            entries = [e for e in build.spec.iommu if e.arch == arch.name]
            yields = [y for y in build.spec.yields if y.arch == arch.name]
            if not entries and not yields:
                continue
            views = [
                IommuView(
                    detect=e.detect,
                    depends=e.depends or "0",
                    early_init=e.early_init or "0",
                    late_init=e.late_init or "0",
                    flags="IOMMU_FINISH_IF_DETECTED" if e.finish else "0",
                    location=e.span.location,
                    note=(f"after {e.depends}" if e.depends else "first: depends on nothing")
                    + ("; stops the scan when detected" if e.finish else ""),
                )
                for e in entries
            ]
            guard = f"PVGEN_{arch.name.upper()}_YIELD_H"
            text = render_template(
                "yield.h.mako",
                banner=banner("/*", sources),
                guard=guard,
                arch=arch.name,
                detects=sorted({e.detect for e in entries}),
                inits=sorted({s for e in entries for s in (e.early_init, e.late_init) if s}),
                entries=views,
                yields=[
                    YieldView(y.name, y.function, ", ".join(y.hypervisors) or "none", y.span.location) for y in yields
                ],
                finish_flag=FINISH_IF_DETECTED,
            )
            outputs.append(Output(f"c/{arch.name}/pvops_yield.h", text, C))
        return outputs
