"""Every cost figure of the x86 runtime, in cycles of a modern (Skylake-class) Intel core.

These are model parameters, not measurements of this machine: each is a round figure in
the range public sources give, so that relative costs (an inlined `cli` against a direct
call, a trapped `cli` against a VM exit, a hypercall against a trap) come out in the
right order of magnitude. Change them here and only here; reports name the table they
used (`COST_MODEL`).
"""

from __future__ import annotations

from collections.abc import Mapping

COST_MODEL = "pvgen-x86-2026.1"

# Ordinary instructions, by the CPU model's classes (translate.CLASSES).
INSTRUCTION_CYCLES: Mapping[str, float] = {
    # ~4-wide issue but dependent chains in kernel code: about one cycle per simple op.
    "alu": 1.0,
    # An L1 hit is 4-5 cycles of latency, mostly overlapped: 2 per load or store.
    "mem": 2.0,
    # Predicted branches, calls and returns: about 1 cycle each (Agner Fog, Skylake).
    "branch": 1.0,
    # imul is 3 cycles; a 64-bit div 35-90 (Agner Fog): a blend weighted to multiplies.
    "muldiv": 6.0,
    # A rep-string start-up is ~15-35 cycles before bytes move (Intel optimization manual).
    "string": 20.0,
    # Any sensitive instruction not listed in SENSITIVE_CYCLES.
    "system": 20.0,
}

# Sensitive instructions run natively (bare metal, or not intercepted), by kind (sensitive.KINDS).
SENSITIVE_CYCLES: Mapping[str, float] = {
    # cli/sti: a few uops; Agner Fog lists ~3-4 cycles of throughput.
    "cli": 3.0,
    "sti": 4.0,
    # pushf is 3 uops; popf is microcoded, ~20 cycles (Agner Fog, Skylake POPFQ).
    "pushf": 3.0,
    "popf": 20.0,
    # cpuid serialises: 100-250 cycles depending on the leaf (Agner Fog).
    "cpuid": 150.0,
    # rdmsr/wrmsr are microcoded and serialising for most MSRs: ~100-150 cycles.
    "rdmsr": 100.0,
    "wrmsr": 150.0,
    # Reading a control register is cheap; writing CR0/CR4 serialises (~100+).
    "mov_cr_read": 5.0,
    "mov_cr_write": 200.0,  # a CR3 load also drops non-global TLB entries
    "mov_dr_read": 10.0,
    "mov_dr_write": 40.0,
    # invlpg: ~100-200 cycles (Agner Fog lists ~100+ on recent cores).
    "invlpg": 150.0,
    # wbinvd writes back the whole cache: thousands of cycles at least.
    "wbinvd": 5000.0,
    "clts": 10.0,
    "swapgs": 10.0,
    # iretq to the same privilege level: ~70-100 cycles (Agner Fog).
    "iretq": 80.0,
    "syscall": 70.0,
    "sysretq": 70.0,
    "rdtsc": 25.0,
    "rdtscp": 30.0,
    "rdpmc": 30.0,
    # Port I/O to an ISA port such as 0x80 takes about a microsecond on the bus (why io_delay exists).
    "in": 2000.0,
    "out": 2000.0,
    "hlt": 0.0,  # halting ends the run; nothing after it is priced
    "lgdt": 100.0,
    "lidt": 100.0,
    "lldt": 100.0,
    "ltr": 100.0,
    "sgdt": 10.0,
    "sidt": 10.0,
    "sldt": 10.0,
    "str": 10.0,
    "mov_seg_read": 1.0,
    "mov_seg_write": 10.0,
}

