"""Native semantics of the sensitive instructions and of the string instructions.

These run on the committed state (`cpu.state`) in plain Python: they are rare enough
that translating them buys nothing, and keeping them here lets a hypervisor model call
`cpu.execute_native(insn)` to pass an intercepted instruction through.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pvgen.runtime.x86 import flags as fl
from pvgen.runtime.x86.decode import Imm, Mem, Reg
from pvgen.runtime.x86.faults import (
    Breakpoint,
    GeneralProtection,
    InvalidOpcode,
    SoftwareInterrupt,
)
from pvgen.runtime.x86.memory import M64, READ, WRITE, canonical
from pvgen.runtime.x86.sensitive import IOPL_SENSITIVE, PRIVILEGED, SensitiveInsn

if TYPE_CHECKING:
    from pvgen.runtime.x86.cpu import Cpu
    from pvgen.runtime.x86.decode import Insn

RAX, RCX, RDX, RSP, RSI, RDI, R11 = 0, 1, 2, 4, 6, 7, 11

MSR_EFER = 0xC000_0080
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_CSTAR = 0xC000_0083
MSR_FMASK = 0xC000_0084
MSR_FS_BASE = 0xC000_0100
MSR_GS_BASE = 0xC000_0101
MSR_KERNEL_GS_BASE = 0xC000_0102
MSR_TSC_AUX = 0xC000_0103
MSR_TSC = 0x10
MSR_APIC_BASE = 0x1B
MSR_SYSENTER_CS = 0x174
MSR_SYSENTER_ESP = 0x175
MSR_SYSENTER_EIP = 0x176
MSR_PAT = 0x277
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

CR0_PE = 1 << 0
CR0_TS = 1 << 3
CR0_PG = 1 << 31
CR4_TSD = 1 << 2
CR4_DE = 1 << 3
CR4_PAE = 1 << 5
CR4_PCE = 1 << 8
CR4_UMIP = 1 << 11
# CR4 bits a write may set (VME..PKE, without the reserved ones of the SDM's table).
CR4_VALID = 0x0177_7FFF


class Stop(Exception):
    """Ends the run loop after a retired instruction: `hlt`, or a switch to compat mode."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retired = 0


def effective_address(cpu: Cpu, mem: Mem) -> int:
    """The linear address of a memory operand on the committed state."""
    s = cpu.state
    addr = mem.disp
    if mem.base is not None:
        addr += s[mem.base]
    if mem.index is not None:
        addr += s[mem.index] * mem.scale
    if mem.addr32:
        addr &= 0xFFFF_FFFF
    if mem.segment == "gs":
        addr += s[18]
    elif mem.segment == "fs":
        addr += s[19]
    return addr & M64


def _read_operand(cpu: Cpu, op: Reg | Mem | Imm, rip: int) -> int:
    if isinstance(op, Imm):
        return op.value
    if isinstance(op, Reg):
        value = cpu.state[op.index]
        if op.high:
            return (value >> 8) & 0xFF
        return value & fl.MASKS[fl.SIZE_INDEX[op.size]]
    return cpu.memory.load(effective_address(cpu, op), op.size, rip)


def _write_register(cpu: Cpu, op: Reg, value: int) -> None:
    s = cpu.state
    if op.size == 8:
        s[op.index] = value & M64
    elif op.size == 4:
        s[op.index] = value & 0xFFFF_FFFF
    elif op.size == 2:
        s[op.index] = (s[op.index] & ~0xFFFF & M64) | (value & 0xFFFF)
    elif op.high:
        s[op.index] = (s[op.index] & ~0xFF00 & M64) | ((value & 0xFF) << 8)
    else:
        s[op.index] = (s[op.index] & ~0xFF & M64) | (value & 0xFF)


def _push(cpu: Cpu, value: int, rip: int) -> None:
    rsp = (cpu.state[RSP] - 8) & M64
    cpu.memory.store(rsp, 8, value, rip)
    cpu.state[RSP] = rsp


def _pop(cpu: Cpu, rip: int) -> int:
    value = cpu.memory.load(cpu.state[RSP], 8, rip)
    cpu.state[RSP] = (cpu.state[RSP] + 8) & M64
    return value


