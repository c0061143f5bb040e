"""Architectural faults and traps: the results the CPU model raises instead of running on.

Every fault is an `ArchFault` carrying the IA-32e exception vector, the error code the
hardware would push (or None), and the RIP the hardware would report: the faulting
instruction for faults, the next instruction for traps (`int n`, `int3`). A #PF also
carries the linear address that would go to CR2. A fault raised by a decoded
sensitive instruction (a #GP for `cli` at CPL 3, say) carries that instruction, so a
hypervisor model can emulate it without decoding the bytes again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from pvgen.runtime.x86.sensitive import SensitiveInsn

# Page-fault error code bits (SDM Vol. 3A §4.7).
PF_PRESENT = 1 << 0  # the page was present: a protection violation
PF_WRITE = 1 << 1
PF_USER = 1 << 2  # the access came from CPL 3
PF_FETCH = 1 << 4  # an instruction fetch


class ArchFault(Exception):
    """A fault or trap with its vector, error code and reported RIP."""

    vector: ClassVar[int] = -1
    mnemonic: ClassVar[str] = "#??"

    def __init__(
        self,
        rip: int,
        error_code: int | None = None,
        *,
        insn: SensitiveInsn | None = None,
        detail: str = "",
    ) -> None:
        self.rip = rip
        self.error_code = error_code
        self.insn = insn
        self.detail = detail
        # Where in a translated block the fault happened (set by the run loop's helpers).
        self.origin: object | None = None
        self.iterations = 0
        super().__init__(self._message())

    def _message(self) -> str:
        code = "" if self.error_code is None else f" error code {self.error_code:#x}"
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.mnemonic} at {self.rip:#x}{code}{detail}"


class DivideError(ArchFault):
    """#DE (vector 0): division by zero or a quotient that does not fit."""

    vector = 0
    mnemonic = "#DE"


class Breakpoint(ArchFault):
    """#BP (vector 3) from `int3`: a trap, so RIP is the next instruction."""

    vector = 3
    mnemonic = "#BP"


class InvalidOpcode(ArchFault):
    """#UD (vector 6): an encoding the model does not implement or the CPU rejects."""

    vector = 6
    mnemonic = "#UD"


class GeneralProtection(ArchFault):
    """#GP (vector 13): a privileged instruction above CPL 0, a non-canonical address."""

    vector = 13
    mnemonic = "#GP"


class PageFault(ArchFault):
    """#PF (vector 14): an unmapped or non-permitted access; `address` is what CR2 gets."""

    vector = 14
    mnemonic = "#PF"

    def __init__(self, rip: int, error_code: int, address: int, *, insn: SensitiveInsn | None = None) -> None:
        self.address = address
        super().__init__(rip, error_code, insn=insn, detail=f"address {address:#x}")


class SoftwareInterrupt(ArchFault):
    """`int n` (a trap with vector n, no error code); RIP is the next instruction.

    The model has no IDT, so the event is reported instead of delivered; a hypervisor
    model or the caller decides what it means (a lguest hypercall is `int $0x1f`).
    """

    mnemonic = "INT"

    def __init__(self, rip: int, number: int, *, insn: SensitiveInsn | None = None) -> None:
        self.number = number
        super().__init__(rip, None, insn=insn, detail=f"int {number:#x}")

    @property
    def vector(self) -> int:  # type: ignore[override]
        return self.number


FAULT_CLASSES: tuple[type[ArchFault], ...] = (
    DivideError,
    Breakpoint,
    InvalidOpcode,
    GeneralProtection,
    PageFault,
    SoftwareInterrupt,
)
