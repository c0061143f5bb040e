"""Backend: emits the Python runtime layer per arch: op tables, patch decisions, detection, mask."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

from pvgen import ir
from pvgen.assemble import IDENTITY
from pvgen.backends import JSON, PYTHON, Output, banner, render_template


def _impl_row(op: ir.Op, impl: ir.Impl, templates: dict[tuple[str, str, str], ir.Template], owner: str) -> list[Any]:
    """One implementation as a short tuple literal: kind, symbol, template hex, inline, preserves, relocs,
    location, pad room."""
    template = templates.get((op.arch, owner, impl.hypervisor))
    fields: list[Any] = [
        impl.kind,
        impl.text if impl.kind == ir.IMPL_CALL else None,
        template.code.hex() if template else None,
        bool(template and template.fits_site and not template.out_of_line),
        impl.preserves_registers,
        [[r.offset, r.kind, r.symbol] for r in template.relocations] if template else [],
        impl.span.location,
        [list(p) for p in template.pad_room] if template else [],
    ]
    return fields


def _effects(op: ir.Op, hypervisors: Sequence[ir.Hypervisor]) -> dict[str, list[str]]:
    return {h.name: [e.expression for e in op.effects if e.hypervisor == h.name] for h in hypervisors}


def _clobber_mask(arch: ir.Arch, clobbers: Sequence[str]) -> int:
    bits = dict(arch.clobber_bits)
    return sum(1 << bits[r] for r in clobbers if r in bits)


def _hypervisor_view(hypervisor: ir.Hypervisor, arch: str) -> dict[str, Any]:
    return {
        "name": hypervisor.name,
        "execution": hypervisor.execution,
        "paravirt_enabled": hypervisor.paravirt_enabled,
        "detections": tuple(
            (d.method, d.leaf, d.signature, d.symbol, d.hypervisor_type)
            for d in hypervisor.detections
            if d.arch == arch
        ),
        "native_fallback": tuple(g for a, g in hypervisor.native_fallback if a == arch),
    }


def _tables(build: ir.Build, arch: ir.Arch, templates: dict[tuple[str, str, str], ir.Template]) -> dict[str, Any]:
    """The layer's tables as plain JSON data: one row per op, implementation and variant."""
    identity = templates.get((arch.name, IDENTITY, ir.NATIVE))
    groups = [g for g in build.spec.groups if g.arch == arch.name]
    mask = next((m for m in build.spec.masks if m.arch == arch.name), None)
    hypervisors = [h for h in build.spec.hypervisors if arch.name in h.arches]
    ops = [op for g in groups for op in g.ops]
    clobber_sets = sorted({op.clobbers for op in ops} | {v.clobbers for op in ops for v in op.variants})
    op_rows, variant_rows, impl_rows = [], [], {}
    for op in ops:
        op_rows.append([
            op.name, op.group, op.index, op.category, op.transfer, op.callee_save, op.returns.kind != "void",
            [p.name for p in op.params], clobber_sets.index(op.clobbers), _clobber_mask(arch, op.clobbers),
            op.span.location,
        ])  # fmt: skip
        impl_rows[op.qualname] = {i.hypervisor: _impl_row(op, i, templates, op.qualname) for i in op.impls}
        for variant in op.variants:
            owner = f"{op.qualname}[{variant.name}]"
            variant_rows.append(
                [op.qualname, variant.name, variant.patch_type, clobber_sets.index(variant.clobbers),
                 variant.span.location]
            )  # fmt: skip
            impl_rows[owner] = {i.hypervisor: _impl_row(op, i, templates, owner) for i in variant.impls}
    return {
        "arch": arch.name,
        "nops": list(arch.nops),
        "identity": identity.code.hex() if identity else None,
        "identity_pad": [list(p) for p in identity.pad_room] if identity else [],
        "pad_prefix": arch.pad_prefix,
        "pad_prefix_limit": arch.pad_prefix_limit,
        "clobber_bits": dict(arch.clobber_bits),
        "clobber_sets": [list(c) for c in clobber_sets],
        "ops": op_rows,
        "impls": impl_rows,
        "variants": variant_rows,
        "groups": [[g.name, g.struct, g.mask_bit] for g in groups],
        "data": {
            h.name: {
                f"{g.name}.{d.name}": v.value
                for g in groups
                for d in g.data
                for v in d.values
                if v.hypervisor == h.name
            }
            for h in hypervisors
        },
        "hypervisors": [_hypervisor_view(h, arch.name) for h in hypervisors],
        "mask_cmdline": mask.cmdline if mask else None,
        "mask_bits": dict(mask.bits) if mask else {},
        "yields": [[y.name, y.function, y.when, list(y.hypervisors)] for y in build.spec.yields if y.arch == arch.name],
        "effects": {op.qualname: _effects(op, hypervisors) for op in ops if op.effects},
        "iommu": [
            [e.detect, e.depends, e.early_init, e.late_init, e.finish, list(e.buses), list(e.found_under)]
            for e in build.spec.iommu
            if e.arch == arch.name
        ],
    }


class PythonLayerBackend:
    """Emits python/pvops_<arch>.py (formatted by black) and its tables, python/pvops_<arch>.json."""

    name: ClassVar[str] = "python_layer"

    def render(self, build: ir.Build, sources: Sequence[str]) -> list[Output]:
        templates = {(t.arch, t.owner, t.hypervisor): t for t in build.templates}
        outputs = []
        for arch in build.spec.arches:
            tables = _tables(build, arch, templates)
            document = {"generator": "pvgen", "sources": list(sources), **tables}
            outputs.append(Output(f"python/pvops_{arch.name}.json", json.dumps(document, indent=1) + "\n", JSON))
            view = {
                "banner": banner("#", sources),
                "arch": arch,
                "identity": tables["identity"],
                "nops": tables["nops"],
                "clobber_bits": tables["clobber_bits"],
            }
            text = render_template("python_layer.py.mako", **view)
            outputs.append(Output(f"python/pvops_{arch.name}.py", text, PYTHON))
        package = banner("#", sources) + '"""The generated Python layer of pvgen, one module per arch."""\n'
        outputs.append(Output("python/__init__.py", package, PYTHON))
        return outputs