def load_flags(cpu: Cpu, value: int, cpl: int) -> None:
    """popf/iretq: the bits of `value` that privilege lets through, at `cpl`."""
    s = cpu.state
    current = s[17]
    iopl = (current >> 12) & 3
    mask = fl.POPF_CPL0
    if cpl > 0:
        mask &= ~fl.IOPL
        if cpl > iopl:
            mask &= ~fl.IF
    system = ((current & ~mask) | (value & mask)) & ~fl.ARITH
    s[17] = (system & ~(fl.RF | fl.VM)) | fl.RESERVED_ONE
    s[16] = (fl.MAT, value & fl.ARITH, 0, 0, 0)


def execute(cpu: Cpu, si: SensitiveInsn) -> None:
    """Runs one sensitive instruction natively and leaves `cpu.rip` at what follows."""
    kind = si.kind
    rip = si.rip
    cpl = cpu.cpl
    s = cpu.state
    if kind in PRIVILEGED and cpl > 0:
        raise GeneralProtection(rip, 0, insn=si, detail=f"{si.text} at CPL {cpl}")
    if kind in IOPL_SENSITIVE and cpl > (s[17] >> 12) & 3:
        raise GeneralProtection(rip, 0, insn=si, detail=f"{si.text} at CPL {cpl} > IOPL")
    cpu.rip = si.next_rip
    handler = _HANDLERS.get(kind)
    if handler is None:  # pragma: no cover - every kind has one
        raise InvalidOpcode(rip, insn=si, detail=f"{si.text}: not modelled")
    handler(cpu, si)


def _cli(cpu: Cpu, si: SensitiveInsn) -> None:
    cpu.state[17] &= ~fl.IF


def _sti(cpu: Cpu, si: SensitiveInsn) -> None:
    cpu.state[17] |= fl.IF


def _pushf(cpu: Cpu, si: SensitiveInsn) -> None:
    _push(cpu, cpu.rflags, si.rip)


def _popf(cpu: Cpu, si: SensitiveInsn) -> None:
    rsp = cpu.state[RSP]
    value = cpu.memory.load(rsp, 8, si.rip)
    cpu.state[RSP] = (rsp + 8) & M64
    load_flags(cpu, value, cpu.cpl)


def _hlt(cpu: Cpu, si: SensitiveInsn) -> None:
    cpu.halted = True
    raise Stop("hlt")


def _cpuid(cpu: Cpu, si: SensitiveInsn) -> None:
    s = cpu.state
    leaf, subleaf = s[RAX] & 0xFFFF_FFFF, s[RCX] & 0xFFFF_FFFF
    values = cpu.cpuid.get((leaf, subleaf)) or cpu.cpuid.get((leaf, None))
    if values is None:
        # Out-of-range leaves return the highest basic leaf's data on Intel; zeros are simpler
        # and what an unknown hypervisor leaf reads as on bare metal.
        values = (0, 0, 0, 0)
    for reg, value in zip((RAX, 3, RCX, RDX), values, strict=True):
        s[reg] = value & 0xFFFF_FFFF


def _rdmsr(cpu: Cpu, si: SensitiveInsn) -> None:
    s = cpu.state
    value = cpu.read_msr(s[RCX] & 0xFFFF_FFFF, si)
    s[RAX] = value & 0xFFFF_FFFF
    s[RDX] = value >> 32


def _wrmsr(cpu: Cpu, si: SensitiveInsn) -> None:
    s = cpu.state
    cpu.write_msr(s[RCX] & 0xFFFF_FFFF, ((s[RDX] & 0xFFFF_FFFF) << 32) | (s[RAX] & 0xFFFF_FFFF), si)


def _rdtsc(cpu: Cpu, si: SensitiveInsn) -> None:
    if cpu.cpl > 0 and cpu.cr4 & CR4_TSD:
        raise GeneralProtection(si.rip, 0, insn=si, detail="rdtsc with CR4.TSD at CPL > 0")
    s = cpu.state
    tsc = cpu.read_tsc()
    s[RAX] = tsc & 0xFFFF_FFFF
    s[RDX] = (tsc >> 32) & 0xFFFF_FFFF
    if si.kind == "rdtscp":
        s[RCX] = cpu.msrs.get(MSR_TSC_AUX, 0) & 0xFFFF_FFFF


def _rdpmc(cpu: Cpu, si: SensitiveInsn) -> None:
    if cpu.cpl > 0 and not cpu.cr4 & CR4_PCE:
        raise GeneralProtection(si.rip, 0, insn=si, detail="rdpmc with CR4.PCE clear at CPL > 0")
    s = cpu.state
    counter = s[RCX] & 0xFFFF_FFFF
    if counter >= len(cpu.pmc):
        raise GeneralProtection(si.rip, 0, insn=si, detail=f"no performance counter {counter}")
    value = cpu.pmc[counter]
    s[RAX] = value & 0xFFFF_FFFF
    s[RDX] = (value >> 32) & 0xFF


