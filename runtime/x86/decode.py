"""Decoding: capstone (detail mode) turned into plain operand records, once per instruction.

Only the translator calls capstone; the records it keeps are all the run loop ever sees.
"""

from __future__ import annotations

import attrs
import capstone
from capstone import x86 as cs_x86
from pvgen.runtime.x86.faults import InvalidOpcode

GPR64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# name -> (index, size in bytes, high byte)
_GPRS: dict[str, tuple[int, int, bool]] = {}
for _i, _name in enumerate(GPR64):
    _GPRS[_name] = (_i, 8, False)
for _i, _name in enumerate(("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")):
    _GPRS[_name] = (_i, 4, False)
for _i, _name in enumerate(("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")):
    _GPRS[_name] = (_i, 2, False)
for _i, _name in enumerate(("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil")):
    _GPRS[_name] = (_i, 1, False)
for _i, _name in enumerate(("ah", "ch", "dh", "bh")):
    _GPRS[_name] = (_i, 1, True)
for _i in range(8, 16):
    _GPRS[f"r{_i}d"] = (_i, 4, False)
    _GPRS[f"r{_i}w"] = (_i, 2, False)
    _GPRS[f"r{_i}b"] = (_i, 1, False)

SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")


@attrs.frozen
class Reg:
    """A general-purpose register operand."""

    index: int
    size: int
    high: bool = False


@attrs.frozen
class Imm:
    """An immediate, masked to its operand size (branch targets are absolute)."""

    value: int
    size: int


@attrs.frozen
class Mem:
    """A memory operand. RIP-relative ones are resolved: `base` is None, `disp` absolute."""

    base: int | None
    index: int | None
    scale: int
    disp: int
    segment: str | None
    size: int
    addr32: bool = False


@attrs.frozen
class SysReg:
    """A control, debug or segment register operand."""

    kind: str  # "cr" | "dr" | "seg"
    number: int
    size: int


Operand = Reg | Imm | Mem | SysReg


@attrs.frozen
class Insn:
    """One decoded instruction."""

    address: int
    raw: bytes
    name: str  # capstone's canonical instruction name, no prefixes ("stosq", "cmovne")
    text: str  # the disassembly, for messages
    operands: tuple[Operand, ...]
    rep: str | None  # "rep" (f3) | "repne" (f2) | None
    lock: bool

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def next(self) -> int:
        return self.address + len(self.raw)


class Decoder:
    """Decodes one instruction at a time with a single capstone handle."""

    def __init__(self) -> None:
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._cs.detail = True

    def decode(self, code: bytes, address: int) -> Insn | None:
        """The instruction at the start of `code`, or None if capstone cannot decode it.

        Raises #UD for an encoding capstone accepts but whose operands the model cannot
        represent.
        """
        try:
            insn = next(self._cs.disasm(code, address, 1), None)
        except capstone.CsError:
            return None
        if insn is None:
            return None
        prefix = insn.prefix
        rep = "rep" if 0xF3 in prefix else "repne" if 0xF2 in prefix else None
        ops = tuple(self._operand(insn, op, address) for op in insn.operands)
        return Insn(
            address=address,
            raw=bytes(insn.bytes),
            name=insn.insn_name() or insn.mnemonic,
            text=f"{insn.mnemonic} {insn.op_str}".strip(),
            operands=ops,
            rep=rep,
            lock=0xF0 in prefix,
        )

    @staticmethod
    def _operand(insn: capstone.CsInsn, op: cs_x86.X86Op, address: int) -> Operand:
        if op.type == cs_x86.X86_OP_REG:
            name = insn.reg_name(op.reg)
            if name in _GPRS:
                number, size, high = _GPRS[name]
                return Reg(number, size, high)
            if name is not None and name.startswith("cr") and name[2:].isdigit():
                return SysReg("cr", int(name[2:]), op.size)
            if name is not None and name.startswith("dr") and name[2:].isdigit():
                return SysReg("dr", int(name[2:]), op.size)
            if name in SEGMENTS:
                return SysReg("seg", SEGMENTS.index(name), op.size)
            raise InvalidOpcode(address, detail=f"register {name} is outside the model ({insn.mnemonic})")
        if op.type == cs_x86.X86_OP_IMM:
            size = op.size or 8
            return Imm(op.imm & ((1 << (8 * size)) - 1), size)
        if op.type == cs_x86.X86_OP_MEM:
            mem = op.mem
            segment = insn.reg_name(mem.segment) if mem.segment else None
            if segment not in (None, "fs", "gs", "cs", "ds", "es", "ss"):
                raise InvalidOpcode(address, detail=f"segment {segment}")
            if segment not in ("fs", "gs"):
                segment = None  # flat in 64-bit mode
            addr32 = False
            base: int | None = None
            disp = mem.disp
            if mem.base:
                name = insn.reg_name(mem.base)
                if name in ("rip", "eip"):
                    disp = (address + insn.size + disp) & ((1 << 64) - 1)
                    if name == "eip":
                        disp &= 0xFFFF_FFFF
                elif name in _GPRS and _GPRS[name][1] in (4, 8):
                    base = _GPRS[name][0]
                    addr32 = _GPRS[name][1] == 4
                else:
                    raise InvalidOpcode(address, detail=f"base register {name}")
            index: int | None = None
            if mem.index:
                name = insn.reg_name(mem.index)
                if name in _GPRS and _GPRS[name][1] in (4, 8):
                    index = _GPRS[name][0]
                    addr32 = addr32 or _GPRS[name][1] == 4
                else:
                    raise InvalidOpcode(address, detail=f"index register {name}")
            if 0x67 in insn.prefix:
                addr32 = True
            return Mem(base, index, mem.scale, disp, segment, op.size, addr32)
        raise InvalidOpcode(address, detail=f"operand type {op.type}")
