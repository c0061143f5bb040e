"""IA-64 interruptions the CPU model raises: faults carry their IVT vector, IIP/slot and IFA.

A fault is never a Python error of the model: every architectural exception is an `Interruption`
with the vector offset into the interruption vector table (IVA-based, SDM Vol. 2 §5.7), the
interruption status (ISR bits), the faulting data address for translation faults (IFA), the
break immediate (IIM), and the location (`iip` = bundle address, `slot` = ISR.ei). The block that
raised it fills in the location and the decoded instruction, so a hypervisor model can emulate it
without decoding the bundle again. `Stop` ends a run (exit reached, shutdown, domain crash).
"""

from __future__ import annotations

from typing import Final

from pvgen.ia64.insn import AnyInstruction

#: IVT offsets (Linux ivt.S entry order; 64-bundle entries below 0x5000, 16-bundle entries above).
VECTORS: Final[dict[str, int]] = {
    "vhpt_translation": 0x0000,
    "instruction_tlb": 0x0400,
    "data_tlb": 0x0800,
    "alt_instruction_tlb": 0x0C00,
    "alt_data_tlb": 0x1000,
    "data_nested_tlb": 0x1400,
    "instruction_key_miss": 0x1800,
    "data_key_miss": 0x1C00,
    "dirty_bit": 0x2000,
    "instruction_access_bit": 0x2400,
    "data_access_bit": 0x2800,
    "break_instruction": 0x2C00,
    "external_interrupt": 0x3000,
    "page_not_present": 0x5000,
    "key_permission": 0x5100,
    "instruction_access_rights": 0x5200,
    "data_access_rights": 0x5300,
    "general_exception": 0x5400,
    "disabled_fp_register": 0x5500,
    "nat_consumption": 0x5600,
    "speculation": 0x5700,
    "debug": 0x5900,
    "unaligned_reference": 0x5A00,
    "unsupported_data_reference": 0x5B00,
}
VECTOR_NAMES: Final[dict[int, str]] = {offset: name for name, offset in VECTORS.items()}

#: Vectors that report a data address in IFA (and ITIR/IHA for the TLB ones).
DATA_ADDRESS_VECTORS: Final = frozenset(
    {"data_tlb", "alt_data_tlb", "data_nested_tlb", "dirty_bit", "data_access_bit", "page_not_present"}
    | {"data_access_rights", "unaligned_reference", "data_key_miss", "key_permission"}
)
TLB_MISS_VECTORS: Final = frozenset({"data_tlb", "alt_data_tlb", "data_nested_tlb"})

# ISR bits (SDM Vol. 2 §3.3.5.5).
ISR_X: Final = 1 << 32
ISR_W: Final = 1 << 33
ISR_R: Final = 1 << 34
ISR_NA: Final = 1 << 35
ISR_EI_SHIFT: Final = 41

# General Exception codes, ISR.code{7:4}.
GE_ILLEGAL_OPERATION: Final = 0x00
GE_PRIVILEGED_OPERATION: Final = 0x10
GE_PRIVILEGED_REGISTER: Final = 0x20
GE_RESERVED_REGISTER_FIELD: Final = 0x30
GE_CODES: Final[dict[int, str]] = {
    GE_ILLEGAL_OPERATION: "Illegal Operation",
    GE_PRIVILEGED_OPERATION: "Privileged Operation",
    GE_PRIVILEGED_REGISTER: "Privileged Register",
    GE_RESERVED_REGISTER_FIELD: "Reserved Register/Field",
}


class Interruption(Exception):
    """One IA-64 interruption (fault, trap or external interrupt) as the hardware would raise it."""

    def __init__(
        self,
        kind: str,
        *,
        ifa: int | None = None,
        isr: int = 0,
        iim: int | None = None,
        detail: str = "",
    ) -> None:
        self.kind = kind
        self.vector = VECTORS.get(kind)
        self.ifa = ifa
        self.isr = isr
        self.iim = iim
        self.detail = detail
        self.iip: int | None = None
        self.slot = 0
        self.insn: AnyInstruction | None = None
        super().__init__(kind)

    def locate(self, iip: int, slot: int, insn: AnyInstruction | None) -> None:
        """Records where the fault happened (only the first, innermost location counts)."""
        if self.iip is None:
            self.iip, self.slot, self.insn = iip, slot, insn

    @property
    def name(self) -> str:
        """A readable name: "Privileged Operation fault", "Data TLB fault", ..."""
        if self.kind == "general_exception":
            return GE_CODES.get(self.isr & 0xF0, "General Exception") + " fault"
        if self.kind == "break_instruction":
            return f"Break Instruction fault (imm {self.iim:#x})" if self.iim is not None else "Break Instruction fault"
        words = self.kind.replace("_", " ").replace("tlb", "TLB").replace("nat ", "NaT ")
        return words[0].upper() + words[1:] + " fault"

    def __str__(self) -> str:
        where = f" at {self.iip:#x} slot {self.slot}" if self.iip is not None else ""
        vector = f" (vector {self.vector:#06x})" if self.vector is not None else ""
        address = f", ifa {self.ifa:#x}" if self.ifa is not None else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.name}{vector}{where}{address}{detail}"


def general_exception(code: int, detail: str = "") -> Interruption:
    return Interruption("general_exception", isr=code, detail=detail)


def illegal_operation(detail: str = "") -> Interruption:
    return general_exception(GE_ILLEGAL_OPERATION, detail)


def privileged_operation(detail: str = "") -> Interruption:
    return general_exception(GE_PRIVILEGED_OPERATION, detail)


def privileged_register(detail: str = "") -> Interruption:
    return general_exception(GE_PRIVILEGED_REGISTER, detail)


def reserved_field(detail: str = "") -> Interruption:
    return general_exception(GE_RESERVED_REGISTER_FIELD, detail)


def nat_consumption(detail: str = "") -> Interruption:
    return Interruption("nat_consumption", isr=0x10, detail=detail)


class MachineCheck(Interruption):
    """An access to physical memory that does not exist: firmware (MCA) territory, never delivered."""

    def __init__(self, address: int, detail: str = "") -> None:
        super().__init__("machine_check", ifa=address, detail=detail or f"no memory at physical {address:#x}")

    @property
    def name(self) -> str:
        return "Machine check"


class Stop(Exception):
    """Ends `Cpu.run`: `reason` is exit, stop, shutdown, crash or fault; `fault` the unhandled one."""

    def __init__(self, reason: str, detail: str = "", *, ip: int = 0, fault: Interruption | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.ip = ip
        self.fault = fault
        super().__init__(f"{reason}: {detail}" if detail else reason)
