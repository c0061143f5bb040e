"""The IA-64 CPU model: architectural state, code caches, accounting and the run loop.

State the translated code touches directly is kept in lists (`g` general registers of the current
bank, `p` predicates, `b` branch registers, `ar` application registers) and in the read/write page
maps `RM`/`WM` (virtual 4 KiB page -> physical page views) that the load/store fast paths use; the
maps are caches of successful translations and are flushed whenever PSR.dt/cpl, a region register
or the TLB changes. Everything else (PSR, CRs, RRs, the TLB, the interrupt controller) is reached
through the methods of `system.SystemInstructions`, which check privilege and raise `Interruption`s.

Instruction fetch reads physical memory at IP (the model does not translate instruction
addresses; kernel text is identity-mapped in practice). Decoded bundles are cached per bundle
address and translated blocks per (bundle | slot); a write to a page holding translated code drops
both before the write lands.

The run loop calls blocks until the budget is spent, a stop address is reached or the environment
(bare hardware or a hypervisor model, see `native.py`, `xen.py`) ends the run. Faults go to the
environment, which delivers them through the IVT or handles them itself.
"""

from __future__ import annotations

from collections import Counter
from itertools import compress
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from pvgen.runtime.ia64 import cost
from pvgen.runtime.ia64.faults import Interruption, MachineCheck, Stop
from pvgen.runtime.ia64.memory import FAST_VIEWS, PAGE_SHIFT, PHYSICAL_MASK, Page, PhysicalMemory
from pvgen.runtime.ia64.state import (
    CR_ITV,
    CR_TPR,
    DEFAULT_CPUID,
    MASK64,
    PSR_BN,
    PSR_CPL,
    PSR_CPL_SHIFT,
    PSR_DT,
    PSR_I,
    PSR_PK,
)
from pvgen.runtime.ia64.system import SystemInstructions
from pvgen.runtime.ia64.tlb import Tlb
from pvgen.runtime.ia64.translate import CLASSES, HELPERS, MAX_BUNDLES, Block, Translator

from pvgen.ia64.decoder import decode_word
from pvgen.ia64.insn import AnyInstruction

if TYPE_CHECKING:
    from collections.abc import Callable

_CHUNK = range(512)
_BITS_OF_BYTE = tuple(tuple(bool(byte >> n & 1) for n in range(8)) for byte in range(256))
_POWERS_OF_TWO = tuple(1 << n for n in range(64))
_MAX_BLOCK = 3 * MAX_BUNDLES
#: Faults kept in the log (a run can take millions; the counts are kept for all of them).
FAULT_LOG_LIMIT = 200


class Environment(Protocol):
    """What runs around the CPU: bare hardware (native.BareMetal) or a hypervisor (xen.XenModel)."""

    name: str

    def attach(self, cpu: Cpu) -> None: ...

    def on_break(self, cpu: Cpu, imm: int, iip: int, slot: int) -> int:
        """A `break imm` executed at (iip, slot): returns the key (address | slot) to continue at."""
        ...

    def on_fault(self, cpu: Cpu, fault: Interruption) -> int:
        """Any other interruption: returns the key to continue at, or raises Stop."""
        ...

    def on_attention(self, cpu: Cpu, key: int) -> int:
        """Between blocks, when `cpu.attention` was set (interrupts, timers): the key to continue at."""
        ...


@attrs.frozen
class FaultRecord:
    """One interruption the run took, and what handled it."""

    name: str
    vector: int | None
    iip: int | None
    slot: int
    ifa: int | None
    handled: str  # delivered | emulated | hyperprivop | reflected | filled | fatal

    def describe(self) -> str:
        where = f" at {self.iip:#x}.{self.slot}" if self.iip is not None else ""
        address = f" ifa {self.ifa:#x}" if self.ifa is not None else ""
        return f"{self.name}{where}{address} -> {self.handled}"


