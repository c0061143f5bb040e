"""Backend: emits the patch templates per arch x hypervisor as C arrays and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs

from pvgen import ir
from pvgen.assemble import IDENTITY
from pvgen.backends import JSON, C, Output, banner, render_template


@attrs.frozen
class TemplateView:
    """One template as the C and JSON outputs print it."""

    symbol: str
    owner: str
    index: int
    code: tuple[str, ...]  # "0xfa", ...
    hex: str
    length: int
    asm: str
    instructions: tuple[str, ...]
    fits_site: bool
    out_of_line: bool
    relocations: tuple[ir.Relocation, ...]
    location: str
    impl_location: str


def _c_name(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")


def template_views(build: ir.Build, arch: str, hypervisor: str) -> list[TemplateView]:
    """Every template one hypervisor's patcher may use on one arch, by index."""
    owners: dict[str, tuple[int, str]] = {}
    for op in build.spec.ops(arch):
        owners[op.qualname] = (op.index, op.span.location)
        for variant in op.variants:
            owners[f"{op.qualname}[{variant.name}]"] = (variant.patch_type, variant.span.location)
    views = []
    for template in build.templates:
        if template.arch != arch or template.hypervisor != hypervisor:
            continue
        if template.owner == IDENTITY:
            index, location = -1, template.span.location
        else:
            index, location = owners[template.owner]
        views.append(
            TemplateView(
                symbol=f"pvgen_template_{hypervisor}_{_c_name(template.owner)}",
                owner=template.owner,
                index=index,
                code=tuple(f"0x{b:02x}" for b in template.code),
                hex=template.code.hex(),
                length=len(template.code),
                asm=template.text,
                instructions=template.instructions,
                fits_site=template.fits_site,
                out_of_line=template.out_of_line,
                relocations=template.relocations,
                location=location,
                impl_location=template.span.location,
            )
        )
    return sorted(views, key=lambda v: (v.index, v.owner))


def _json(arch: ir.Arch, hypervisor: str, views: list[TemplateView], sources: Sequence[str]) -> str:
    document: dict[str, Any] = {
        "format": "pvgen-templates",
        "format_version": 1,
        "arch": arch.name,
        "hypervisor": hypervisor,
        "sources": list(sources),
        "site_size": arch.site_size,
        "templates": [
            {
                "owner": v.owner,
                "index": v.index,
                "bytes": v.hex,
                "length": v.length,
                "asm": v.asm,
                "instructions": list(v.instructions),
                "fits_site": v.fits_site,
                "out_of_line": v.out_of_line,
                "relocations": [attrs.asdict(r) for r in v.relocations],
                "location": v.location,
                "impl_location": v.impl_location,
            }
            for v in views
        ],
    }
    return json.dumps(document, indent=1) + "\n"


class PatchTemplateBackend:
    """Emits templates/<arch>/<hypervisor>.h (C arrays and a lookup table) and .json."""

    name: ClassVar[str] = "patch_templates"

    def render(self, build: ir.Build, sources: Sequence[str]) -> list[Output]:
        outputs = []
        for arch in build.spec.arches:
            for hypervisor in build.spec.hypervisors:
                if arch.name not in hypervisor.arches:
                    continue
                views = template_views(build, arch.name, hypervisor.name)
                guard = f"PVGEN_TEMPLATES_{_c_name(arch.name).upper()}_{hypervisor.name.upper()}_H"
                text = render_template(
                    "patch_templates.h.mako",
                    banner=banner("/*", sources),
                    guard=guard,
                    arch=arch.name,
                    hypervisor=hypervisor.name,
                    table=f"pvgen_templates_{_c_name(arch.name)}_{hypervisor.name}",
                    views=views,
                )
                base = f"templates/{arch.name}/{hypervisor.name}"
                outputs.append(Output(f"{base}.h", text, C))
                outputs.append(Output(f"{base}.json", _json(arch, hypervisor.name, views, sources), JSON))
        return outputs
