"""Bare hardware: the environment of the native instance (no hypervisor, the kernel at cpl 0).

Every interruption goes through the IVT at cr.iva the way the processor delivers it; a `break`
is a Break Instruction fault like any other. With no IVT installed (cr.iva = 0) there is nowhere
to deliver to, and the run stops with the fault. External interrupts are delivered between blocks
when psr.i is set and one is pending above the TPR mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvgen.runtime.ia64.faults import Interruption, MachineCheck, Stop
from pvgen.runtime.ia64.state import CR_IVA, PSR_I

if TYPE_CHECKING:
    from pvgen.runtime.ia64.cpu import Cpu


class BareMetal:
    """The native environment: faults are delivered through the guest's own IVT."""

    name = "native"

    def attach(self, cpu: Cpu) -> None:
        self.cpu = cpu

    def on_break(self, cpu: Cpu, imm: int, iip: int, slot: int) -> int:
        fault = Interruption("break_instruction", iim=imm)
        fault.locate(iip, slot, None)
        return self.on_fault(cpu, fault)

    def on_fault(self, cpu: Cpu, fault: Interruption) -> int:
        if isinstance(fault, MachineCheck) or fault.vector is None or not cpu.cr[CR_IVA]:
            cpu.record_fault(fault, "fatal")
            raise Stop("fault", str(fault), ip=cpu.ip, fault=fault)
        cpu.record_fault(fault, "delivered")
        return cpu.deliver(fault)

    def on_attention(self, cpu: Cpu, key: int) -> int:
        if cpu.psr & PSR_I and cpu.deliverable_interrupt() is not None and cpu.cr[CR_IVA]:
            fault = Interruption("external_interrupt")
            fault.locate(key & -16, key & 15, None)
            cpu.record_fault(fault, "delivered")
            return cpu.deliver(fault)
        return key
