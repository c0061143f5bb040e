"""What every execution environment shares: the guest image's view, counters, guest exceptions.

An environment (bare metal, a KVM-style HVM hypervisor, Xen PV) plugs into the CPU model
as its exit handler (cpu.py's `ExitHandler`): it names the sensitive instruction kinds it
intercepts, emulates them, handles the faults the deprivileged guest takes, and counts
what it did in `Stats`, with cycles priced from costs.py.

The guest kernel's own exception handling is modelled here, the same way everywhere:
a fault at an instruction listed in the image's `__ex_table` ({insn, fixup, handler}
quads, as the guest library emits them) is fixed up as Linux's fixup_exception would;
any other guest exception ends the run.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from pvgen.runtime.x86.faults import ArchFault
from pvgen.runtime.x86.hv import costs
from pvgen.runtime.x86.sensitive import SensitiveInsn

if TYPE_CHECKING:
    from pvgen.runtime.x86.cpu import Cpu

START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
PAGE = 4096
M64 = (1 << 64) - 1
X86_EFLAGS_IF = 0x200

# Fixup handlers of the guest library's __ex_table entries (guest/native.c).
EX_HANDLER_DEFAULT = 0
EX_HANDLER_RDMSR_UNSAFE = 1
EX_HANDLER_WRMSR_UNSAFE = 2


@attrs.frozen
class ExEntry:
    insn: int
    fixup: int
    handler: int


@attrs.frozen
class GuestImage:
    """The parts of a loaded image the environments use."""

    path: Path
    entry: int
    symbols: dict[str, int]
    segments: tuple[tuple[int, int, int], ...]  # (address, size, perms)
    xen_notes: dict[int, bytes] = attrs.Factory(dict)  # XEN_ELFNOTE_* type -> descriptor
    ex_table: dict[int, ExEntry] = attrs.Factory(dict)  # by faulting instruction

    @property
    def end(self) -> int:
        """The first address past the image."""
        return max((address + size for address, size, _ in self.segments), default=0)

    def note_address(self, note: int) -> int | None:
        data = self.xen_notes.get(note)
        if data is None or len(data) < 8:
            return None
        return int(struct.unpack_from("<Q", data)[0])

    def symbol_at(self, address: int) -> str:
        """'name+0xoff' for the nearest symbol at or below an address (for messages)."""
        best = None
        for name, value in self.symbols.items():
            if value <= address and (best is None or value > best[1]):
                best = (name, value)
        if best is None:
            return f"{address:#x}"
        return best[0] if best[1] == address else f"{best[0]}+{address - best[1]:#x}"


@attrs.define
class Stats:
    """What an environment did, for the run report."""

    vm_exits: Counter[str] = attrs.Factory(Counter)
    traps: Counter[str] = attrs.Factory(Counter)
    hypercalls: Counter[str] = attrs.Factory(Counter)
    guest_exceptions: Counter[str] = attrs.Factory(Counter)
    events_delivered: int = 0
    events_raised: int = 0
    cycles: dict[str, float] = attrs.Factory(dict)  # by source: vm_exit, hypercall, trap, event, exception
    # Retired instructions whose native price an exit or trap replaces (by kind).
    replaced: Counter[str] = attrs.Factory(Counter)

    def copy(self) -> Stats:
        return Stats(
            Counter(self.vm_exits),
            Counter(self.traps),
            Counter(self.hypercalls),
            Counter(self.guest_exceptions),
            self.events_delivered,
            self.events_raised,
            dict(self.cycles),
            Counter(self.replaced),
        )

    def since(self, before: Stats) -> Stats:
        return Stats(
            self.vm_exits - before.vm_exits,
            self.traps - before.traps,
            self.hypercalls - before.hypercalls,
            self.guest_exceptions - before.guest_exceptions,
            self.events_delivered - before.events_delivered,
            self.events_raised - before.events_raised,
            {k: v - before.cycles.get(k, 0.0) for k, v in self.cycles.items() if v != before.cycles.get(k, 0.0)},
            self.replaced - before.replaced,
        )


class GuestCrash(Exception):
    """The guest took an exception nothing handles (Xen would crash the domain)."""

    def __init__(self, fault: ArchFault, where: str) -> None:
        self.fault = fault
        self.where = where
        super().__init__(f"{fault} in {where}")


class Environment:
    """The base of the execution environments: no intercepts, guest exceptions via __ex_table."""

    name: ClassVar[str] = "native"
    execution: ClassVar[str] = "bare"
    cpl: ClassVar[int] = 0

    def __init__(self) -> None:
        self.intercepts: frozenset[str] = frozenset()
        self.stats = Stats()
        self.image: GuestImage | None = None
        self.console: list[str] = []
        self.halted_reason: str | None = None
        self.fault_prefix: Counter[int] = Counter()  # see note_fault_prefix
        self.emulated: Counter[int] = Counter()  # faulting instructions the environment emulated, by address

    # -- set-up -----------------------------------------------------------------------------------

    def attach(self, cpu: Cpu, image: GuestImage) -> None:
        """Takes over the CPU: privilege, identification, the environment's memory."""
        self.image = image
        cpu.cpl = self.cpl
        cpu.exit_handler = self

    def boot_entry(self) -> str | None:
        """The symbol the environment enters the kernel at, when it is not the plain entry (Xen PV)."""
        return None

    def options(self) -> dict[str, Any]:
        """The environment's settings, for the report."""
        return {}

    # -- guest state the runtime asks about --------------------------------------------------------

    def irqs_enabled(self, cpu: Cpu) -> bool:
        """Whether the guest's interrupts (or events) are enabled: RFLAGS.IF on hardware."""
        return bool(cpu.rflags & X86_EFLAGS_IF)

    def next_deadline(self, cpu: Cpu) -> int | None:
        """Instructions until the environment wants control back (a timer), or None."""
        return None

    def tick(self, cpu: Cpu) -> None:
        """Called when a deadline is reached: raise timer events, deliver what is pending."""

    # -- the ExitHandler protocol --------------------------------------------------------------------

    def handle_exit(self, cpu: Cpu, insn: SensitiveInsn) -> None:
        cpu.execute_native(insn)

    def handle_fault(self, cpu: Cpu, fault: ArchFault) -> bool:
        self.note_fault_prefix(fault)
        return self.fault(cpu, fault)

    def fault(self, cpu: Cpu, fault: ArchFault) -> bool:
        """What the environment does with a guest fault; True to go on running."""
        return self.deliver_to_guest(cpu, fault, costs.EXCEPTION_DELIVERY)

    def note_fault_prefix(self, fault: ArchFault) -> None:
        """Counts, per address, the instructions a fault's block retired before it.

        The CPU model counts them by class only (cpu.py's _account_fault); the fault
        carries where in its block it happened, so the same prefix is credited here.
        """
        ref = fault.origin
        block = getattr(ref, "block", None)
        if block is None:
            return
        position = getattr(ref, "position", 0)
        for insn in block.insns[:position]:
            self.fault_prefix[insn.address] += 1
        if fault.iterations and block.exit_positions:
            for insn in block.insns[: block.exit_positions[0]]:
                self.fault_prefix[insn.address] += fault.iterations

    # -- shared helpers ----------------------------------------------------------------------------

    def deliver_to_guest(self, cpu: Cpu, fault: ArchFault, cost: float) -> bool:
        """The guest kernel's exception handler: an __ex_table fixup, or False (unhandled)."""
        if self.image is None:
            return False
        entry = self.image.ex_table.get(fault.rip)
        if entry is None:
            return False
        if entry.handler == EX_HANDLER_RDMSR_UNSAFE:
            cpu.set_reg("rax", 0)
            cpu.set_reg("rdx", 0)
        cpu.rip = entry.fixup
        self.stats.guest_exceptions[fault.mnemonic] += 1
        self.charge("exception", cost)
        return True

    def charge(self, source: str, cycles: float) -> None:
        self.stats.cycles[source] = self.stats.cycles.get(source, 0.0) + cycles


def kernel_va(physical: int) -> int:
    """The kernel-map address of a guest-physical address (the inverse of the guest's __pa)."""
    return (physical + START_KERNEL_MAP) & M64


def guest_physical(va: int) -> int:
    return (va - START_KERNEL_MAP) & M64


def read_u64(cpu: Cpu, address: int) -> int:
    return int.from_bytes(cpu.memory.read(address, 8), "little")


def write_struct(cpu: Cpu, address: int, fmt: str, *values: Any) -> None:
    cpu.memory.write(address, struct.pack(fmt, *values))


def read_struct(cpu: Cpu, address: int, fmt: str) -> tuple[Any, ...]:
    return struct.unpack(fmt, cpu.memory.read(address, struct.calcsize(fmt)))


def counter_dict(counter: Mapping[str, float]) -> dict[str, float]:
    return {key: counter[key] for key in sorted(counter) if counter[key]}
