"""The x86-64 CPU model: architectural state, the run loop and the hypervisor hooks.

State lives in one list, `cpu.state` (`S` in translated code): the 16 general-purpose
registers, the lazy arithmetic flags, the other RFLAGS bits, the GS and FS bases.
Everything else (control and debug registers, MSRs, selectors, CPL) is an attribute.

The run loop looks up the translated block for RIP in a dictionary for the current
mode (CPL and exit-handler configuration), calls it, and repeats until the budget is
spent, `hlt` retires, or execution reaches the sentinel return address. Faults leave
the blocks as `ArchFault` exceptions with precise state; the exit handler, if any,
gets the first chance to handle them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from pvgen.runtime.x86 import flags as fl
from pvgen.runtime.x86 import system
from pvgen.runtime.x86.decode import GPR64, Insn
from pvgen.runtime.x86.faults import (
    ArchFault,
    DivideError,
    GeneralProtection,
    InvalidOpcode,
    PageFault,
)
from pvgen.runtime.x86.memory import M64, Memory, canonical
from pvgen.runtime.x86.semantics import Semantics
from pvgen.runtime.x86.sensitive import SensitiveInsn, classify
from pvgen.runtime.x86.translate import CLASSES, Block, InsnRef, Mode, Translator

# A non-canonical address: no code can live there, so reaching it can only mean the
# entry function returned.
RETURN_SENTINEL = 0xDEAD_BEEF_0000_0000

_REG_INDEX = {name: i for i, name in enumerate(GPR64)}
_ARGUMENT_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")

DEFAULT_CPUID: dict[tuple[int, int | None], tuple[int, int, int, int]] = {
    # Vendor "GenuineIntel", highest basic leaf 0x7.
    (0, None): (0x7, 0x756E_6547, 0x6C65_746E, 0x4965_6E69),
    # Family 6; FPU TSC MSR PAE CX8 APIC SEP PGE CMOV PAT CLFSH FXSR SSE SSE2 in EDX,
    # SSE3 CX16 POPCNT in ECX; bit 31 (hypervisor present) clear: bare metal.
    (1, None): (0x0006_06A0, 0x0000_0800, 0x0080_2201, 0x0789_A179),
    (7, 0): (0, 0, 0, 0),
    (0x8000_0000, None): (0x8000_0008, 0, 0, 0),
    # SYSCALL, NX, LM.
    (0x8000_0001, None): (0, 0, 0x1, 0x2010_0800),
}


class ExitHandler(Protocol):
    """What a hypervisor model plugs into `cpu.exit_handler`.

    `intercepts` names the sensitive kinds (see sensitive.KINDS) that go to
    `handle_exit` instead of running natively: an HVM model intercepts cpuid, hlt,
    vmcall, in/out, rdmsr/wrmsr, mov to cr... and emulates them. `handle_exit` must
    leave `cpu.rip` where execution resumes (usually `insn.next_rip`); it may call
    `cpu.execute_native(insn)`, change any state, or raise an `ArchFault`.

    `handle_fault` sees every fault first (a Xen PV model runs the kernel at CPL 1 or 3
    and emulates the privileged instructions whose #GP reaches it: `fault.insn` is the
    decoded instruction). Return True after fixing the state up (set `cpu.rip`) to go
    on running; False lets the fault end the run.
    """

    intercepts: frozenset[str]

    def handle_exit(self, cpu: Cpu, insn: SensitiveInsn) -> None: ...

    def handle_fault(self, cpu: Cpu, fault: ArchFault) -> bool: ...


@attrs.frozen
class RunResult:
    """How a run ended: `reason` is "return", "hlt", "limit" or "compat"."""

    reason: str
    rax: int
    instructions: int
    rip: int


class _Reselect(Exception):
    """The mode changed under a system instruction: continue with another cache."""

    def __init__(self, rip: int, retired: int) -> None:
        self.rip = rip
        self.retired = retired


class Cpu:
    """One x86-64 logical processor with its own flat memory."""

    def __init__(self, memory: Memory | None = None) -> None:
        self.memory = memory if memory is not None else Memory()
        self.state: list[Any] = [0] * 16 + [(fl.MAT, 0, 0, 0, 0), fl.RESERVED_ONE, 0, 0]
        self.rip = 0
        self._cpl = 0
        self.cr0 = 0x8005_0033  # PG WP NE ET MP PE
        self.cr2 = 0
        self.cr3 = 0
        self.cr4 = 0x0000_06A0  # PAE PGE OSFXSR OSXMMEXCPT
        self.cr8 = 0
        self.dr = [0, 0, 0, 0, 0, 0, 0xFFFF_0FF0, 0x400]
        self.msrs: dict[int, int] = {
            system.MSR_EFER: system.EFER_SCE | system.EFER_LME | system.EFER_LMA | system.EFER_NXE,
            system.MSR_STAR: 0,
            system.MSR_LSTAR: 0,
            system.MSR_CSTAR: 0,
            system.MSR_FMASK: 0,
            system.MSR_TSC_AUX: 0,
            system.MSR_APIC_BASE: 0xFEE0_0900,
            system.MSR_SYSENTER_CS: 0,
            system.MSR_SYSENTER_ESP: 0,
            system.MSR_SYSENTER_EIP: 0,
            system.MSR_PAT: 0x0007_0406_0007_0406,
        }
        self.kernel_gs_base = 0
        self.selectors = [0, 0x10, 0x18, 0, 0, 0]  # es cs ss ds fs gs (Linux __KERNEL_CS/DS)
        self.gdtr = (0, 0xFFFF)
        self.idtr = (0, 0xFFFF)
        self.ldtr = 0
        self.tr = 0
        self.cpuid: dict[tuple[int, int | None], tuple[int, int, int, int]] = dict(DEFAULT_CPUID)
        self.pmc = [0, 0, 0, 0]
        self.tsc_offset = 0
        self.tsc_per_instruction = 1
        self.io_read: Callable[[int, int], int] = lambda port, size: (1 << (8 * size)) - 1
        self.io_write: Callable[[int, int, int], None] = lambda port, size, value: None
        self.invlpg_log: list[int] = []
        self.halted = False
        self.sentinel = RETURN_SENTINEL
        self._handler: ExitHandler | None = None
        self._generation = 0
        self._caches: dict[Mode, dict[int, Any]] = {}
        self._partial: Counter[str] = Counter()
        self._partial_total = 0
        self.instructions = 0
        self.semantics = Semantics()
        self.translator = Translator(self.memory, self._namespace(), self.semantics)

    # -- registers and flags -------------------------------------------------------------

    def reg(self, name: str) -> int:
        return self.state[_REG_INDEX[name]]

    def set_reg(self, name: str, value: int) -> None:
        self.state[_REG_INDEX[name]] = value & M64

    @property
    def regs(self) -> dict[str, int]:
        return {name: self.state[i] for i, name in enumerate(GPR64)}

    @property
    def rflags(self) -> int:
        return fl.materialise(*self.state[16]) | self.state[17]

    @rflags.setter
    def rflags(self, value: int) -> None:
        self.state[16] = (fl.MAT, value & fl.ARITH, 0, 0, 0)
        self.state[17] = (value & ~fl.ARITH & ~(fl.RF | fl.VM) & 0x3F_FFFF) | fl.RESERVED_ONE

    @property
    def gs_base(self) -> int:
        return self.state[18]

    @gs_base.setter
    def gs_base(self, value: int) -> None:
        self.state[18] = value & M64

    @property
    def fs_base(self) -> int:
        return self.state[19]

    @fs_base.setter
    def fs_base(self, value: int) -> None:
        self.state[19] = value & M64

    @property
    def cpl(self) -> int:
        return self._cpl

    @cpl.setter
    def cpl(self, value: int) -> None:
        if value not in (0, 1, 2, 3):
            raise ValueError(f"CPL {value} is not 0..3")
        self._cpl = value
        self.memory.user_mode = value == 3

    @property
    def exit_handler(self) -> ExitHandler | None:
        return self._handler

    @exit_handler.setter
    def exit_handler(self, handler: ExitHandler | None) -> None:
        self._handler = handler
        self._generation += 1  # translations depend on what is intercepted

    def _swapgs(self) -> None:
        """swapgs at CPL 0, in line in translated code."""
        state = self.state
        state[18], self.kernel_gs_base = self.kernel_gs_base, state[18]

    def _selector(self, number: int) -> int:
        """A segment selector read (mov %ss, %ecx), in line in translated code."""
        return self.selectors[number]

    def _control(self, number: int) -> int:
        """A control register read at CPL 0 (mov %cr3, %rax), in line in translated code."""
        return int(getattr(self, f"cr{number}"))

    def mode(self) -> Mode:
        intercepts = self._handler.intercepts if self._handler is not None else frozenset()
        return Mode(self._cpl, frozenset(intercepts), self._generation)

    # -- MSRs and time ---------------------------------------------------------------------

    def read_msr(self, index: int, insn: SensitiveInsn | None = None) -> int:
        if index == system.MSR_GS_BASE:
            return self.state[18]
        if index == system.MSR_FS_BASE:
            return self.state[19]
        if index == system.MSR_KERNEL_GS_BASE:
            return self.kernel_gs_base
        if index == system.MSR_TSC:
            return self.read_tsc()
        if index not in self.msrs:
            raise GeneralProtection(insn.rip if insn else self.rip, 0, insn=insn, detail=f"rdmsr {index:#x}")
        return self.msrs[index]

    def write_msr(self, index: int, value: int, insn: SensitiveInsn | None = None) -> None:
        rip = insn.rip if insn else self.rip
        if index in (system.MSR_GS_BASE, system.MSR_FS_BASE, system.MSR_KERNEL_GS_BASE, system.MSR_LSTAR):
            if not canonical(value):
                raise GeneralProtection(rip, 0, insn=insn, detail=f"wrmsr {index:#x} non-canonical {value:#x}")
        if index == system.MSR_GS_BASE:
            self.state[18] = value
        elif index == system.MSR_FS_BASE:
            self.state[19] = value
        elif index == system.MSR_KERNEL_GS_BASE:
            self.kernel_gs_base = value
        elif index == system.MSR_TSC:
            self.tsc_offset = value - self.retired() * self.tsc_per_instruction
        elif index in self.msrs:
            self.msrs[index] = value
        else:
            raise GeneralProtection(rip, 0, insn=insn, detail=f"wrmsr {index:#x}")

    def read_tsc(self) -> int:
        """A deterministic time stamp: instructions retired so far, scaled, plus an offset."""
        return (self.tsc_offset + self.retired() * self.tsc_per_instruction) & M64

    # -- counters ------------------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        """Instructions retired so far, per class (see translate.CLASSES)."""
        total = Counter(self.translator.retired_counts)
        for block in self.translator.blocks + self.translator.retired_blocks:
            total.update(block.counts())
        total.update(self._partial)
        return Counter({cls: total.get(cls, 0) for cls in CLASSES})

    def retired(self) -> int:
        t = self.translator
        live = sum(block.retired() for block in t.blocks + t.retired_blocks)
        return t.retired_total + live + self._partial_total

    def cycles(self, costs: Mapping[str, float]) -> float:
        """Prices the retired instructions with a cost per class."""
        return sum(costs.get(cls, 0.0) * n for cls, n in self.counts().items())

    # -- translation ----------------------------------------------------------------------------

    def flush_translations(self) -> None:
        """Drops every translated block (after changing what they depend on by hand)."""
        for block in list(self.translator.blocks):
            block.invalidate()
        self._caches.clear()

    def execute_native(self, insn: SensitiveInsn) -> None:
        """Runs a sensitive instruction as bare metal would (for a handler's pass-through)."""
        system.execute(self, insn)

    def effective_address(self, mem: Any) -> int:
        return system.effective_address(self, mem)

    def _namespace(self) -> dict[str, Any]:
        memory = self.memory
        state = self.state

        def commit(ref: InsnRef, regs: tuple[int, ...], flags: Any) -> None:
            assert ref.block is not None
            for index, value in zip(ref.block.wregs, regs, strict=True):
                state[index] = value
            if flags is not None:
                state[16] = flags

        def read(addr: int, size: int, ref: InsnRef, regs: tuple[int, ...], flags: Any, it: int) -> int:
            try:
                return memory.load(addr, size, ref.insn.address)
            except ArchFault as fault:
                commit(ref, regs, flags)
                fault.origin, fault.iterations = ref, it
                raise

        def write(addr: int, value: int, size: int, ref: InsnRef, regs: tuple[int, ...], flags: Any, it: int) -> bool:
            try:
                return memory.store(addr, size, value, ref.insn.address)
            except ArchFault as fault:
                commit(ref, regs, flags)
                fault.origin, fault.iterations = ref, it
                raise

        def fault(vector: int, ref: InsnRef, regs: tuple[int, ...], flags: Any, it: int) -> None:
            commit(ref, regs, flags)
            rip = ref.insn.address
            error: ArchFault
            if vector == 0:
                error = DivideError(rip, detail=ref.insn.text)
            elif vector == 13:
                error = GeneralProtection(rip, 0, insn=ref.sensitive, detail=f"{ref.insn.text} at CPL {self._cpl}")
            else:
                error = InvalidOpcode(rip, detail=ref.insn.text)
            if error.insn is None and ref.sensitive is None:
                kind = classify(ref.insn)
                if kind is not None:
                    error.insn = SensitiveInsn(kind, ref.insn)
            error.origin, error.iterations = ref, it
            raise error

        def succeed(ref: InsnRef, it: int) -> None:
            assert ref.block is not None
            ref.block.hits[ref.exit] += 1
            if it:
                ref.block.hits[0] += it

        def run_system(ref: InsnRef, retired: int, it: int) -> tuple[int, int]:
            # What the translation depends on, compared without building a Mode each time.
            handler = self._handler
            before = (self._cpl, handler, handler.intercepts if handler is not None else None, self._generation)
            self.rip = ref.insn.address
            try:
                if ref.intercepted and self._handler is not None:
                    self._handler.handle_exit(self, ref.sensitive)
                else:
                    system.execute(self, ref.sensitive)
            except ArchFault as error:
                if error.origin is None:
                    error.origin, error.iterations = ref, it
                raise
            except system.Stop as stop:
                succeed(ref, it)
                stop.retired = retired
                raise
            succeed(ref, it)
            handler = self._handler
            after = (self._cpl, handler, handler.intercepts if handler is not None else None, self._generation)
            if after != before:
                raise _Reselect(self.rip, retired)
            return self.rip, retired

        def run_string(ref: InsnRef, retired: int, it: int) -> tuple[int, int]:
            try:
                system.execute_string(self, ref.insn)
            except ArchFault as error:
                error.origin, error.iterations = ref, it
                raise
            succeed(ref, it)
            return self.rip, retired

        def popf(value: int) -> int:
            system.load_flags(self, value, self._cpl)
            return value & fl.ARITH

        return {
            "R1": memory.readable[0],
            "R2": memory.readable[1],
            "R4": memory.readable[2],
            "R8": memory.readable[3],
            "W1": memory.writable[0],
            "W2": memory.writable[1],
            "W4": memory.writable[2],
            "W8": memory.writable[3],
            "RD": read,
            "WR": write,
            "FAULT": fault,
            "SYSTEM": run_system,
            "SWAPGS": self._swapgs,
            "SELECTOR": self._selector,
            "CONTROL": self._control,
            "STRING": run_string,
            "POPF": popf,
            "MAT": fl.materialise,
            "PARITY": fl.PARITY,
            "COND_L": fl.cond_l,
            "COND_GE": fl.cond_ge,
            "COND_LE": fl.cond_le,
            "COND_G": fl.cond_g,
            "DIVU": _divide_unsigned,
            "DIVS": _divide_signed,
            "ROTATE": _rotate,
            "DOUBLE_SHIFT": _double_shift,
        }

    def _cache(self) -> dict[int, Any]:
        mode = self.mode()
        cache = self._caches.get(mode)
        if cache is None:
            cache = self._caches[mode] = {}
        return cache

    def translate(self, rip: int) -> Block:
        """The block for `rip` in the current mode, translating it if needed."""
        cache = self._cache()
        block = self.translator.translate(rip, self.mode(), cache)
        cache[rip] = block.fn
        return block

    # -- running ---------------------------------------------------------------------------------

    def run(
        self,
        entry: int,
        stack_top: int,
        max_instructions: int = 10_000_000,
        args: tuple[int, ...] = (),
    ) -> RunResult:
        """Calls the function at `entry` with a fresh stack below `stack_top`.

        The return address is a sentinel, so the run ends when the function returns
        (reason "return", result in RAX), at `hlt`, or after about `max_instructions`
        (checked between blocks and on every loop iteration: a block may overshoot by
        at most its length). Arguments go in the System V registers.
        """
        if len(args) > len(_ARGUMENT_REGS):
            raise ValueError(f"at most {len(_ARGUMENT_REGS)} register arguments")
        for name, value in zip(_ARGUMENT_REGS, args, strict=False):
            self.set_reg(name, value)
        rsp = (stack_top - 8) & M64
        self.memory.write_u64(rsp, self.sentinel)
        self.state[4] = rsp
        self.rip = entry
        return self.resume(max_instructions)

    def resume(self, max_instructions: int = 10_000_000) -> RunResult:
        """Runs from `cpu.rip` (see `run`)."""
        self.halted = False
        left = max_instructions
        rip = self.rip
        state = self.state
        sentinel = self.sentinel
        reason = "limit"
        while True:
            get = self._cache().get
            try:
                while left > 0:
                    fn = get(rip)
                    if fn is None:
                        if rip == sentinel:
                            reason = "return"
                            break
                        self.rip = rip
                        fn = self.translate(rip).fn
                    rip, n = fn(state, left)
                    left -= n
                break
            except _Reselect as signal:
                rip = signal.rip
                left -= signal.retired
            except system.Stop as stop:
                left -= stop.retired
                rip = self.rip
                reason = stop.reason
                break
            except ArchFault as fault:
                left -= self._account_fault(fault)
                self.rip = fault.rip
                if isinstance(fault, PageFault):
                    self.cr2 = fault.address
                handler = self._handler
                if handler is None or not handler.handle_fault(self, fault):
                    self.instructions += max_instructions - left
                    self.translator.fold_retired()
                    raise
                rip = self.rip
        self.translator.fold_retired()
        self.rip = rip
        retired = max_instructions - left
        self.instructions += retired
        return RunResult(reason, state[0], retired, rip)

    def _account_fault(self, fault: ArchFault) -> int:
        ref = fault.origin
        if not isinstance(ref, InsnRef) or ref.block is None:
            return 0
        block = ref.block
        counts = block.prefix_counts(ref.position)
        retired = ref.position
        if fault.iterations:
            loop = block.prefix_counts(block.exit_positions[0])
            for cls, n in loop.items():
                counts[cls] += n * fault.iterations
            retired += block.exit_positions[0] * fault.iterations
        self._partial.update(counts)
        self._partial_total += retired
        return retired

    # -- convenience ----------------------------------------------------------------------------

    def block_source(self, rip: int) -> str:
        """The Python source of the block translated at `rip` (for debugging)."""
        for block in self.translator.blocks:
            if block.entry == rip:
                return block.source
        return self.translate(rip).source

    def decode(self, rip: int) -> Insn:
        return self.translator.decode_at(rip)


def _divide_unsigned(n: int, d: int, size: int) -> tuple[int, int] | None:
    if d == 0:
        return None
    q, r = divmod(n, d)
    if q >> (8 * size):
        return None
    return q, r


def _divide_signed(n: int, d: int, size: int) -> tuple[int, int] | None:
    bits = 8 * size
    d = d - ((d >> (bits - 1)) << bits)
    n = n - ((n >> (2 * bits - 1)) << (2 * bits))
    if d == 0:
        return None
    q = abs(n) // abs(d)
    if (n < 0) != (d < 0):
        q = -q
    r = n - q * d
    if not -(1 << (bits - 1)) <= q < 1 << (bits - 1):
        return None
    mask = (1 << bits) - 1
    return q & mask, r & mask


def _rotate(name: str, size: int, a: int, count: int, flags: int) -> tuple[int, int]:
    bits = 8 * size
    mask = (1 << bits) - 1
    if count == 0:
        return a, flags
    if name in ("rol", "ror"):
        n = count % bits
        if name == "rol":
            result = ((a << n) | (a >> (bits - n))) & mask
            cf = result & 1
            of = (result >> (bits - 1)) ^ cf
        else:
            result = ((a >> n) | (a << (bits - n))) & mask
            cf = result >> (bits - 1)
            of = ((result >> (bits - 1)) ^ (result >> (bits - 2))) & 1
        return result, (flags & ~(fl.CF | fl.OF)) | cf | (fl.OF if of else 0)
    n = count % (bits + 1)
    cf = flags & fl.CF
    if n == 0:
        return a, flags
    wide = (cf << bits) | a
    width = bits + 1
    wide_mask = (1 << width) - 1
    if name == "rcl":
        wide = ((wide << n) | (wide >> (width - n))) & wide_mask
        result, cf = wide & mask, wide >> bits
        of = (result >> (bits - 1)) ^ cf
    else:
        wide = ((wide >> n) | (wide << (width - n))) & wide_mask
        result, cf = wide & mask, wide >> bits
        of = ((result >> (bits - 1)) ^ (result >> (bits - 2))) & 1
    return result, (flags & ~(fl.CF | fl.OF)) | cf | (fl.OF if of else 0)


def _double_shift(name: str, size: int, dst: int, src: int, count: int, flags: int) -> tuple[int, int]:
    if count == 0:
        return dst, flags
    bits = 8 * size
    mask = (1 << bits) - 1
    if name == "shld":
        wide = (dst << bits) | src
        result = (wide << count >> bits) & mask
        cf = (dst >> (bits - count)) & 1 if count <= bits else 0
    else:
        wide = (src << bits) | dst
        result = (wide >> count) & mask
        cf = (dst >> (count - 1)) & 1 if count <= bits else 0
    of = ((result ^ dst) >> (bits - 1)) & 1
    out = fl.PARITY[result & 0xFF] | (fl.ZF if result == 0 else 0) | (fl.SF if result >> (bits - 1) else 0)
    return result, out | cf | (fl.OF if of else 0)