def _mov_cr_read(cpu: Cpu, si: SensitiveInsn) -> None:
    creg, reg = si.system_register, si.register
    assert creg is not None and reg is not None
    if creg.number not in (0, 2, 3, 4, 8):
        raise InvalidOpcode(si.rip, insn=si, detail=f"cr{creg.number}")
    _write_register(cpu, Reg(reg.index, 8), getattr(cpu, f"cr{creg.number}"))


def _mov_cr_write(cpu: Cpu, si: SensitiveInsn) -> None:
    creg, reg = si.system_register, si.register
    assert creg is not None and reg is not None
    value = cpu.state[reg.index]
    n = creg.number
    if n == 0:
        if value >> 32 or not value & CR0_PG or not value & CR0_PE:
            raise GeneralProtection(si.rip, 0, insn=si, detail=f"cr0 value {value:#x} in long mode")
    elif n == 3:
        if value >> 52:
            raise GeneralProtection(si.rip, 0, insn=si, detail=f"cr3 value {value:#x}")
    elif n == 4:
        if value & ~CR4_VALID or not value & CR4_PAE:
            raise GeneralProtection(si.rip, 0, insn=si, detail=f"cr4 value {value:#x}")
    elif n == 8:
        if value >> 4:
            raise GeneralProtection(si.rip, 0, insn=si, detail=f"cr8 value {value:#x}")
    elif n != 2:
        raise InvalidOpcode(si.rip, insn=si, detail=f"cr{n}")
    setattr(cpu, f"cr{n}", value)


def _debug_register(cpu: Cpu, si: SensitiveInsn) -> int:
    dreg = si.system_register
    assert dreg is not None
    n = dreg.number
    if n in (4, 5):
        if cpu.cr4 & CR4_DE:
            raise InvalidOpcode(si.rip, insn=si, detail=f"dr{n} with CR4.DE set")
        n += 2
    if n > 7:
        raise InvalidOpcode(si.rip, insn=si, detail=f"dr{n}")
    return n


def _mov_dr_read(cpu: Cpu, si: SensitiveInsn) -> None:
    reg = si.register
    assert reg is not None
    _write_register(cpu, Reg(reg.index, 8), cpu.dr[_debug_register(cpu, si)])


def _mov_dr_write(cpu: Cpu, si: SensitiveInsn) -> None:
    reg = si.register
    assert reg is not None
    n = _debug_register(cpu, si)
    value = cpu.state[reg.index]
    if n in (6, 7) and value >> 32:
        raise GeneralProtection(si.rip, 0, insn=si, detail=f"dr{n} value {value:#x}")
    cpu.dr[n] = value


def _mov_seg_read(cpu: Cpu, si: SensitiveInsn) -> None:
    seg = si.system_register
    assert seg is not None
    value = cpu.selectors[seg.number]
    dst = si.insn.operands[0]
    if isinstance(dst, Mem):
        cpu.memory.store(effective_address(cpu, dst), 2, value, si.rip)
    elif isinstance(dst, Reg):
        _write_register(cpu, dst, value)


def _mov_seg_write(cpu: Cpu, si: SensitiveInsn) -> None:
    seg = si.system_register
    assert seg is not None
    if seg.number == 1:  # cs
        raise InvalidOpcode(si.rip, insn=si, detail="mov to cs")
    src = si.insn.operands[1]
    if isinstance(src, Mem):
        value = cpu.memory.load(effective_address(cpu, src), 2, si.rip)
    elif isinstance(src, Reg):
        value = cpu.state[src.index] & 0xFFFF
    else:  # pragma: no cover - capstone never gives an immediate here
        raise InvalidOpcode(si.rip, insn=si)
    if seg.number == 2 and value & ~3 == 0 and cpu.cpl == 3:
        raise GeneralProtection(si.rip, 0, insn=si, detail="null ss at CPL 3")
    # No descriptor tables are modelled: the selector changes, the hidden base does not.
    cpu.selectors[seg.number] = value


def _swapgs(cpu: Cpu, si: SensitiveInsn) -> None:
    s = cpu.state
    s[18], cpu.kernel_gs_base = cpu.kernel_gs_base, s[18]


_FRAME = struct.Struct("<5Q")


