"""Bare metal: the kernel at CPL 0 owns the CPU; nothing is intercepted.

CPUID shows no hypervisor (leaf 1 ECX bit 31 clear, leaf 0x40000000 all zero), every
sensitive instruction runs natively, and a fault reaches the guest kernel's exception
handler (modelled by its __ex_table fixups; see base.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvgen.runtime.x86.hv.base import Environment, GuestImage

if TYPE_CHECKING:
    from pvgen.runtime.x86.cpu import Cpu


class BareMetal(Environment):
    """The CPU with no hypervisor."""

    name = "native"
    execution = "bare"
    cpl = 0

    def attach(self, cpu: Cpu, image: GuestImage) -> None:
        super().attach(cpu, image)
        leaf1 = cpu.cpuid[(1, None)]
        cpu.cpuid[(1, None)] = (leaf1[0], leaf1[1], leaf1[2] & ~(1 << 31), leaf1[3])
