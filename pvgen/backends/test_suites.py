"""Backend: emits the generated pytest suites, one per arch x hypervisor, that check every op on the models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pvgen import ir
from pvgen.backends import PYTHON, Output, banner, render_template


class TestSuiteBackend:
    """Emits tests/test_<arch>_<hypervisor>.py: per op, decoding, fit, clobbers, site equivalence, effects."""

    name: ClassVar[str] = "test_suites"

    def render(self, build: ir.Build, sources: Sequence[str]) -> list[Output]:
        outputs = []
        templated = {(t.arch, t.owner, t.hypervisor) for t in build.templates}
        for arch in build.spec.arches:
            ops = build.spec.ops(arch.name)
            for hypervisor in build.spec.hypervisors:
                if arch.name not in hypervisor.arches:
                    continue
                with_template = [op.qualname for op in ops if (arch.name, op.qualname, hypervisor.name) in templated]
                # A jump-type op (iret, sysret) never returns to its site: it is decoded and
                # sized like the rest, but not run as a function.
                returning = [q for q in with_template if next(o for o in ops if o.qualname == q).transfer == "call"]
                native_bodies = [
                    op.qualname
                    for op in ops
                    if hypervisor.name == ir.NATIVE and (arch.name, op.qualname, ir.NATIVE) in templated
                ]
                effects = [
                    (op.qualname, effect.expression, effect.span.location)
                    for op in ops
                    for effect in op.effects
                    if effect.hypervisor == hypervisor.name
                ]
                text = render_template(
                    "test_suite.py.mako",
                    banner=banner("#", sources),
                    arch=arch.name,
                    hypervisor=hypervisor.name,
                    templated=with_template,
                    returning=returning,
                    native_bodies=native_bodies,
                    effects=effects,
                )
                outputs.append(Output(f"tests/test_{arch.name}_{hypervisor.name}.py", text, PYTHON))
        return outputs