# Hardware-assisted virtualisation (VMX), the KVM model.
# A VM exit plus VM entry round trip with a trivial handler: ~1,000-1,500 cycles on Skylake-class
# hosts (kvm-unit-tests' vmexit benchmark reports vmcall and cpuid exits in that range).
VM_EXIT_ROUND_TRIP = 1200.0
# The handler's own work per exit reason, on top of the round trip.
VM_EXIT_HANDLING: Mapping[str, float] = {
    "cpuid": 100.0,  # look up the vCPU's CPUID table
    "hlt": 300.0,  # the halt path checks for pending wake-ups before blocking
    "vmcall": 100.0,  # hypercall dispatch
    "io": 300.0,  # an in-kernel PIO handler (a trip to QEMU would cost ~10x)
    "msr": 150.0,  # MSR emulation
    "cr_access": 200.0,  # control-register emulation, a CR3 load adds a shadow-MMU sync
    "dr_access": 100.0,
    "invlpg": 300.0,  # shadow paging: drop the shadow entry
    "wbinvd": 5000.0,  # done on the host
    "rdpmc": 100.0,
}
# Injecting an exception into the guest (it then runs its own handler).
VM_EXCEPTION_INJECTION = 300.0

# Xen PV.
# A hypercall is `syscall` into Xen and `sysret` back, plus dispatch: a few hundred cycles
# (Barham et al., SOSP 2003, and later Xen measurements put the round trip at ~200-500).
HYPERCALL_ROUND_TRIP = 350.0
# Work inside a hypercall, per request or per command, by what it does.
HYPERCALL_WORK: Mapping[str, float] = {
    "mmu_update": 150.0,  # per request: validate the new entry against the frame's type
    "mmuext_op": 80.0,  # per command, plus the command's own cost below
    "multicall": 40.0,  # per entry: the batched call's own cost is added
    "iret": 150.0,  # restore the frame and the event mask
    "stack_switch": 20.0,
    "update_descriptor": 100.0,
    "set_segment_base": 30.0,
    "set_trap_table": 100.0,
    "set_gdt": 300.0,
    "sched_op": 100.0,
    "vcpu_op": 100.0,
    "update_va_mapping": 200.0,
}
MMUEXT_WORK: Mapping[str, float] = {
    "NEW_BASEPTR": 500.0,  # switch the page-table base and flush the TLB
    "NEW_USER_BASEPTR": 50.0,
    "TLB_FLUSH_LOCAL": 300.0,
    "INVLPG_LOCAL": 100.0,
    "TLB_FLUSH_MULTI": 400.0,
    "INVLPG_MULTI": 200.0,
    "PIN_TABLE": 1000.0,  # validate a whole page-table page
    "UNPIN_TABLE": 300.0,
}
# A privileged instruction that faults (#GP/#UD) into Xen, is decoded and emulated, and
# returns: exception entry/exit (~250 cycles each way) plus the x86 emulator (~500-1000).
TRAP_EMULATION = 1500.0
# Delivering an event upcall: build the bounce frame on the guest stack and jump.
EVENT_UPCALL = 300.0

# Bare metal: an exception through the IDT to the kernel's handler and back (fixup_exception).
EXCEPTION_DELIVERY = 250.0


def instruction_cycles(klass: str, kind: str | None) -> float:
    """The cycles of one natively executed instruction: its sensitive kind, else its class."""
    if kind is not None:
        return SENSITIVE_CYCLES.get(kind, INSTRUCTION_CYCLES["system"])
    return INSTRUCTION_CYCLES.get(klass, 1.0)


def table() -> dict[str, object]:
    """Every figure, for a report or the docs."""
    return {
        "cost_model": COST_MODEL,
        "instruction_cycles": dict(INSTRUCTION_CYCLES),
        "sensitive_cycles": dict(SENSITIVE_CYCLES),
        "vm_exit_round_trip": VM_EXIT_ROUND_TRIP,
        "vm_exit_handling": dict(VM_EXIT_HANDLING),
        "vm_exception_injection": VM_EXCEPTION_INJECTION,
        "hypercall_round_trip": HYPERCALL_ROUND_TRIP,
        "hypercall_work": dict(HYPERCALL_WORK),
        "mmuext_work": dict(MMUEXT_WORK),
        "trap_emulation": TRAP_EMULATION,
        "event_upcall": EVENT_UPCALL,
        "exception_delivery": EXCEPTION_DELIVERY,
    }
