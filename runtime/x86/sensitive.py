"""Sensitive and privileged instructions: their kinds and the record a hypervisor model sees.

Every instruction a hypervisor may want to trap (the privileged ones, those whose
result depends on privilege such as `popf`, and the hypercall and port-I/O
instructions) has a *kind*. An exit handler names the kinds it intercepts; the
translator then ends the trace at such an instruction and hands a `SensitiveInsn` to
the handler instead of running it (see cpu.py for the handler protocol).
"""

from __future__ import annotations

import attrs
from pvgen.runtime.x86.decode import Imm, Insn, Mem, Operand, Reg, SysReg

# Kinds that are privileged: #GP(0) when CPL > 0.
PRIVILEGED = frozenset(
    {
        "hlt",
        "rdmsr",
        "wrmsr",
        "mov_cr_read",
        "mov_cr_write",
        "mov_dr_read",
        "mov_dr_write",
        "swapgs",
        "sysretq",
        "sysretl",
        "sysexit",
        "sysexitq",
        "invlpg",
        "wbinvd",
        "clts",
        "lgdt",
        "lidt",
        "lldt",
        "ltr",
    }
)
# Kinds that fault at CPL > IOPL.
IOPL_SENSITIVE = frozenset({"cli", "sti", "in", "out"})
# Kinds the translator runs inline unless a handler intercepts them.
# Kinds the translator runs in line when not intercepted (swapgs and CR reads only at CPL 0,
# where they cannot fault): the entry/exit paths run them on every switch.
INLINE = frozenset({"cli", "sti", "pushf", "popf", "swapgs", "mov_seg_read", "mov_cr_read"})

KINDS = frozenset(
    PRIVILEGED
    | IOPL_SENSITIVE
    | INLINE
    | {
        "cpuid",
        "rdtsc",
        "rdtscp",
        "rdpmc",
        "mov_seg_read",
        "mov_seg_write",
        "iretq",
        "syscall",
        "vmcall",
        "vmmcall",
        "int",
        "int3",
        "ud2",
        "sgdt",
        "sidt",
        "sldt",
        "str",
    }
)

_BY_NAME = {
    "cli": "cli",
    "sti": "sti",
    "pushfq": "pushf",
    "popfq": "popf",
    "hlt": "hlt",
    "cpuid": "cpuid",
    "rdmsr": "rdmsr",
    "wrmsr": "wrmsr",
    "rdtsc": "rdtsc",
    "rdtscp": "rdtscp",
    "rdpmc": "rdpmc",
    "swapgs": "swapgs",
    "iretq": "iretq",
    "sysretq": "sysretq",
    "sysret": "sysretl",
    "sysexit": "sysexit",
    "sysexitq": "sysexitq",
    "syscall": "syscall",
    "invlpg": "invlpg",
    "wbinvd": "wbinvd",
    "clts": "clts",
    "in": "in",
    "out": "out",
    "vmcall": "vmcall",
    "vmmcall": "vmmcall",
    "int": "int",
    "int3": "int3",
    "ud2": "ud2",
    "lgdt": "lgdt",
    "lidt": "lidt",
    "sgdt": "sgdt",
    "sidt": "sidt",
    "lldt": "lldt",
    "ltr": "ltr",
    "str": "str",
    "sldt": "sldt",
}


@attrs.frozen
class SensitiveInsn:
    """A decoded sensitive instruction as an exit handler or fault handler receives it."""

    kind: str
    insn: Insn

    @property
    def rip(self) -> int:
        return self.insn.address

    @property
    def next_rip(self) -> int:
        return self.insn.next

    @property
    def operands(self) -> tuple[Operand, ...]:
        return self.insn.operands

    @property
    def text(self) -> str:
        return self.insn.text

    @property
    def register(self) -> Reg | None:
        """The general-purpose register operand (mov cr/dr/seg, in/out data register)."""
        for op in self.insn.operands:
            if isinstance(op, Reg) and not (self.kind in ("in", "out") and op.index == 2 and op.size == 2):
                return op
        return None

    @property
    def system_register(self) -> SysReg | None:
        for op in self.insn.operands:
            if isinstance(op, SysReg):
                return op
        return None

    @property
    def memory(self) -> Mem | None:
        for op in self.insn.operands:
            if isinstance(op, Mem):
                return op
        return None

    @property
    def port(self) -> int | None:
        """The immediate port of in/out, None for the %dx forms."""
        for op in self.insn.operands:
            if isinstance(op, Imm):
                return op.value
        return None

    @property
    def io_size(self) -> int:
        """The data size of in/out in bytes."""
        for op in self.insn.operands:
            if isinstance(op, Reg) and op.index == 0:
                return op.size
        return 1


def classify(insn: Insn) -> str | None:
    """The sensitive kind of an instruction, or None for an ordinary one."""
    kind = _BY_NAME.get(insn.name)
    if kind is not None:
        return kind
    if insn.name == "mov":
        dst, src = insn.operands
        if isinstance(dst, SysReg):
            return {"cr": "mov_cr_write", "dr": "mov_dr_write", "seg": "mov_seg_write"}[dst.kind]
        if isinstance(src, SysReg):
            return {"cr": "mov_cr_read", "dr": "mov_dr_read", "seg": "mov_seg_read"}[src.kind]
    return None