def _iretq(cpu: Cpu, si: SensitiveInsn) -> None:
    s = cpu.state
    rsp = s[RSP]
    # One checked read of the whole 40-byte frame (the five pops of the instruction).
    new_rip, cs, rflags, new_rsp, ss = _FRAME.unpack(cpu.memory.load_bytes(rsp, 40, si.rip))
    cs &= 0xFFFF
    new_cpl = cs & 3
    if new_cpl < cpu.cpl:
        raise GeneralProtection(si.rip, cs & ~3, insn=si, detail="iretq to an inner ring")
    if not canonical(new_rip):
        raise GeneralProtection(si.rip, 0, insn=si, detail=f"iretq to non-canonical {new_rip:#x}")
    load_flags(cpu, rflags, cpu.cpl)
    s[RSP] = new_rsp
    cpu.selectors[1] = cs
    cpu.selectors[2] = ss & 0xFFFF
    cpu.cpl = new_cpl
    cpu.rip = new_rip


def _sysret(cpu: Cpu, si: SensitiveInsn) -> None:
    s = cpu.state
    selector = (cpu.msrs.get(MSR_STAR, 0) >> 48) & 0xFFFF
    if si.kind == "sysretq":
        if not canonical(s[RCX]):
            raise GeneralProtection(si.rip, 0, insn=si, detail=f"sysretq to non-canonical {s[RCX]:#x}")
        cpu.rip = s[RCX]
        cpu.selectors[1] = (selector + 16) | 3
    else:
        cpu.rip = s[RCX] & 0xFFFF_FFFF
        cpu.selectors[1] = selector | 3
    cpu.selectors[2] = (selector + 8) | 3
    value = (s[R11] & 0x3C_7FD7) | fl.RESERVED_ONE
    s[17] = value & ~fl.ARITH
    s[16] = (fl.MAT, value & fl.ARITH, 0, 0, 0)
    cpu.cpl = 3
    if si.kind == "sysretl":
        raise Stop("compat")


def _sysexit(cpu: Cpu, si: SensitiveInsn) -> None:
    s = cpu.state
    selector = cpu.msrs.get(MSR_SYSENTER_CS, 0) & 0xFFFF
    if selector & ~3 == 0:
        raise GeneralProtection(si.rip, 0, insn=si, detail="IA32_SYSENTER_CS is zero")
    if si.kind == "sysexitq":
        if not canonical(s[RDX]):
            raise GeneralProtection(si.rip, 0, insn=si, detail=f"sysexitq to non-canonical {s[RDX]:#x}")
        cpu.rip = s[RDX]
        s[RSP] = s[RCX]
        cpu.selectors[1] = (selector + 32) | 3
        cpu.selectors[2] = (selector + 40) | 3
        cpu.cpl = 3
        return
    cpu.rip = s[RDX] & 0xFFFF_FFFF
    s[RSP] = s[RCX] & 0xFFFF_FFFF
    cpu.selectors[1] = (selector + 16) | 3
    cpu.selectors[2] = (selector + 24) | 3
    cpu.cpl = 3
    raise Stop("compat")


def _syscall(cpu: Cpu, si: SensitiveInsn) -> None:
    if not cpu.msrs.get(MSR_EFER, 0) & EFER_SCE:
        raise InvalidOpcode(si.rip, insn=si, detail="syscall with EFER.SCE clear")
    s = cpu.state
    s[RCX] = si.next_rip
    s[R11] = cpu.rflags & ~fl.RF
    fmask = cpu.msrs.get(MSR_FMASK, 0)
    rflags = cpu.rflags & ~fmask & ~fl.RF
    s[17] = (rflags & ~fl.ARITH) | fl.RESERVED_ONE
    s[16] = (fl.MAT, rflags & fl.ARITH, 0, 0, 0)
    selector = (cpu.msrs.get(MSR_STAR, 0) >> 32) & 0xFFFF
    cpu.selectors[1] = selector & ~3
    cpu.selectors[2] = (selector + 8) & ~3
    cpu.cpl = 0
    cpu.rip = cpu.msrs.get(MSR_LSTAR, 0)


def _noop(cpu: Cpu, si: SensitiveInsn) -> None:
    return None


def _invlpg(cpu: Cpu, si: SensitiveInsn) -> None:
    if si.memory is None:
        raise InvalidOpcode(si.rip, insn=si, detail="invlpg needs a memory operand")
    cpu.invlpg_log.append(effective_address(cpu, si.memory))
    del cpu.invlpg_log[:-64]


