"""Manifest backend: emits generated/manifest.json, every op x arch x hypervisor for tools."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

from pvgen import __version__, ir
from pvgen.backends import JSON, Output

FORMAT_VERSION = 1


def _entry(op: ir.Op, impl: ir.Impl, template: ir.Template | None, variant: ir.Variant | None) -> dict[str, Any]:
    return {
        "arch": op.arch,
        "group": op.group,
        "op": op.name,
        "variant": variant.name if variant else None,
        "hypervisor": impl.hypervisor,
        "category": op.category,
        "index": variant.patch_type if variant else op.index,
        "transfer": op.transfer,
        "callee_save": op.callee_save,
        "clobbers": list(variant.clobbers if variant else op.clobbers),
        "kind": impl.kind,
        "symbol": impl.text if impl.kind == ir.IMPL_CALL else None,
        "preserves_registers": impl.preserves_registers,
        "asm": impl.text if impl.kind == ir.IMPL_ASM else None,
        "bytes": template.code.hex() if template else None,
        "length": len(template.code) if template else None,
        "fits_site": template.fits_site if template else None,
        "out_of_line": impl.out_of_line,
        "relocations": [{"offset": r.offset, "kind": r.kind, "symbol": r.symbol} for r in template.relocations]
        if template
        else [],
        "effects": [e.expression for e in op.effects if e.hypervisor == impl.hypervisor] if variant is None else [],
        "source": impl.source,
        "location": (variant.span if variant else op.span).location,
        "impl_location": impl.span.location,
    }


class ManifestBackend:
    """Emits manifest.json: each op's category, index, template bytes, asm, length, clobbers and location."""

    name: ClassVar[str] = "manifest"

    def render(self, build: ir.Build, sources: Sequence[str]) -> list[Output]:
        templates = {(t.arch, t.owner, t.hypervisor): t for t in build.templates}
        entries = []
        for op in build.spec.ops():
            for impl in op.impls:
                entries.append(_entry(op, impl, templates.get((op.arch, op.qualname, impl.hypervisor)), None))
            for variant in op.variants:
                owner = f"{op.qualname}[{variant.name}]"
                for impl in variant.impls:
                    entries.append(_entry(op, impl, templates.get((op.arch, owner, impl.hypervisor)), variant))
        document = {
            "format": "pvgen-manifest",
            "format_version": FORMAT_VERSION,
            "generator": f"pvgen {__version__}",
            "sources": list(sources),
            "assemblers": {arch.name: arch.assembler for arch in build.spec.arches},
            "entries": entries,
        }
        return [Output("manifest.json", json.dumps(document, indent=1) + "\n", JSON)]