class BlockCache(dict[int, "Callable[[], int]"]):
    """Translated block functions by key; a miss translates (or installs a stop)."""

    def __init__(self, cpu: Cpu, nat_aware: bool) -> None:
        super().__init__()
        self.cpu = cpu
        self.nat_aware = nat_aware

    def __missing__(self, key: int) -> Callable[[], int]:
        fn = self.cpu.translate(key, self.nat_aware)
        self[key] = fn
        return fn


class Cpu(SystemInstructions):
    """One IA-64 processor: registers, TLB, physical memory, translated-code caches."""

    def __init__(self, memory: PhysicalMemory | None = None, env: Environment | None = None) -> None:
        self.mem = memory if memory is not None else PhysicalMemory()
        self.mem.on_code_write = self.invalidate_code_page
        self.g = [0] * 128
        self.nat = 0  # NaT bits of g (bit n = rn)
        self.bank = [0] * 16  # the inactive bank of r16-r31
        self.bank_nat = 0
        self.p = [False] * 64
        self.p[0] = True
        self.b = [0] * 8
        self.ar = [0] * 128
        self.cr = [0] * 128
        self.rr = [(n << 8) | (14 << 2) for n in range(8)]  # rid = region number, 16 KiB pages
        self.indirect: dict[str, dict[int, int]] = {f: {} for f in ("pkr", "dbr", "ibr", "pmc", "pmd")}
        self.cpuid = list(DEFAULT_CPUID)
        self.psr = 0
        self.cpl = 0
        self.cfm = 0
        self.tlb = Tlb()
        self.RM: dict[int, Page] = {}
        self.WM: dict[int, Page] = {}
        #: Xen: virtual psr.dt = 0 while the machine translates (only pinned registers map; rest identity).
        self.metaphysical = False
        self.ip = 0
        self.attention = False
        self.itc_base = 0
        self.pending: set[int] = set()
        self.in_service: list[int] = []
        self.cr[CR_ITV] = 1 << 16  # timer masked
        self.cr[CR_TPR] = 1 << 16  # all external interrupts masked (mmi)
        # Accounting.
        self.blocks: list[Block] = []
        self.partial = [0] * len(CLASSES)
        self.events: Counter[str] = Counter()
        self.extra_cycles = 0
        self.interruptions_taken = 0
        self.fault_counts: Counter[str] = Counter()
        self.fault_log: list[FaultRecord] = []
        # Code caches.
        self.decoded: dict[int, tuple[int, tuple[AnyInstruction, ...]]] = {}
        self.page_keys: dict[int, set[int]] = {}
        self.stops: dict[int, str] = {}
        self.translator = Translator(self)
        self.fast = BlockCache(self, False)
        self.careful = BlockCache(self, True)
        if env is None:
            from pvgen.runtime.ia64.native import BareMetal

            env = BareMetal()
        self.env = env
        env.attach(self)

    # -- translation and code caches ----------------------------------------------------------------

    def fetch(self, address: int) -> tuple[int, tuple[AnyInstruction, ...]]:
        """The decoded bundle at a physical address (cached per bundle address)."""
        decoded = self.decoded.get(address)
        if decoded is None:
            page = self.mem.page((address & PHYSICAL_MASK) >> PAGE_SHIFT)
            if page is None:
                raise MachineCheck(address, "instruction fetch from missing memory")
            offset = (address & 0xFFF) >> 3
            word = page[3][offset] | page[3][offset + 1] << 64 if FAST_VIEWS else self.mem.read_uint(address, 16)
            decoded = self.decoded[address] = decode_word(word)
        return decoded

    def next_key(self, address: int, slot: int) -> int:
        """The instruction after (address, slot): the next slot, or the next bundle after the last."""
        _template, insns = self.fetch(address)
        return address + 16 if slot >= len(insns) - 1 else address | (slot + 1)

    def translate(self, key: int, nat_aware: bool) -> Callable[[], int]:
        name = self.stops.get(key)
        if name is not None:
            return self._stop_block(key, name)
        block = self.translator.build(key, nat_aware)
        self.blocks.append(block)
        for pfn in block.pages:
            self.page_keys.setdefault(pfn, set()).add(key)
            if pfn not in self.mem.code_pages:
                self.mem.code_pages.add(pfn)
                self.WM.clear()  # a cached writable view of this page would bypass invalidation
        return block.fn

    def block_environment(self, block: Block) -> dict[str, Any]:
        """The names a generated block is made with (see translate._Writer.source)."""

        def fault(f: Interruption, k: int) -> None:
            item = block.items[k]
            f.locate(item.address, item.slot, item.insn)
            partial = self.partial
            for index, count in enumerate(block.prefix[k]):
                partial[index] += count

        return {
            "g": self.g,
            "p": self.p,
            "b": self.b,
            "ar": self.ar,
            "cpu": self,
            "RM": self.RM,
            "WM": self.WM,
            "ld": self.load,
            "st": self.store,
            "brk": self.break_instruction,
            "ex": block.ex,
            "fault": fault,
            **HELPERS,
        }

    def _stop_block(self, key: int, name: str) -> Callable[[], int]:
        def stop() -> int:
            raise Stop("stop", name, ip=key)

        return stop

    def add_stop(self, address: int, name: str) -> None:
        """Ends the run when execution reaches `address` (an exit sentinel, pvgen_exit, ...)."""
        self.stops[address] = name
        self.fast.pop(address, None)
        self.careful.pop(address, None)

    def invalidate_code_page(self, pfn: int) -> None:
        """Drops decoded bundles and translated blocks of a physical page (it is being written)."""
        for key in self.page_keys.pop(pfn, ()):
            self.fast.pop(key, None)
            self.careful.pop(key, None)
        base = pfn << PAGE_SHIFT
        for address in range(base, base + (1 << PAGE_SHIFT), 16):
            self.decoded.pop(address, None)
        self.mem.code_pages.discard(pfn)
        self.events["code_invalidation"] += 1

    # -- registers ----------------------------------------------------------------------------------

    def set_psr(self, value: int) -> None:
        old = self.psr
        self.psr = value
        changed = old ^ value
        if not changed:
            return
        if changed & PSR_BN:
            self._swap_bank()
        if changed & (PSR_DT | PSR_CPL | PSR_PK):
            self.flush_data_maps()
        self.cpl = (value >> PSR_CPL_SHIFT) & 3
        if value & PSR_I and changed & PSR_I:
            self.attention = True

    def _swap_bank(self) -> None:
        g = self.g
        current = g[16:32]
        g[16:32] = self.bank
        self.bank[:] = current
        current_nat = (self.nat >> 16) & 0xFFFF
        self.nat = (self.nat & ~(0xFFFF << 16)) | (self.bank_nat << 16)
        self.bank_nat = current_nat
        if self.nat:
            self.attention = True

    def set_nat(self, number: int, value: bool = True) -> None:
        if value:
            self.nat |= 1 << number
            self.attention = True
        else:
            self.nat &= ~(1 << number)

    def read_pr(self) -> int:
        return sum(compress(_POWERS_OF_TWO, self.p))

    def write_pr(self, value: int, mask: int) -> None:
        p = self.p
        if mask & MASK64 >= MASK64 - 1:
            bits = _BITS_OF_BYTE
            p[:] = [b for byte in (value & MASK64).to_bytes(8, "little") for b in bits[byte]]
            p[0] = True
            return
        for n in range(1, 64):
            if mask >> n & 1:
                p[n] = bool(value >> n & 1)

    def flush_data_maps(self) -> None:
        self.RM.clear()
        self.WM.clear()

    def forget_data_range(self, va: int, ps: int) -> None:
        """Drops the cached pages of [va, va + 2**ps) (a purge): all of them if the range is large."""
        if ps > 20:
            self.flush_data_maps()
            return
        first = (va & ~((1 << ps) - 1)) >> PAGE_SHIFT
        for page in range(first, first + max(1, 1 << (ps - PAGE_SHIFT))):
            self.RM.pop(page, None)
            self.WM.pop(page, None)

    # -- accounting -----------------------------------------------------------------------------------

    def charge(self, event: str, cycles: int | None = None) -> None:
        self.events[event] += 1
        self.extra_cycles += cost.event_cycles(event) if cycles is None else cycles

    def record_fault(self, fault: Interruption, handled: str) -> None:
        self.fault_counts[fault.kind] += 1
        if len(self.fault_log) < FAULT_LOG_LIMIT:
            record = FaultRecord(fault.name, fault.vector, fault.iip, fault.slot, fault.ifa, handled)
            self.fault_log.append(record)

    def class_counts(self) -> dict[str, int]:
        totals = list(self.partial)
        for block in self.blocks:
            for runs, counts in zip(block.ex, block.exits, strict=True):
                if runs:
                    for index, count in enumerate(counts):
                        totals[index] += runs * count
        return dict(zip(CLASSES, totals, strict=True))

    def instructions(self) -> int:
        return sum(self.class_counts().values())

    def steps(self) -> int:
        """What the run budget counts: retired instructions and interruptions taken."""
        return self.instructions() + self.interruptions_taken

    def cycles(self) -> int:
        figures = cost.class_cycles()
        return sum(figures[name] * count for name, count in self.class_counts().items()) + self.extra_cycles

    # -- running --------------------------------------------------------------------------------------

    def run(self, max_instructions: int = 10_000_000) -> Stop:
        """Runs from `self.ip` until a stop, a fatal fault or the budget; returns the Stop.

        The budget bounds retired instructions plus interruptions taken, so a fault loop that
        retires nothing (a handler that faults on its first instruction) still ends."""
        try:
            self._loop(self.ip, max_instructions)
        except Stop as stop:
            self.ip = stop.ip
            return stop
        raise AssertionError("the run loop only ends with Stop")

    def _handle(self, fault: Interruption) -> int:
        """The environment's answer to a fault; a fault while handling one ends the run."""
        try:
            return self.env.on_fault(self, fault)
        except Interruption as nested:
            self.record_fault(nested, "fatal")
            raise Stop("fault", f"{nested} while handling {fault}", ip=self.ip, fault=nested) from None

    def _loop(self, key: int, limit: int) -> None:
        # A block retires at most 3 * MAX_BUNDLES instructions, so the exact (costlier) count of
        # steps is taken only when the blocks run since the last count could have reached the limit.
        done, since = self.steps(), 0
        while True:
            if self.attention:
                self.attention = False
                key = self.env.on_attention(self, key)
            blocks = self.careful if self.nat else self.fast
            chunk = _CHUNK if (limit - done) // _MAX_BLOCK >= since + len(_CHUNK) else range(1)
            steps = 0
            try:
                for steps in chunk:  # noqa: B007 - the count is used after the loop
                    key = blocks[key]()
                    if self.attention:
                        break
            except Interruption as fault:
                self.interruptions_taken += 1
                done += 1
                if done >= limit:
                    self.ip = (fault.iip or 0) | fault.slot
                    self.record_fault(fault, "budget")
                    raise Stop("limit", f"{self.steps()} steps", ip=self.ip, fault=fault) from None
                key = self._handle(fault)
            self.ip = key
            since += steps + 1
            if since * _MAX_BLOCK >= limit - done or since >= 8192:
                done = self.steps()
                since = 0
                if done >= limit:
                    raise Stop("limit", f"{done} steps", ip=key)
                self.check_timer()

    # -- convenience for loaders and tests ------------------------------------------------------------

    def gr(self, number: int) -> int:
        return self.g[number]

    def set_gr(self, number: int, value: int) -> None:
        self.g[number] = value & MASK64

    def boot(self, entry: int, psr: int, *, cpl: int = 0) -> None:
        """Starts at `entry` with `psr` (cpl field replaced by `cpl`)."""
        self.set_psr((psr & ~PSR_CPL) | (cpl << PSR_CPL_SHIFT))
        self.ip = entry


__all__ = ["BlockCache", "Cpu", "Environment", "FaultRecord"]
