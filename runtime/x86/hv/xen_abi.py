"""The Xen PV ABI the model implements: hypercall numbers, layouts, and where the domain lives.

Numbers and offsets are xen.h's (x86-64); the memory layout (where start_info, the P2M
list and the M2P table are mapped, how pseudo-physical frames map to machine frames)
is the model's domain builder's choice, documented in docs/x86-runtime.md.
"""

from __future__ import annotations

M64 = (1 << 64) - 1
PAGE = 4096

# Where the domain builder puts things (guest virtual addresses).
START_INFO_VA = 0xFFFF_FFFF_8400_0000
PT_BASE_VA = 0xFFFF_FFFF_8400_1000
P2M_VA = 0xFFFF_FFFF_8410_0000
MACH2PHYS_VA = 0xFFFF_8000_0000_0000
NR_PAGES = 0x10000  # 256 MiB of pseudo-physical memory
MFN_XOR = 0x8000
MAX_MFN = 0xFFFF
SHARED_INFO_MFN = 0x20000  # Xen's page, outside the domain's frames

FLAT_KERNEL_CS64 = 0xE033
FLAT_KERNEL_SS64 = 0xE02B
XEN_EMULATE_PREFIX = bytes.fromhex("0f0b78656e")
VGCF_IN_SYSCALL = 0x100
IF, IOPL, VM = 0x200, 0x3000, 0x2_0000
CR0_TS = 1 << 3
CR4_GUEST_BITS = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 18)  # TSD, DE, PCE, OSXSAVE

# vcpu_info and shared_info (xen.h, x86-64).
VCPU_PENDING, VCPU_MASK, VCPU_PENDING_SEL, VCPU_CR2, VCPU_TIME = 0, 1, 8, 16, 32
SHARED_EVTCHN_PENDING, SHARED_EVTCHN_MASK = 2048, 2560
VIRQ_TIMER = 0
CALLBACKTYPE_EVENT, CALLBACKTYPE_FAILSAFE, CALLBACKTYPE_SYSCALL = 0, 1, 2
XEN_VERSION = (4 << 16) | 17
DEFAULT_TIMER_PERIOD_NS = 10_000_000  # Xen's default periodic VIRQ_TIMER is 10 ms

# Hypercall numbers (xen.h).
HYPERCALLS = {
    0: "set_trap_table",
    1: "mmu_update",
    2: "set_gdt",
    3: "stack_switch",
    4: "set_callbacks",
    5: "fpu_taskswitch",
    6: "sched_op_compat",
    8: "set_debugreg",
    9: "get_debugreg",
    10: "update_descriptor",
    12: "memory_op",
    13: "multicall",
    14: "update_va_mapping",
    15: "set_timer_op",
    17: "xen_version",
    18: "console_io",
    21: "vm_assist",
    23: "iret",
    24: "vcpu_op",
    25: "set_segment_base",
    26: "mmuext_op",
    29: "sched_op",
    30: "callback_op",
    32: "event_channel_op",
    33: "physdev_op",
}
HYPERCALL_IRET = 23
MMUEXT_NAMES = {
    0: "PIN_L1_TABLE",
    1: "PIN_L2_TABLE",
    2: "PIN_L3_TABLE",
    3: "PIN_L4_TABLE",
    4: "UNPIN_TABLE",
    5: "NEW_BASEPTR",
    6: "TLB_FLUSH_LOCAL",
    7: "INVLPG_LOCAL",
    8: "TLB_FLUSH_MULTI",
    9: "INVLPG_MULTI",
    10: "TLB_FLUSH_ALL",
    11: "INVLPG_ALL",
    12: "FLUSH_CACHE",
    13: "SET_LDT",
    15: "NEW_USER_BASEPTR",
}
EPERM, ENOENT, EFAULT, EINVAL, ENOSYS = 1, 2, 14, 22, 38