def _clts(cpu: Cpu, si: SensitiveInsn) -> None:
    cpu.cr0 &= ~CR0_TS


def _in(cpu: Cpu, si: SensitiveInsn) -> None:
    port = si.port if si.port is not None else cpu.state[RDX] & 0xFFFF
    size = si.io_size
    value = cpu.io_read(port, size) & fl.MASKS[fl.SIZE_INDEX[size]]
    _write_register(cpu, Reg(RAX, size), value)


def _out(cpu: Cpu, si: SensitiveInsn) -> None:
    port = si.port if si.port is not None else cpu.state[RDX] & 0xFFFF
    size = si.io_size
    cpu.io_write(port, size, cpu.state[RAX] & fl.MASKS[fl.SIZE_INDEX[size]])


def _vmcall(cpu: Cpu, si: SensitiveInsn) -> None:
    raise InvalidOpcode(si.rip, insn=si, detail=f"{si.kind} outside a virtual machine")


def _int(cpu: Cpu, si: SensitiveInsn) -> None:
    number = si.port if si.kind == "int" else 3
    assert number is not None
    if si.kind == "int3":
        raise Breakpoint(si.next_rip, insn=si)
    raise SoftwareInterrupt(si.next_rip, number, insn=si)


def _ud2(cpu: Cpu, si: SensitiveInsn) -> None:
    raise InvalidOpcode(si.rip, insn=si, detail="ud2")


def _descriptor_table(cpu: Cpu, si: SensitiveInsn) -> None:
    mem = si.memory
    if mem is None:
        raise InvalidOpcode(si.rip, insn=si, detail=f"{si.kind} needs a memory operand")
    addr = effective_address(cpu, mem)
    if si.kind in ("lgdt", "lidt"):
        limit = cpu.memory.load(addr, 2, si.rip)
        base = cpu.memory.load((addr + 2) & M64, 8, si.rip)
        setattr(cpu, si.kind[1:] + "r", (base, limit))
        return
    if cpu.cpl > 0 and cpu.cr4 & CR4_UMIP:
        raise GeneralProtection(si.rip, 0, insn=si, detail=f"{si.kind} with CR4.UMIP at CPL > 0")
    base, limit = getattr(cpu, si.kind[1:] + "r")
    data = (limit & 0xFFFF).to_bytes(2, "little") + (base & M64).to_bytes(8, "little")
    cpu.memory.store_bytes(addr, data, si.rip)


def _load_selector(cpu: Cpu, si: SensitiveInsn) -> None:
    op = si.insn.operands[0]
    if not isinstance(op, Reg | Mem):
        raise InvalidOpcode(si.rip, insn=si)
    value = _read_operand(cpu, op, si.rip) & 0xFFFF
    if si.kind == "ltr":
        cpu.tr = value
    else:
        cpu.ldtr = value


def _store_selector(cpu: Cpu, si: SensitiveInsn) -> None:
    if cpu.cpl > 0 and cpu.cr4 & CR4_UMIP:
        raise GeneralProtection(si.rip, 0, insn=si, detail=f"{si.kind} with CR4.UMIP at CPL > 0")
    value = cpu.tr if si.kind == "str" else cpu.ldtr
    op = si.insn.operands[0]
    if isinstance(op, Mem):
        cpu.memory.store(effective_address(cpu, op), 2, value, si.rip)
    elif isinstance(op, Reg):
        _write_register(cpu, op, value)


_HANDLERS = {
    "cli": _cli,
    "sti": _sti,
    "pushf": _pushf,
    "popf": _popf,
    "hlt": _hlt,
    "cpuid": _cpuid,
    "rdmsr": _rdmsr,
    "wrmsr": _wrmsr,
    "rdtsc": _rdtsc,
    "rdtscp": _rdtsc,
    "rdpmc": _rdpmc,
    "mov_cr_read": _mov_cr_read,
    "mov_cr_write": _mov_cr_write,
    "mov_dr_read": _mov_dr_read,
    "mov_dr_write": _mov_dr_write,
    "mov_seg_read": _mov_seg_read,
    "mov_seg_write": _mov_seg_write,
    "swapgs": _swapgs,
    "iretq": _iretq,
    "sysretq": _sysret,
    "sysretl": _sysret,
    "sysexit": _sysexit,
    "sysexitq": _sysexit,
    "syscall": _syscall,
    "invlpg": _invlpg,
    "wbinvd": _noop,
    "clts": _clts,
    "in": _in,
    "out": _out,
    "vmcall": _vmcall,
    "vmmcall": _vmcall,
    "int": _int,
    "int3": _int,
    "ud2": _ud2,
    "lgdt": _descriptor_table,
    "lidt": _descriptor_table,
    "sgdt": _descriptor_table,
    "sidt": _descriptor_table,
    "lldt": _load_selector,
    "ltr": _load_selector,
    "sldt": _store_selector,
    "str": _store_selector,
}


