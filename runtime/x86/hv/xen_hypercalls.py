"""Xen's hypercalls for the PV model: one `do_<name>` function per hypercall of xen.h.

XenPv.hypercall (xen.py) looks them up in HANDLERS by name. Arguments arrive as in the 64-bit PV ABI (RDI RSI RDX R10
R8, pointers are guest virtual addresses); a handler returns the value for RAX (a
negative errno on failure). Each charges its work from costs.py; the round trip itself
is charged by `hypercall`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from pvgen.runtime.x86 import system
from pvgen.runtime.x86.faults import GeneralProtection
from pvgen.runtime.x86.hv import costs
from pvgen.runtime.x86.hv.base import read_struct, read_u64, write_struct
from pvgen.runtime.x86.hv.xen_abi import (
    CALLBACKTYPE_EVENT,
    CALLBACKTYPE_FAILSAFE,
    CALLBACKTYPE_SYSCALL,
    CR0_TS,
    EFAULT,
    EINVAL,
    ENOENT,
    ENOSYS,
    HYPERCALL_IRET,
    HYPERCALLS,
    IF,
    IOPL,
    MACH2PHYS_VA,
    MAX_MFN,
    MMUEXT_NAMES,
    PAGE,
    SHARED_EVTCHN_MASK,
    SHARED_INFO_MFN,
    VCPU_PENDING,
    VCPU_PENDING_SEL,
    VGCF_IN_SYSCALL,
    VM,
    XEN_VERSION,
)
from pvgen.runtime.x86.memory import AddressError, canonical

if TYPE_CHECKING:
    from pvgen.runtime.x86.cpu import Cpu
    from pvgen.runtime.x86.hv.xen import XenPv


def do_iret(xen: XenPv, cpu: Cpu) -> None:
    """Pops {rax, r11, rcx, flags, rip, cs, rflags, rsp, ss}; the mask follows the saved IF."""
    xen.charge("hypercall", costs.HYPERCALL_WORK["iret"])
    rsp = cpu.reg("rsp")
    try:
        rax, r11, rcx, flags, rip, cs, rflags, new_rsp, ss = read_struct(cpu, rsp, "<9Q")
    except AddressError as error:
        raise GeneralProtection(cpu.rip, 0, detail=f"iret hypercall: bad frame at {rsp:#x}: {error}") from None
    if not canonical(rip):
        raise GeneralProtection(cpu.rip, 0, detail=f"iret hypercall to non-canonical {rip:#x}")
    # The model has no guest user mode: every frame returns to the guest kernel.
    cpu.rip = rip
    cpu.selectors[1] = (cs | 3) & 0xFFFF
    cpu.selectors[2] = (ss | 3) & 0xFFFF
    cpu.rflags = (rflags & ~(IOPL | VM)) | IF
    cpu.set_reg("rsp", new_rsp)
    cpu.set_reg("rax", rax)
    if not flags & VGCF_IN_SYSCALL:
        cpu.set_reg("r11", r11)
        cpu.set_reg("rcx", rcx)
    xen.set_mask(cpu, 0 if rflags & IF else 1)


def do_set_trap_table(xen: XenPv, cpu: Cpu, table: int, *_: int) -> int:
    if table == 0:
        xen.trap_table.clear()
        return 0
    for i in range(256):
        vector, flags, cs, address = read_struct(cpu, table + 16 * i, "<BBH4xQ")
        if address == 0:
            break
        xen.trap_table[vector] = (flags, cs, address)
    return 0


def do_mmu_update(xen: XenPv, cpu: Cpu, requests: int, count: int, done: int, domid: int, *_: int) -> int:
    count &= 0xFFFF_FFFF
    result = 0
    finished = 0
    for i in range(count):
        ptr, val = read_struct(cpu, requests + 16 * i, "<QQ")
        xen.charge("hypercall", costs.HYPERCALL_WORK["mmu_update"])
        command = ptr & 3
        if command == 0:  # MMU_NORMAL_PT_UPDATE: the entry at machine address ptr
            va = xen.machine_to_va(cpu, ptr & ~7)
            if va is None or ptr & 7 & ~3:
                result = -EINVAL
                break
            cpu.memory.write(va, struct.pack("<Q", val))
        elif command == 1:  # MMU_MACHPHYS_UPDATE: M2P[mfn] = pfn
            mfn = ptr >> 12
            if mfn > MAX_MFN:
                result = -EINVAL
                break
            cpu.memory.write(MACH2PHYS_VA + 8 * mfn, struct.pack("<Q", val))
        else:
            result = -ENOSYS
            break
        finished += 1
    if done:
        write_struct(cpu, done, "<I", finished)
    return result


def do_set_gdt(xen: XenPv, cpu: Cpu, frames: int, entries: int, *_: int) -> int:
    entries &= 0xFFFF_FFFF
    if entries > 14 * 512:  # FIRST_RESERVED_GDT_ENTRY: the rest is Xen's
        return -EINVAL
    pages = (entries + 511) // 512
    xen.gdt_frames = tuple(read_u64(cpu, frames + 8 * i) for i in range(pages))
    return 0


def do_stack_switch(xen: XenPv, cpu: Cpu, ss: int, sp: int, *_: int) -> int:
    xen.kernel_ss, xen.kernel_sp = ss & 0xFFFF, sp
    return 0


def do_set_callbacks(xen: XenPv, cpu: Cpu, event: int, failsafe: int, syscall: int, *_: int) -> int:
    xen.callbacks.update({CALLBACKTYPE_EVENT: event, CALLBACKTYPE_FAILSAFE: failsafe})
    if syscall:
        xen.callbacks[CALLBACKTYPE_SYSCALL] = syscall
    return 0


def do_callback_op(xen: XenPv, cpu: Cpu, command: int, arg: int, *_: int) -> int:
    if command not in (0, 1):  # CALLBACKOP_register, CALLBACKOP_unregister
        return -ENOSYS
    kind, _flags, address = read_struct(cpu, arg, "<HH4xQ")
    if command == 1:
        xen.callbacks.pop(kind, None)
    elif not canonical(address):
        return -EINVAL
    else:
        xen.callbacks[kind] = address
    return 0


def do_fpu_taskswitch(xen: XenPv, cpu: Cpu, set_ts: int, *_: int) -> int:
    xen.guest_cr0 = xen.guest_cr0 | CR0_TS if set_ts else xen.guest_cr0 & ~CR0_TS
    return 0


def do_set_debugreg(xen: XenPv, cpu: Cpu, number: int, value: int, *_: int) -> int:
    return xen.set_debugreg(number, value)


def do_get_debugreg(xen: XenPv, cpu: Cpu, number: int, *_: int) -> int:
    return xen.debugregs[number] if number < 8 else -EINVAL


def do_update_descriptor(xen: XenPv, cpu: Cpu, maddr: int, desc: int, *_: int) -> int:
    if maddr & 7:
        return -EINVAL
    va = xen.machine_to_va(cpu, maddr)
    if va is None:
        return -EINVAL
    # Code and data segments run at the guest kernel's privilege (3): fix the DPL up.
    if desc >> 47 & 1 and desc >> 44 & 1:
        desc |= 3 << 45
    cpu.memory.write(va, struct.pack("<Q", desc))
    return 0


def do_memory_op(xen: XenPv, cpu: Cpu, command: int, arg: int, *_: int) -> int:
    if command == 12:  # XENMEM_machphys_mapping
        write_struct(cpu, arg, "<QQQ", MACH2PHYS_VA, MACH2PHYS_VA + 8 * (MAX_MFN + 1), MAX_MFN)
        return 0
    if command == 2:  # XENMEM_maximum_ram_page
        return MAX_MFN
    return -ENOSYS


def do_multicall(xen: XenPv, cpu: Cpu, entries: int, count: int, *_: int) -> int:
    if xen.in_multicall:
        return -EINVAL
    xen.in_multicall = True
    try:
        for i in range(count & 0xFFFF_FFFF):
            base = entries + 64 * i
            op, _result, *args = read_struct(cpu, base, "<Q q 6Q")
            name = HYPERCALLS.get(op, f"unknown_{op}")
            xen.stats.hypercalls[f"multicall/{name}"] += 1
            xen.charge("hypercall", costs.HYPERCALL_WORK["multicall"])
            result = -EINVAL if op in (HYPERCALL_IRET, 13) else xen.dispatch(cpu, op, list(args[:5]))
            write_struct(cpu, base + 8, "<q", result)
    finally:
        xen.in_multicall = False
    return 0


def do_update_va_mapping(xen: XenPv, cpu: Cpu, va: int, pte: int, flags: int, *_: int) -> int:
    if not canonical(va) or va & (PAGE - 1):
        return -EINVAL
    frame = (pte & 0x000F_FFFF_FFFF_F000) >> 12
    if pte & 1 and frame == SHARED_INFO_MFN:
        if xen.shared_va is None:
            try:
                cpu.memory.map(va, PAGE, "rw", bytes(xen.shared), name="xen shared_info")
            except ValueError:
                return -EINVAL
            xen.shared_va = va
        elif xen.shared_va != va:
            return -EINVAL  # one mapping of shared_info is all the model keeps
    if flags & 3:
        xen.tlb_flushes += 1
    return 0


def do_set_timer_op(xen: XenPv, cpu: Cpu, timeout: int, *_: int) -> int:
    xen.singleshot_deadline = timeout or None
    return 0


def do_xen_version(xen: XenPv, cpu: Cpu, command: int, arg: int, *_: int) -> int:
    if command == 0:  # XENVER_version
        return XEN_VERSION
    if command == 1 and arg:  # XENVER_extraversion
        cpu.memory.write(arg, b".0".ljust(16, b"\0"))
        return 0
    if command == 6 and arg:  # XENVER_get_features: none of the optional ones
        write_struct(cpu, arg + 4, "<I", 0)
        return 0
    return -ENOSYS if command > 10 else 0


def do_console_io(xen: XenPv, cpu: Cpu, command: int, count: int, text: int, *_: int) -> int:
    if command != 0:  # CONSOLEIO_write
        return -ENOSYS
    xen.console.append(cpu.memory.read(text, count & 0xFFFF).decode("utf-8", "replace"))
    return 0


def do_vm_assist(xen: XenPv, cpu: Cpu, *_: int) -> int:
    return 0


def do_vcpu_op(xen: XenPv, cpu: Cpu, command: int, vcpu: int, arg: int, *_: int) -> int:
    if vcpu & 0xFFFF_FFFF != 0:
        return -ENOENT  # the domain has one vCPU
    if command == 10:  # VCPUOP_register_vcpu_info
        if xen.vcpu_info_va is not None:
            return -EINVAL
        mfn, offset, _rsvd = read_struct(cpu, arg, "<QII")
        if offset > PAGE - 64:
            return -EINVAL
        va = xen.machine_to_va(cpu, mfn * PAGE + offset, 64)
        if va is None:
            return -EINVAL
        current = xen.vcpu_read(cpu, 0, 64)
        xen.vcpu_info_va = va
        cpu.memory.write(va, current)
        return 0
    if command == 5:  # VCPUOP_register_runstate_memory_area
        (address,) = read_struct(cpu, arg, "<Q")
        if not cpu.memory.probe(address, 48, 2):
            return -EFAULT
        xen.runstate_va = address
        xen.update_time(cpu)
        return 0
    if command == 2:  # VCPUOP_down
        xen.halted_reason = "vcpu down"
        raise system.Stop("hlt")
    if command in (1, 3):  # up, is_up
        return 0 if command == 1 else 1
    if command == 6:  # set_periodic_timer
        (period,) = read_struct(cpu, arg, "<Q")
        if period < 50_000:
            return -EINVAL
        xen.timer_period_ns = period
        xen.periodic_deadline = xen.now_ns(cpu) + period
        return 0
    if command == 7:  # stop_periodic_timer
        xen.periodic_deadline = None
        return 0
    if command == 8:  # set_singleshot_timer
        (timeout,) = read_struct(cpu, arg, "<Q")
        xen.singleshot_deadline = timeout
        return 0
    if command == 9:  # stop_singleshot_timer
        xen.singleshot_deadline = None
        return 0
    return -ENOSYS


def do_set_segment_base(xen: XenPv, cpu: Cpu, which: int, base: int, *_: int) -> int:
    if which == 3:  # SEGBASE_GS_USER_SEL: load the user %gs selector, its base is 0
        cpu.selectors[5] = base & 0xFFFF
        cpu.kernel_gs_base = 0
        return 0
    if not canonical(base):
        return -EINVAL
    if which == 0:
        cpu.fs_base = base
    elif which == 1:  # SEGBASE_GS_USER: the base user mode will see (inactive while in the kernel)
        cpu.kernel_gs_base = base
    elif which == 2:
        cpu.gs_base = base
    else:
        return -EINVAL
    return 0


def do_mmuext_op(xen: XenPv, cpu: Cpu, ops: int, count: int, done: int, domid: int, *_: int) -> int:
    result = 0
    finished = 0
    for i in range(count & 0xFFFF_FFFF):
        command, arg1, arg2 = read_struct(cpu, ops + 24 * i, "<I4xQQ")
        name = MMUEXT_NAMES.get(command, f"unknown_{command}")
        work = costs.MMUEXT_WORK.get("PIN_TABLE" if name.startswith("PIN_") else name, 0.0)
        xen.charge("hypercall", costs.HYPERCALL_WORK["mmuext_op"] + work)
        if command <= 3:
            if arg1 in xen.pinned or xen.mfn_to_pfn(arg1) is None:
                result = -EINVAL
                break
            xen.pinned[arg1] = name
        elif command == 4:
            if xen.pinned.pop(arg1, None) is None:
                result = -EINVAL
                break
        elif command == 5:
            xen.base_ptr = arg1
            xen.tlb_flushes += 1
        elif command == 15:
            xen.user_base_ptr = arg1
        elif command in (6, 8, 10):
            if command == 8 and arg2:
                read_u64(cpu, arg2)  # the vCPU mask must be readable
            xen.tlb_flushes += 1
        elif command in (7, 9, 11):
            xen.invlpgs.append(arg1)
            del xen.invlpgs[:-64]
        elif command == 12:
            pass
        elif command == 13:
            xen.ldt = (arg1, arg2 & 0xFFFF_FFFF)
        else:
            result = -ENOSYS
            break
        finished += 1
    if done:
        write_struct(cpu, done, "<I", finished)
    return result


def do_sched_op(xen: XenPv, cpu: Cpu, command: int, arg: int, *_: int) -> int:
    if command == 0:  # SCHEDOP_yield
        return 0
    if command == 1:  # SCHEDOP_block: unmask, then sleep until an event
        xen.set_mask(cpu, 0)
        xen.block(cpu, lambda: bool(xen.pending(cpu)))
        return 0
    if command == 2:  # SCHEDOP_shutdown
        xen.halted_reason = "shutdown"
        raise system.Stop("hlt")
    if command == 3:  # SCHEDOP_poll: sleep until one of the ports is pending
        ports, count, _timeout = read_struct(cpu, arg, "<QI4xQ")
        polled = [read_struct(cpu, ports + 4 * i, "<I")[0] for i in range(count & 0xFFFF_FFFF)]
        xen.block(cpu, lambda: any(xen.port_pending(cpu, p) for p in polled))
        return 0
    return -ENOSYS


def do_event_channel_op(xen: XenPv, cpu: Cpu, command: int, arg: int, *_: int) -> int:
    if command == 1:  # EVTCHNOP_bind_virq
        virq, vcpu, _port = read_struct(cpu, arg, "<III")
        if vcpu != 0:
            return -ENOENT
        write_struct(cpu, arg + 8, "<I", xen.bind_port("virq", virq))
        return 0
    if command == 7:  # EVTCHNOP_bind_ipi
        vcpu, _port = read_struct(cpu, arg, "<II")
        if vcpu != 0:
            return -ENOENT
        write_struct(cpu, arg + 4, "<I", xen.bind_port("ipi", vcpu))
        return 0
    if command == 4:  # EVTCHNOP_send
        (port,) = read_struct(cpu, arg, "<I")
        if port not in xen.ports:
            return -EINVAL
        xen.raise_event(cpu, port)
        return 0
    if command == 3:  # EVTCHNOP_close
        (port,) = read_struct(cpu, arg, "<I")
        return 0 if xen.ports.pop(port, None) is not None else -EINVAL
    if command == 9:  # EVTCHNOP_unmask
        (port,) = read_struct(cpu, arg, "<I")
        word, bit = divmod(port, 64)
        (masked,) = struct.unpack("<Q", xen.shared_read(cpu, SHARED_EVTCHN_MASK + 8 * word, 8))
        xen.shared_write(cpu, SHARED_EVTCHN_MASK + 8 * word, struct.pack("<Q", masked & ~(1 << bit)))
        if xen.port_pending(cpu, port):
            (selector,) = struct.unpack("<Q", xen.vcpu_read(cpu, VCPU_PENDING_SEL, 8))
            xen.vcpu_write(cpu, VCPU_PENDING_SEL, struct.pack("<Q", selector | 1 << word))
            xen.vcpu_write(cpu, VCPU_PENDING, b"\x01")
        return 0
    return -ENOSYS


def do_physdev_op(xen: XenPv, cpu: Cpu, command: int, arg: int, *_: int) -> int:
    if command == 6:  # PHYSDEVOP_set_iopl
        (iopl,) = read_struct(cpu, arg, "<I")
        if iopl > 3:
            return -EINVAL
        xen.virtual_iopl = iopl
        return 0
    return -ENOSYS


HANDLERS: dict[str, Callable[..., int]] = {
    "set_trap_table": do_set_trap_table,
    "mmu_update": do_mmu_update,
    "set_gdt": do_set_gdt,
    "stack_switch": do_stack_switch,
    "set_callbacks": do_set_callbacks,
    "callback_op": do_callback_op,
    "fpu_taskswitch": do_fpu_taskswitch,
    "set_debugreg": do_set_debugreg,
    "get_debugreg": do_get_debugreg,
    "update_descriptor": do_update_descriptor,
    "memory_op": do_memory_op,
    "multicall": do_multicall,
    "update_va_mapping": do_update_va_mapping,
    "set_timer_op": do_set_timer_op,
    "xen_version": do_xen_version,
    "console_io": do_console_io,
    "vm_assist": do_vm_assist,
    "vcpu_op": do_vcpu_op,
    "set_segment_base": do_set_segment_base,
    "mmuext_op": do_mmuext_op,
    "sched_op": do_sched_op,
    "event_channel_op": do_event_channel_op,
    "physdev_op": do_physdev_op,
}
