"""An HVM guest under a KVM-style hypervisor (VMX with EPT): trap-and-emulate by VM exit.

The guest kernel runs at CPL 0. The instructions VMX is configured to exit on go to
`handle_exit`, which emulates them and charges a VM exit (costs.py): cpuid, hlt,
vmcall/vmmcall, in/out, rdmsr/wrmsr (except the MSRs in KVM's pass-through bitmap),
mov to CR0/CR4, mov to/from debug registers, wbinvd, rdpmc, and with `ept=False`
(shadow paging) CR3 accesses and invlpg too. cli/sti/pushf/popf never exit: VMX
virtualises RFLAGS.IF in hardware. The CPU model intercepts by instruction kind, so
kinds VMX only sometimes exits on (MSRs, CR8, CR3 with EPT) are executed natively
here, without a charge.

Paravirtual interfaces: CPUID 0x40000000 = "KVMKVMKVM\\0\\0\\0", features in 0x40000001;
hypercalls by vmcall (number in RAX, arguments RBX RCX RDX RSI, result in RAX); kvmclock
and steal time registered by MSR at guest-physical addresses (kernel map: gpa = va -
0xffffffff80000000), written by the model in the pvclock and kvm_steal_time layouts.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from pvgen.runtime.x86 import system
from pvgen.runtime.x86.faults import ArchFault, GeneralProtection
from pvgen.runtime.x86.hv import costs
from pvgen.runtime.x86.hv.base import Environment, GuestImage, kernel_va
from pvgen.runtime.x86.sensitive import SensitiveInsn

if TYPE_CHECKING:
    from pvgen.runtime.x86.cpu import Cpu

KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
KVM_CPUID_FEATURES = 0x4000_0001
# CLOCKSOURCE, NOP_IO_DELAY, CLOCKSOURCE2, STEAL_TIME, PV_EOI, PV_UNHALT, PV_TLB_FLUSH, stable bit.
KVM_FEATURES = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 9) | (1 << 24)

MSR_KVM_WALL_CLOCK = 0x11
MSR_KVM_SYSTEM_TIME = 0x12
MSR_KVM_WALL_CLOCK_NEW = 0x4B56_4D00
MSR_KVM_SYSTEM_TIME_NEW = 0x4B56_4D01
MSR_KVM_ASYNC_PF_EN = 0x4B56_4D02
MSR_KVM_STEAL_TIME = 0x4B56_4D03
MSR_KVM_PV_EOI_EN = 0x4B56_4D04
MSR_KVM_POLL_CONTROL = 0x4B56_4D05
# MSRs in KVM's pass-through bitmap: guest accesses do not exit.
PASS_THROUGH_MSRS = frozenset(
    {
        system.MSR_FS_BASE,
        system.MSR_GS_BASE,
        system.MSR_KERNEL_GS_BASE,
        system.MSR_SYSENTER_CS,
        system.MSR_SYSENTER_ESP,
        system.MSR_SYSENTER_EIP,
    }
)

KVM_HC_VAPIC_POLL_IRQ = 1
KVM_HC_FEATURES = 3
KVM_HC_KICK_CPU = 5
KVM_HC_CLOCK_PAIRING = 9
KVM_HC_SEND_IPI = 10
KVM_HC_SCHED_YIELD = 11
HYPERCALL_NAMES = {
    1: "vapic_poll_irq",
    3: "features",
    5: "kick_cpu",
    9: "clock_pairing",
    10: "send_ipi",
    11: "sched_yield",
}
KVM_ENOSYS = 1000
KVM_EOPNOTSUPP = 95

PVCLOCK_TSC_STABLE_BIT = 1
# The TSC counts instructions (cpu.read_tsc); at a nominal 2 GHz, ns = tsc / 2.
TSC_TO_SYSTEM_MUL = 0x8000_0000
TSC_SHIFT = 0


class Kvm(Environment):
    """A KVM-style HVM hypervisor on VMX."""

    name = "kvm"
    execution = "hvm"
    cpl = 0

    def __init__(self, *, ept: bool = True, steal_ns_per_exit: int = 0) -> None:
        super().__init__()
        self.ept = ept
        self.steal_ns_per_exit = steal_ns_per_exit
        kinds = {
            "cpuid",
            "hlt",
            "vmcall",
            "vmmcall",
            "in",
            "out",
            "rdmsr",
            "wrmsr",
            "mov_cr_write",
            "mov_dr_read",
            "mov_dr_write",
            "wbinvd",
            "rdpmc",
        }
        if not ept:
            kinds |= {"mov_cr_read", "invlpg"}
        self.intercepts = frozenset(kinds)
        self.system_time_gpa: int | None = None
        self.steal_time_gpa: int | None = None
        self.steal_version = 0
        self.clock_version = 0
        self.steal_ns = 0
        self.kicks_pending = 0
        self.io: list[tuple[str, int, int]] = []

    def attach(self, cpu: Cpu, image: GuestImage) -> None:
        super().attach(cpu, image)
        leaf1 = cpu.cpuid[(1, None)]
        cpu.cpuid[(1, None)] = (leaf1[0], leaf1[1], leaf1[2] | (1 << 31), leaf1[3])
        ebx, ecx, edx = struct.unpack("<III", KVM_SIGNATURE)
        cpu.cpuid[(0x4000_0000, None)] = (KVM_CPUID_FEATURES, ebx, ecx, edx)
        cpu.cpuid[(KVM_CPUID_FEATURES, None)] = (KVM_FEATURES, 0, 0, 0)

    def options(self) -> dict[str, Any]:
        return {"ept": self.ept, "steal_ns_per_exit": self.steal_ns_per_exit}

    # -- exits ----------------------------------------------------------------------------------

    def exit(self, cpu: Cpu, reason: str, kind: str) -> None:
        """Counts and charges one VM exit; the instruction's native price is replaced.

        With `steal_ns_per_exit`, the host is modelled as busy: each exit loses that much
        time to other work, and the steal-time area shows it on the next entry.
        """
        self.stats.vm_exits[reason] += 1
        self.stats.replaced[kind] += 1
        self.charge("vm_exit", costs.VM_EXIT_ROUND_TRIP + costs.VM_EXIT_HANDLING.get(reason, 0.0))
        if self.steal_ns_per_exit:
            self.steal_ns += self.steal_ns_per_exit
            self.update_steal_time(cpu)

    def handle_exit(self, cpu: Cpu, insn: SensitiveInsn) -> None:
        kind = insn.kind
        if kind == "cpuid":
            self.exit(cpu, "cpuid", kind)
            cpu.execute_native(insn)  # the table attach() filled is the vCPU's CPUID
        elif kind == "hlt":
            self.exit(cpu, "hlt", kind)
            cpu.rip = insn.next_rip
            if self.kicks_pending and cpu.rflags & 0x200:
                self.kicks_pending -= 1  # a kick (or interrupt) wakes the vCPU at once
                return
            self.halted_reason = "hlt"
            raise system.Stop("hlt")
        elif kind in ("vmcall", "vmmcall"):
            self.exit(cpu, "vmcall", kind)
            cpu.set_reg("rax", self.hypercall(cpu))
            cpu.rip = insn.next_rip
        elif kind in ("in", "out"):
            self.exit(cpu, "io", kind)
            port = insn.port if insn.port is not None else cpu.reg("rdx") & 0xFFFF
            self.io.append((kind, port, insn.io_size))
            del self.io[:-64]
            if kind == "in":
                size = insn.io_size
                value = (1 << (8 * size)) - 1  # no device behind the port: the bus floats high
                cpu.set_reg("rax", (cpu.reg("rax") & ~((1 << (8 * size)) - 1)) | value)
            cpu.rip = insn.next_rip
        elif kind in ("rdmsr", "wrmsr"):
            self.msr(cpu, insn)
        elif kind in ("mov_cr_write", "mov_cr_read"):
            creg = insn.system_register
            number = creg.number if creg is not None else -1
            # Only CR0/CR4 loads exit, and CR3 accesses under shadow paging; CR2 and CR8 (TPR
            # shadow) and CR0/CR4 reads (read shadows) do not.
            exits = (number in (0, 4) and kind == "mov_cr_write") or (number == 3 and not self.ept)
            if not exits:
                cpu.execute_native(insn)
                return
            self.exit(cpu, "cr_access", kind)
            cpu.execute_native(insn)
        elif kind in ("mov_dr_read", "mov_dr_write"):
            self.exit(cpu, "dr_access", kind)
            cpu.execute_native(insn)
        elif kind == "invlpg":
            self.exit(cpu, "invlpg", kind)
            cpu.execute_native(insn)
        elif kind == "wbinvd":
            self.exit(cpu, "wbinvd", kind)
            cpu.execute_native(insn)
        elif kind == "rdpmc":
            self.exit(cpu, "rdpmc", kind)
            cpu.execute_native(insn)
        else:
            cpu.execute_native(insn)

    def fault(self, cpu: Cpu, fault: ArchFault) -> bool:
        # Exceptions go to the guest's IDT (injected after the exits that raised them).
        return self.deliver_to_guest(cpu, fault, costs.EXCEPTION_DELIVERY)

    # -- hypercalls -------------------------------------------------------------------------------

    def hypercall(self, cpu: Cpu) -> int:
        number = cpu.reg("rax") & 0xFFFF_FFFF
        name = HYPERCALL_NAMES.get(number, f"unknown_{number}")
        self.stats.hypercalls[name] += 1
        if number == KVM_HC_KICK_CPU:
            # One vCPU: a kick to ourselves is remembered and ends the next halt at once.
            if cpu.reg("rcx") == 0:
                self.kicks_pending += 1
            return 0
        if number in (KVM_HC_VAPIC_POLL_IRQ, KVM_HC_SCHED_YIELD, KVM_HC_SEND_IPI):
            return 0
        if number == KVM_HC_CLOCK_PAIRING:
            return -KVM_EOPNOTSUPP & 0xFFFF_FFFF_FFFF_FFFF
        return -KVM_ENOSYS & 0xFFFF_FFFF_FFFF_FFFF

    # -- MSRs ----------------------------------------------------------------------------------------

    def msr(self, cpu: Cpu, insn: SensitiveInsn) -> None:
        index = cpu.reg("rcx") & 0xFFFF_FFFF
        if index in PASS_THROUGH_MSRS:
            cpu.execute_native(insn)
            return
        self.exit(cpu, "msr", insn.kind)
        if insn.kind == "rdmsr":
            value = self.read_kvm_msr(cpu, index)
            if value is None:
                cpu.execute_native(insn)  # the vCPU's architectural MSRs; #GP for unknown ones
                return
            cpu.set_reg("rax", value & 0xFFFF_FFFF)
            cpu.set_reg("rdx", value >> 32)
            cpu.rip = insn.next_rip
            return
        value = ((cpu.reg("rdx") & 0xFFFF_FFFF) << 32) | (cpu.reg("rax") & 0xFFFF_FFFF)
        if not self.write_kvm_msr(cpu, index, value, insn):
            cpu.execute_native(insn)
            return
        cpu.rip = insn.next_rip

    def read_kvm_msr(self, cpu: Cpu, index: int) -> int | None:
        if index in (MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_SYSTEM_TIME):
            return (self.system_time_gpa or 0) | (1 if self.system_time_gpa is not None else 0)
        if index == MSR_KVM_STEAL_TIME:
            return (self.steal_time_gpa or 0) | (1 if self.steal_time_gpa is not None else 0)
        if index in (MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_WALL_CLOCK, MSR_KVM_ASYNC_PF_EN, MSR_KVM_PV_EOI_EN):
            return 0
        if index == MSR_KVM_POLL_CONTROL:
            return 1
        return None

    def write_kvm_msr(self, cpu: Cpu, index: int, value: int, insn: SensitiveInsn) -> bool:
        if index in (MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_SYSTEM_TIME):
            self.system_time_gpa = value & ~1 if value & 1 else None
            self.update_clock(cpu)
            return True
        if index == MSR_KVM_STEAL_TIME:
            if value & 0x3E:
                raise GeneralProtection(insn.rip, 0, insn=insn, detail="reserved bits in MSR_KVM_STEAL_TIME")
            self.steal_time_gpa = value & ~0x3F if value & 1 else None
            self.update_steal_time(cpu)
            return True
        if index in (MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_WALL_CLOCK):
            # {version, sec, nsec}: the guest's boot is the epoch here.
            cpu.memory.write(kernel_va(value), struct.pack("<III", 2, 0, 0))
            return True
        if index in (MSR_KVM_ASYNC_PF_EN, MSR_KVM_PV_EOI_EN, MSR_KVM_POLL_CONTROL):
            return True
        return False

    # -- shared pages ------------------------------------------------------------------------------

    def update_clock(self, cpu: Cpu) -> None:
        """Writes the pvclock page the guest registered: version odd, fields, version even."""
        if self.system_time_gpa is None:
            return
        va = kernel_va(self.system_time_gpa)
        tsc = cpu.read_tsc()
        self.clock_version += 2
        cpu.memory.write(va, struct.pack("<I", self.clock_version - 1))
        cpu.memory.write(
            va,
            struct.pack(
                "<IIQQIbBxx", self.clock_version, 0, tsc, tsc // 2, TSC_TO_SYSTEM_MUL, TSC_SHIFT, PVCLOCK_TSC_STABLE_BIT
            ),
        )

    def update_steal_time(self, cpu: Cpu) -> None:
        """record_steal_time: version odd, steal and preempted, version even (one vCPU, never preempted)."""
        if self.steal_time_gpa is None:
            return
        va = kernel_va(self.steal_time_gpa)
        self.steal_version += 2
        cpu.memory.write(va + 8, struct.pack("<I", self.steal_version - 1))
        cpu.memory.write(va, struct.pack("<QIIB", self.steal_ns, self.steal_version, 0, 0))

    def tick(self, cpu: Cpu) -> None:
        self.update_steal_time(cpu)
        self.update_clock(cpu)


__all__ = ["Kvm"]