# -- string instructions ------------------------------------------------------------------


def _accessible(cpu: Cpu, addr: int, total: int, need: int) -> int:
    """How many bytes from `addr` (up to `total`) a guest access could reach without faulting."""
    done = 0
    memory = cpu.memory
    while done < total:
        a = (addr + done) & M64
        region = memory.region_of(a)
        if region is None or not region.perms & need or not canonical(a):
            break
        done += min(total - done, region.end - a)
    return min(done, total)


def execute_string(cpu: Cpu, insn: Insn) -> None:
    """movs/stos/lods/cmps/scas with rep/repe/repne, precise at a fault (registers updated)."""
    s = cpu.state
    name = insn.name
    op, width = name[:4], {"b": 1, "w": 2, "d": 4, "q": 8}[name[4]]
    rip = insn.address
    if any(isinstance(o, Mem) and o.addr32 for o in insn.operands):
        raise InvalidOpcode(rip, detail=f"{insn.text}: 32-bit addressing")
    source_base = 0
    for o in insn.operands:
        if isinstance(o, Mem) and o.base == RSI and o.segment is not None:
            source_base = s[18] if o.segment == "gs" else s[19]
    step = -width if s[17] & fl.DF else width
    mask = fl.MASKS[fl.SIZE_INDEX[width]]
    repeat = insn.rep is not None
    memory = cpu.memory
    if repeat and s[RCX] == 0:
        cpu.rip = insn.next
        return
    if repeat and step > 0 and op in ("stos", "movs"):
        count = s[RCX]
        total = count * width
        dst = s[RDI]
        if op == "stos":
            ok = _accessible(cpu, dst, total, WRITE) // width
            if ok:
                memory.store_bytes(dst, (s[RAX] & mask).to_bytes(width, "little") * ok, rip)
        else:
            src = (s[RSI] + source_base) & M64
            overlapping = src < dst < src + total
            ok = 0 if overlapping else min(_accessible(cpu, src, total, READ), _accessible(cpu, dst, total, WRITE))
            ok //= width
            if ok:
                memory.store_bytes(dst, memory.load_bytes(src, ok * width, rip), rip)
                s[RSI] = (s[RSI] + ok * width) & M64
        s[RDI] = (dst + ok * width) & M64
        s[RCX] = count - ok
        if s[RCX] == 0:
            cpu.rip = insn.next
            return
    while True:
        if op == "movs":
            value = memory.load((s[RSI] + source_base) & M64, width, rip)
            memory.store(s[RDI], width, value, rip)
            s[RSI] = (s[RSI] + step) & M64
            s[RDI] = (s[RDI] + step) & M64
        elif op == "stos":
            memory.store(s[RDI], width, s[RAX], rip)
            s[RDI] = (s[RDI] + step) & M64
        elif op == "lods":
            value = memory.load((s[RSI] + source_base) & M64, width, rip)
            _write_register(cpu, Reg(RAX, width), value)
            s[RSI] = (s[RSI] + step) & M64
        else:
            if op == "cmps":
                a = memory.load((s[RSI] + source_base) & M64, width, rip)
                b = memory.load(s[RDI], width, rip)
                s[RSI] = (s[RSI] + step) & M64
            else:  # scas
                a = s[RAX] & mask
                b = memory.load(s[RDI], width, rip)
            s[RDI] = (s[RDI] + step) & M64
            s[16] = (fl.kind(fl.SUB, width), (a - b) & mask, a, b, 0)
            if repeat:
                s[RCX] = (s[RCX] - 1) & M64
                stop = (a != b) if insn.rep == "rep" else (a == b)
                if s[RCX] == 0 or stop:
                    break
                continue
            break
        if not repeat:
            break
        s[RCX] = (s[RCX] - 1) & M64
        if s[RCX] == 0:
            break
    cpu.rip = insn.next


__all__ = ["Stop", "effective_address", "execute", "execute_string", "load_flags"]
