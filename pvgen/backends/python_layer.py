"""Backend: emits the Python runtime layer per arch: op tables, patch decisions, detection, mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pvgen import ir
from pvgen.assemble import IDENTITY
from pvgen.backends import PYTHON, Output, banner, render_template


def _impl_view(op: ir.Op, impl: ir.Impl, templates: dict[tuple[str, str, str], ir.Template], owner: str) -> str:
    template = templates.get((op.arch, owner, impl.hypervisor))
    fields: list[Any] = [
        impl.kind,
        impl.text if impl.kind == ir.IMPL_CALL else None,
        template.code if template else None,
        bool(template and template.fits_site and not template.out_of_line),
        impl.preserves_registers,
        tuple((r.offset, r.kind, r.symbol) for r in template.relocations) if template else (),
        impl.span.location,
    ]
    return "Impl(" + ", ".join(repr(f) for f in fields) + ")"


def _clobber_mask(arch: ir.Arch, clobbers: Sequence[str]) -> int:
    bits = dict(arch.clobber_bits)
    return sum(1 << bits[r] for r in clobbers if r in bits)


def _op_view(op: ir.Op, arch: ir.Arch, templates: dict[tuple[str, str, str], ir.Template]) -> dict[str, Any]:
    impls = {impl.hypervisor: _impl_view(op, impl, templates, op.qualname) for impl in op.impls}
    variants = []
    for variant in op.variants:
        owner = f"{op.qualname}[{variant.name}]"
        variant_impls = {impl.hypervisor: _impl_view(op, impl, templates, owner) for impl in variant.impls}
        variants.append((variant.name, variant.patch_type, variant_impls))
    return {
        "name": op.name,
        "group": op.group,
        "index": op.index,
        "category": op.category,
        "transfer": op.transfer,
        "callee_save": op.callee_save,
        "returns_value": op.returns.kind != "void",
        "params": tuple(p.name for p in op.params),
        "clobbers": op.clobbers,
        "clobber_mask": _clobber_mask(arch, op.clobbers),
        "impls": impls,
        "variants": variants,
        "location": op.span.location,
    }


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


class PythonLayerBackend:
    """Emits python/pvops_<arch>.py, formatted by black, which the runtime imports."""

    name: ClassVar[str] = "python_layer"

    def render(self, build: ir.Build, sources: Sequence[str]) -> list[Output]:
        templates = {(t.arch, t.owner, t.hypervisor): t for t in build.templates}
        outputs = []
        for arch in build.spec.arches:
            identity = templates.get((arch.name, IDENTITY, ir.NATIVE))
            groups = [g for g in build.spec.groups if g.arch == arch.name]
            mask = next((m for m in build.spec.masks if m.arch == arch.name), None)
            view = {
                "banner": banner("#", sources),
                "arch": arch,
                "nops": tuple(bytes.fromhex(n) for n in arch.nops),
                "identity": identity.code if identity else None,
                "clobber_bits": dict(arch.clobber_bits),
                "ops": [_op_view(op, arch, templates) for g in groups for op in g.ops],
                "groups": [(g.name, g.struct, g.mask_bit) for g in groups],
                "data": {
                    h.name: {
                        f"{g.name}.{d.name}": v.value
                        for g in groups
                        for d in g.data
                        for v in d.values
                        if v.hypervisor == h.name
                    }
                    for h in build.spec.hypervisors
                    if arch.name in h.arches
                },
                "hypervisors": [
                    _hypervisor_view(h, arch.name) for h in build.spec.hypervisors if arch.name in h.arches
                ],
                "mask_cmdline": mask.cmdline if mask else None,
                "mask_bits": dict(mask.bits) if mask else {},
                "yields": [
                    (y.name, y.function, y.when, y.hypervisors) for y in build.spec.yields if y.arch == arch.name
                ],
                "iommu": [
                    (e.detect, e.depends, e.early_init, e.late_init, e.finish, e.buses, e.found_under)
                    for e in build.spec.iommu
                    if e.arch == arch.name
                ],
            }
            text = render_template("python_layer.py.mako", **view)
            outputs.append(Output(f"python/pvops_{arch.name}.py", text, PYTHON))
        package = (
            banner("#", sources)
            + '"""pvgen\'s generated Python layer, one module per arch (import pvgen.generated)."""\n'
        )
        outputs.append(Output("python/__init__.py", package, PYTHON))
        return outputs
