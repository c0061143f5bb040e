"""The pv_cpu_ops implementations a kernel image calls, placed in memory from the generated layer.

For the chosen hypervisor (with the forced-native mask applied) every pv_cpu_ops member gets an
out-of-line function built from its generated template followed by `br.cond.sptk.many b6` (the
stub's return convention, reference §2.2), and a function descriptor (entry, gp). getreg and
setreg, whose generic implementation is a C function in Linux, become a compare chain over the
per-register variants (reg id in r8 for getreg, in r9 for setreg, as §2.1 says), each variant a
function of its own; an unknown id returns -1 in r8. `xen_check_events` (the target of the Xen
intrin_local_irq_restore template's brl) is placed too. The member order of pv_cpu_ops is the
spec's op order, which is Linux's.

A template that sets b6 itself (Xen's intrin_local_irq_restore computes b6 = its own end, which is
the end of the site when patched in) would lose the caller's return address out of line: its
function parks b6 in r15 (a stub clobber) around the template.
"""

from __future__ import annotations

from typing import Final

import attrs
from pvgen.generated import pvops_ia64
from pvgen.runtime.ia64.memory import PhysicalMemory
from pvgen.runtime.ia64.patch import relocate_brl

from pvgen.ia64.decoder import decode
from pvgen.ia64.encoder import assemble
from pvgen.ia64.insn import Instruction, Reg

RETURN_B6: Final = assemble("{ .mib\nnop.m 0\nnop.i 0\nbr.cond.sptk.many b6\n;;\n}").code
SAVE_B6: Final = assemble("{ .mii\nnop.m 0\nmov r15 = b6\nnop.i 0\n;;\n}").code
RESTORE_AND_RETURN: Final = assemble("{ .mib\nnop.m 0\nmov b6 = r15\nbr.cond.sptk.many b6\n;;\n}").code
XEN_CHECK_EVENTS: Final = """
    st1.rel [r9] = r0, -1
    ;;
    ld1.acq r10 = [r9]
    ;;
    cmp.ne.unc p6, p7 = r10, r0
    ;;
    (p7) mf
    (p6) break 0x7
    ;;
    br.cond.sptk.many b6
    ;;
"""


@attrs.frozen
class SupportCode:
    """Where the implementations landed: symbol -> address, and each op's descriptor address."""

    base: int
    end: int
    symbols: dict[str, int]
    descriptors: dict[str, int]  # op name -> function descriptor address

    def symbol(self, name: str) -> int:
        return self.symbols[name]


def cpu_ops() -> list[pvops_ia64.Op]:
    """The pv_cpu_ops members in structure order."""
    return [op for op in pvops_ia64.OPS if op.group == "cpu"]


def _writes_b6(code: bytes) -> bool:
    for bundle in decode(code):
        for insn in bundle.instructions:
            if isinstance(insn, Instruction) and insn.operands[:1] == (Reg("b", 6),) and insn.form is not None:
                if insn.form.outputs and insn.mnemonic == "mov":
                    return True
    return False


class _Placer:
    def __init__(self, mem: PhysicalMemory, base: int) -> None:
        self.mem = mem
        self.address = base
        self.symbols: dict[str, int] = {}
        self.pending: list[tuple[int, str]] = []  # brl tags to aim once every symbol is placed

    def put(self, name: str, code: bytes) -> int:
        self.address = (self.address + 15) & -16
        start = self.address
        self.mem.write(start, code)
        self.symbols[name] = start
        self.address += len(code)
        return start

    def function(self, name: str, impl: pvops_ia64.Impl) -> int:
        assert impl.template is not None
        template = impl.template
        if _writes_b6(template):
            start = self.put(name, SAVE_B6 + template + RESTORE_AND_RETURN)
            body = start + len(SAVE_B6)
        else:
            start = self.put(name, template + RETURN_B6)
            body = start
        for offset, kind, symbol in impl.relocations:
            if kind == "brl":
                self.pending.append((body + offset, symbol))
        return start


def build_support(
    mem: PhysicalMemory, base: int, hypervisor: str, masked: frozenset[str] = frozenset(), gp: int = 0
) -> SupportCode:
    """Places the implementations for `hypervisor` at `base`; returns their addresses."""
    placer = _Placer(mem, base)
    placer.put("xen_check_events", assemble(XEN_CHECK_EVENTS, address=placer.address).code)
    entries: dict[str, int] = {}
    for op in cpu_ops():
        impl = pvops_ia64.effective_impl(op, hypervisor, masked)
        if impl.kind == "asm":
            entries[op.name] = placer.function(pvops_ia64.out_of_line_symbol(op, hypervisor, impl), impl)
            continue
        # A generic getreg/setreg: one function per register variant and a compare chain over them.
        selector = "r8" if op.name == "getreg" else "r9"
        variants: list[tuple[str, int, int]] = []
        for variant, patch_type, impls in op.variants:
            chosen = impls["native" if op.group in masked else hypervisor]
            name = f"pvgen_{hypervisor}_{op.group}_{op.name}_{variant}"
            variants.append((name, placer.function(name, chosen), patch_type & 0x0FFFFFFF))
        lines = []
        for name, _address, register_id in variants:
            lines += [f"mov r2 = {register_id}", ";;", f"cmp.eq p6, p0 = r2, {selector}", ";;"]
            lines += [f"(p6) br.cond.dptk.many {name}", ";;"]
        lines += ["mov r8 = -1", "br.cond.sptk.many b6", ";;"]
        chain_address = (placer.address + 15) & -16
        symbols = {name: address for name, address, _id in variants}
        code = assemble("\n".join(lines), address=chain_address, symbols=symbols).code
        entries[op.name] = placer.put(impl.symbol or f"pvgen_{hypervisor}_{op.group}_{op.name}", code)
    for tag, symbol in placer.pending:
        relocate_brl(mem, tag, placer.symbols[symbol])
    descriptors: dict[str, int] = {}
    for name, entry in entries.items():
        address = placer.put(f"{name}@fdesc", entry.to_bytes(8, "little") + gp.to_bytes(8, "little"))
        descriptors[name] = address
    return SupportCode(base, placer.address, placer.symbols, descriptors)


def install_pv_cpu_ops(mem: PhysicalMemory, table: int, support: SupportCode) -> None:
    """Fills the image's pv_cpu_ops (one descriptor pointer per member, in member order)."""
    for position, op in enumerate(cpu_ops()):
        mem.write_u64(table + 8 * position, support.descriptors[op.name])
