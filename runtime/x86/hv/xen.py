"""A Xen PV guest: the kernel deprivileged at CPL 3, privileged work by hypercall or trap.

The model plays Xen's part of the 64-bit PV ABI (xen.h):

* **Boot.** The domain builder reads the image's `.note.Xen` notes, fills the hypercall
  page they name, builds `start_info` (with the P2M list, the shared_info machine
  address and the command line) and enters at XEN_ELFNOTE_ENTRY with %rsi pointing at
  it. CS/SS are FLAT_KERNEL_CS64/SS64 (RPL 3); RFLAGS.IF is always 1 and IOPL 0, so
  cli/sti/in/out and every privileged instruction raise #GP.
* **Hypercalls.** Entry i of the page is Xen's own stub (`push %rcx; push %r11; mov $i,
  %eax; syscall; pop %r11; pop %rcx; ret`; the iret entry pushes %rax too and does not
  return). The model intercepts `syscall`: number in RAX, arguments in RDI RSI RDX R10
  R8, result in RAX. Implemented: set_trap_table, mmu_update, set_gdt, stack_switch,
  set_callbacks, fpu_taskswitch, set_debugreg, get_debugreg, update_descriptor,
  memory_op (machphys_mapping), multicall, update_va_mapping, set_timer_op,
  xen_version, console_io, vm_assist, iret, vcpu_op, set_segment_base, mmuext_op,
  sched_op, callback_op, event_channel_op, physdev_op (set_iopl).
* **Traps.** A #GP from a privileged instruction is decoded and emulated the way Xen's
  emulate_privileged_op does (cli/sti set the event mask only if the guest's virtual
  IOPL allows it, which Linux requests with PHYSDEVOP_set_iopl; CR0 allows only TS to
  change; CR3 loads a new base pointer; MSRs, debug registers, port I/O, invlpg,
  wbinvd, clts, swapgs, rdpmc). popf at CPL 3 silently keeps IF, as hardware does, so
  native irq code loses its interrupt state here. CPUID faults to Xen (CPUID faulting,
  which Xen enables for PV guests where the hardware has it) and the XEN_EMULATE_PREFIX
  (`ud2; .ascii "xen"; cpuid`) form is emulated from #UD.
* **Memory.** The domain's pseudo-physical frames [0, nr_pages) live in machine frames
  pfn ^ 0x8000 (a permutation, so PFN and MFN differ); frames beyond nr_pages are
  identity (Linux treats them as non-RAM). The P2M list is mapped after the image, the
  M2P table read-only at MACH2PHYS_VIRT_START. Guest-physical frames are the kernel map
  (va = pfn * 4096 + 0xffffffff80000000). There is no paging: mmu_update writes the
  entry at its machine address, base pointers and pins are recorded, nothing validates
  what an entry maps.
* **Events.** shared_info (a machine page of its own) appears where the guest maps it
  with update_va_mapping; vcpu_info moves where VCPUOP_register_vcpu_info puts it.
  evtchn_upcall_pending is at offset 0, evtchn_upcall_mask at 1. After every hypercall
  and trap, and at timer deadlines, a pending unmasked event is delivered as Xen does:
  a bounce frame {rcx, r11, rip, cs, rflags (IF = the saved mask, inverted), rsp, ss} on
  the guest stack, the mask set, a jump to the registered event callback; the guest
  returns with the iret hypercall, which restores the mask from the saved IF.
"""

from __future__ import annotations

import struct
from array import array
from typing import TYPE_CHECKING, Any

from pvgen.runtime.x86 import system
from pvgen.runtime.x86.faults import ArchFault, GeneralProtection, InvalidOpcode, PageFault
from pvgen.runtime.x86.hv import costs
from pvgen.runtime.x86.hv.base import (
    START_KERNEL_MAP,
    Environment,
    GuestImage,
    read_u64,
    write_struct,
)
from pvgen.runtime.x86.hv.xen_abi import (
    CALLBACKTYPE_EVENT,
    CR0_TS,
    CR4_GUEST_BITS,
    DEFAULT_TIMER_PERIOD_NS,
    EFAULT,
    EINVAL,
    ENOSYS,
    EPERM,
    FLAT_KERNEL_CS64,
    FLAT_KERNEL_SS64,
    HYPERCALL_IRET,
    HYPERCALLS,
    IF,
    IOPL,
    M64,
    MACH2PHYS_VA,
    MAX_MFN,
    MFN_XOR,
    NR_PAGES,
    P2M_VA,
    PAGE,
    PT_BASE_VA,
    SHARED_EVTCHN_MASK,
    SHARED_EVTCHN_PENDING,
    SHARED_INFO_MFN,
    START_INFO_VA,
    VCPU_CR2,
    VCPU_MASK,
    VCPU_PENDING,
    VCPU_PENDING_SEL,
    VCPU_TIME,
    VIRQ_TIMER,
    XEN_EMULATE_PREFIX,
    XEN_VERSION,
)
from pvgen.runtime.x86.hv.xen_hypercalls import HANDLERS, do_iret
from pvgen.runtime.x86.memory import AddressError, canonical
from pvgen.runtime.x86.sensitive import SensitiveInsn

if TYPE_CHECKING:
    from pvgen.runtime.x86.cpu import Cpu


class XenPv(Environment):
    """Xen hosting one 64-bit PV vCPU."""

    name = "xen"
    execution = "pv"
    cpl = 3

    def __init__(
        self,
        *,
        cmdline: str = "",
        cpuid_faulting: bool = True,
        timer_period_ns: int | None = DEFAULT_TIMER_PERIOD_NS,
        steal_ns_per_tick: int = 0,
    ) -> None:
        super().__init__()
        self.cmdline = cmdline
        self.cpuid_faulting = cpuid_faulting
        self.intercepts = frozenset({"syscall", "cpuid"} if cpuid_faulting else {"syscall"})
        self.timer_period_ns = timer_period_ns
        self.steal_ns_per_tick = steal_ns_per_tick
        self.cpuid: dict[tuple[int, int | None], tuple[int, int, int, int]] = {}
        self.shared = bytearray(PAGE)  # the shared_info machine page, until the guest maps it
        self.shared_va: int | None = None
        self.vcpu_info_va: int | None = None
        self.runstate_va: int | None = None
        self.callbacks: dict[int, int] = {}
        self.trap_table: dict[int, tuple[int, int, int]] = {}
        self.virtual_iopl = 0
        self.guest_cr0 = 0
        self.guest_cr4 = 0
        self.debugregs = [0, 0, 0, 0, 0, 0, 0xFFFF_0FF0, 0x400]
        self.kernel_ss = FLAT_KERNEL_SS64
        self.kernel_sp = 0
        self.base_ptr = 0
        self.user_base_ptr = 0
        self.pinned: dict[int, str] = {}
        self.ldt = (0, 0)
        self.gdt_frames: tuple[int, ...] = ()
        self.tlb_flushes = 0
        self.invlpgs: list[int] = []
        self.io: list[tuple[str, int, int]] = []
        self.ports: dict[int, tuple[str, int]] = {}  # port -> (kind, virq or vcpu)
        self.next_port = 1
        self.periodic_deadline: int | None = None  # in ns
        self.singleshot_deadline: int | None = None
        self.time_version = 0
        self.runstate_blocked_ns = 0
        self.steal_ns = 0
        self.boot_ns = 0
        self.hypercall_page = 0
        self.in_multicall = False

    # -- set-up --------------------------------------------------------------------------------

    def options(self) -> dict[str, Any]:
        return {
            "cpuid_faulting": self.cpuid_faulting,
            "timer_period_ns": self.timer_period_ns,
            "steal_ns_per_tick": self.steal_ns_per_tick,
            "nr_pages": NR_PAGES,
        }

    def boot_entry(self) -> str | None:
        return "xen_start_kernel"

    def attach(self, cpu: Cpu, image: GuestImage) -> None:
        from pvgen.runtime.x86.boot import BootError

        entry = image.note_address(1)  # XEN_ELFNOTE_ENTRY
        page = image.note_address(2)  # XEN_ELFNOTE_HYPERCALL_PAGE
        if entry is None or page is None:
            raise BootError(
                f"{image.path}: not a Xen PV kernel: no XEN_ELFNOTE_ENTRY/XEN_ELFNOTE_HYPERCALL_PAGE in .note.Xen"
            )
        if page % PAGE:
            raise BootError(f"{image.path}: the hypercall page at {page:#x} is not page-aligned")
        if image.end > START_INFO_VA:
            raise BootError(f"{image.path}: the image reaches {image.end:#x}, past where Xen puts start_info")
        super().attach(cpu, image)
        self.hypercall_page = page
        cpu.selectors[1] = FLAT_KERNEL_CS64
        cpu.selectors[2] = FLAT_KERNEL_SS64
        cpu.rflags = (cpu.rflags & ~IOPL) | IF
        self.guest_cr0 = cpu.cr0
        self.guest_cr4 = cpu.cr4 & ~((1 << 7) | (1 << 4))  # PGE and PSE belong to Xen
        self.fill_hypercall_page(cpu, page)
        self.build_memory(cpu)
        self.build_cpuid(cpu)
        self.boot_ns = self.now_ns(cpu)
        if self.timer_period_ns:
            self.periodic_deadline = self.boot_ns + self.timer_period_ns
        self.update_time(cpu)

    def fill_hypercall_page(self, cpu: Cpu, page: int) -> None:
        stubs = bytearray(b"\xcc" * PAGE)
        for i in range(PAGE // 32):
            if i == HYPERCALL_IRET:
                code = bytes.fromhex("51415350") + b"\xb8" + struct.pack("<I", i) + b"\x0f\x05"
            else:
                code = bytes.fromhex("514153") + b"\xb8" + struct.pack("<I", i) + bytes.fromhex("0f05415b59c3")
            stubs[i * 32 : i * 32 + len(code)] = code
        cpu.memory.write(page, bytes(stubs))

    def build_memory(self, cpu: Cpu) -> None:
        p2m = array("Q", (pfn ^ MFN_XOR for pfn in range(NR_PAGES)))
        m2p = array("Q", (mfn ^ MFN_XOR for mfn in range(MAX_MFN + 1)))
        cpu.memory.map(START_INFO_VA, 2 * PAGE, "rw", name="xen start_info + bootstrap page table")
        cpu.memory.map(P2M_VA, NR_PAGES * 8, "r", p2m.tobytes(), name="xen p2m list")
        cpu.memory.map(MACH2PHYS_VA, (MAX_MFN + 1) * 8, "r", m2p.tobytes(), name="xen m2p table")
        info = bytearray(PAGE)
        info[0:32] = b"xen-3.0-x86_64".ljust(32, b"\0")
        struct.pack_into("<QQI", info, 32, NR_PAGES, SHARED_INFO_MFN * PAGE, 0)
        struct.pack_into("<QQQQQ", info, 88, PT_BASE_VA, 1, P2M_VA, 0, 0)
        cmdline = self.cmdline.encode()[:1023]
        info[128 : 128 + len(cmdline)] = cmdline
        struct.pack_into("<QQ", info, 1152, 0, 0)
        cpu.memory.write(START_INFO_VA, bytes(info))
        self.base_ptr = self.pfn_to_mfn((PT_BASE_VA - START_KERNEL_MAP) // PAGE)

    def build_cpuid(self, cpu: Cpu) -> None:
        """The CPUID Xen shows the guest: the host's plus the hypervisor bit and Xen's leaves.

        The CPU's own table stays the host's: that is what a non-faulting cpuid returns.
        """
        table = dict(cpu.cpuid)
        leaf1 = table[(1, None)]
        table[(1, None)] = (leaf1[0], leaf1[1], leaf1[2] | (1 << 31), leaf1[3])
        ebx, ecx, edx = struct.unpack("<III", b"XenVMMXenVMM")
        table[(0x4000_0000, None)] = (0x4000_0002, ebx, ecx, edx)
        table[(0x4000_0001, None)] = (XEN_VERSION, 0, 0, 0)
        table[(0x4000_0002, None)] = (1, 0x4000_0000, 0, 0)  # one hypercall page, MSR base
        self.cpuid = table

    def emulate_cpuid(self, cpu: Cpu) -> None:
        leaf, subleaf = cpu.reg("rax") & 0xFFFF_FFFF, cpu.reg("rcx") & 0xFFFF_FFFF
        values = self.cpuid.get((leaf, subleaf)) or self.cpuid.get((leaf, None)) or (0, 0, 0, 0)
        for name, value in zip(("rax", "rbx", "rcx", "rdx"), values, strict=True):
            cpu.set_reg(name, value & 0xFFFF_FFFF)

    # -- frames ----------------------------------------------------------------------------------

    @staticmethod
    def pfn_to_mfn(pfn: int) -> int:
        return pfn ^ MFN_XOR if pfn < NR_PAGES else pfn

    @staticmethod
    def mfn_to_pfn(mfn: int) -> int | None:
        """The domain's pseudo-physical frame of a machine frame (None: not the domain's)."""
        if mfn <= MAX_MFN:
            return mfn ^ MFN_XOR
        return mfn if mfn >= NR_PAGES and mfn != SHARED_INFO_MFN else None

    def machine_to_va(self, cpu: Cpu, maddr: int, size: int = 8) -> int | None:
        pfn = self.mfn_to_pfn(maddr >> 12)
        if pfn is None:
            return None
        va = (pfn * PAGE + (maddr & (PAGE - 1)) + START_KERNEL_MAP) & M64
        if not cpu.memory.probe(va, size, 1):
            return None
        return va

    # -- guest-visible state ---------------------------------------------------------------------

    @staticmethod
    def now_ns(cpu: Cpu) -> int:
        return cpu.read_tsc() // 2  # the TSC counts instructions at a nominal 2 GHz

    def shared_read(self, cpu: Cpu, offset: int, size: int) -> bytes:
        if self.shared_va is not None:
            return cpu.memory.read(self.shared_va + offset, size)
        return bytes(self.shared[offset : offset + size])

    def shared_write(self, cpu: Cpu, offset: int, data: bytes) -> None:
        if self.shared_va is not None:
            cpu.memory.write(self.shared_va + offset, data)
        else:
            self.shared[offset : offset + len(data)] = data

    def vcpu_read(self, cpu: Cpu, offset: int, size: int) -> bytes:
        if self.vcpu_info_va is not None:
            return cpu.memory.read(self.vcpu_info_va + offset, size)
        return self.shared_read(cpu, offset, size)

    def vcpu_write(self, cpu: Cpu, offset: int, data: bytes) -> None:
        if self.vcpu_info_va is not None:
            cpu.memory.write(self.vcpu_info_va + offset, data)
        else:
            self.shared_write(cpu, offset, data)

    def mask(self, cpu: Cpu) -> int:
        return self.vcpu_read(cpu, VCPU_MASK, 1)[0]

    def pending(self, cpu: Cpu) -> int:
        return self.vcpu_read(cpu, VCPU_PENDING, 1)[0]

    def set_mask(self, cpu: Cpu, value: int) -> None:
        self.vcpu_write(cpu, VCPU_MASK, bytes([value]))

    def irqs_enabled(self, cpu: Cpu) -> bool:
        return self.mask(cpu) == 0

    def update_time(self, cpu: Cpu) -> None:
        """Rewrites vcpu_info.time (pvclock, version-protected) and the runstate area."""
        tsc = cpu.read_tsc()
        self.time_version += 2
        self.vcpu_write(cpu, VCPU_TIME, struct.pack("<I", self.time_version - 1))
        self.vcpu_write(
            cpu, VCPU_TIME, struct.pack("<IIQQIbBxx", self.time_version, 0, tsc, tsc // 2, 0x8000_0000, 0, 1)
        )
        if self.runstate_va is not None:
            now = tsc // 2
            running = max(0, now - self.boot_ns - self.steal_ns - self.runstate_blocked_ns)
            update = (1 << 63) | self.boot_ns
            write_struct(cpu, self.runstate_va + 8, "<Q", update)
            write_struct(
                cpu, self.runstate_va, "<iIQQQQQ", 0, 0, update, running, self.steal_ns, self.runstate_blocked_ns, 0
            )
            write_struct(cpu, self.runstate_va + 8, "<Q", self.boot_ns)

    # -- events ------------------------------------------------------------------------------------

    def bind_port(self, kind: str, what: int) -> int:
        port = self.next_port
        self.next_port += 1
        self.ports[port] = (kind, what)
        return port

    def raise_event(self, cpu: Cpu, port: int) -> None:
        """evtchn_set_pending: the port's bit, the selector bit, evtchn_upcall_pending."""
        word, bit = divmod(port, 64)
        self.stats.events_raised += 1
        (pending,) = struct.unpack("<Q", self.shared_read(cpu, SHARED_EVTCHN_PENDING + 8 * word, 8))
        if pending >> bit & 1:
            return
        self.shared_write(cpu, SHARED_EVTCHN_PENDING + 8 * word, struct.pack("<Q", pending | 1 << bit))
        (masked,) = struct.unpack("<Q", self.shared_read(cpu, SHARED_EVTCHN_MASK + 8 * word, 8))
        if masked >> bit & 1:
            return
        (selector,) = struct.unpack("<Q", self.vcpu_read(cpu, VCPU_PENDING_SEL, 8))
        self.vcpu_write(cpu, VCPU_PENDING_SEL, struct.pack("<Q", selector | 1 << word))
        self.vcpu_write(cpu, VCPU_PENDING, b"\x01")

    def port_pending(self, cpu: Cpu, port: int) -> bool:
        word, bit = divmod(port, 64)
        (pending,) = struct.unpack("<Q", self.shared_read(cpu, SHARED_EVTCHN_PENDING + 8 * word, 8))
        return bool(pending >> bit & 1)

    def deliver_pending(self, cpu: Cpu) -> None:
        """An unmasked pending event becomes an upcall through a bounce frame (create_bounce_frame)."""
        callback = self.callbacks.get(CALLBACKTYPE_EVENT)
        if callback is None or not self.pending(cpu) or self.mask(cpu):
            return
        rsp = cpu.reg("rsp")
        rflags = cpu.rflags | IF  # the saved mask, inverted: 0 here, since only unmasked events are delivered
        frame = struct.pack(
            "<7Q", cpu.reg("rcx"), cpu.reg("r11"), cpu.rip, FLAT_KERNEL_CS64, rflags, rsp, FLAT_KERNEL_SS64
        )
        new_rsp = ((rsp & ~15) - len(frame)) & M64
        cpu.memory.write(new_rsp, frame)
        cpu.set_reg("rsp", new_rsp)
        self.set_mask(cpu, 1)
        cpu.rip = callback
        self.stats.events_delivered += 1
        self.charge("event", costs.EVENT_UPCALL)

    def next_deadline(self, cpu: Cpu) -> int | None:
        deadlines = [d for d in (self.periodic_deadline, self.singleshot_deadline) if d is not None]
        if not deadlines:
            return None
        return max(1, (min(deadlines) * 2 - cpu.read_tsc()) // max(1, cpu.tsc_per_instruction))

    def tick(self, cpu: Cpu) -> None:
        now = self.now_ns(cpu)
        fired = False
        if self.periodic_deadline is not None and now >= self.periodic_deadline:
            period = self.timer_period_ns or DEFAULT_TIMER_PERIOD_NS
            self.periodic_deadline += period * ((now - self.periodic_deadline) // period + 1)
            fired = True
        if self.singleshot_deadline is not None and now >= self.singleshot_deadline:
            self.singleshot_deadline = None
            fired = True
        if fired:
            self.steal_ns += self.steal_ns_per_tick
            for port, (kind, what) in sorted(self.ports.items()):
                if kind == "virq" and what == VIRQ_TIMER:
                    self.raise_event(cpu, port)
            self.update_time(cpu)
        self.deliver_pending(cpu)

    # -- the ExitHandler protocol ------------------------------------------------------------------

    def handle_exit(self, cpu: Cpu, insn: SensitiveInsn) -> None:
        if insn.kind == "syscall":
            self.hypercall(cpu, insn)
        elif insn.kind == "cpuid":
            self.trap("cpuid")  # CPUID faulting: the guest's cpuid traps to Xen
            self.emulate_cpuid(cpu)
            cpu.rip = insn.next_rip
            self.stats.replaced["cpuid"] += 1
            self.deliver_pending(cpu)
        else:
            cpu.execute_native(insn)

    def trap(self, what: str, rip: int | None = None) -> None:
        """Counts and charges one trap Xen emulated; `rip` when the instruction faulted (not retired)."""
        self.stats.traps[what] += 1
        self.charge("trap", costs.TRAP_EMULATION)
        if rip is not None:
            self.emulated[rip] += 1

    def fault(self, cpu: Cpu, fault: ArchFault) -> bool:
        if isinstance(fault, InvalidOpcode) and self.emulate_prefixed_cpuid(cpu, fault):
            return True
        if isinstance(fault, GeneralProtection) and fault.insn is not None:
            if self.emulate(cpu, fault.insn):
                self.trap(fault.insn.kind, fault.rip)
                self.deliver_pending(cpu)
                return True
        if isinstance(fault, PageFault):
            self.vcpu_write(cpu, VCPU_CR2, struct.pack("<Q", fault.address))
        # Xen bounces the exception to the guest kernel's handler.
        return self.deliver_to_guest(cpu, fault, costs.TRAP_EMULATION)

    def emulate_prefixed_cpuid(self, cpu: Cpu, fault: ArchFault) -> bool:
        try:
            code = cpu.memory.read(fault.rip, len(XEN_EMULATE_PREFIX) + 2)
        except AddressError:
            return False
        if code != XEN_EMULATE_PREFIX + b"\x0f\xa2":
            return False
        self.trap("cpuid (emulate prefix)", fault.rip)
        self.emulate_cpuid(cpu)
        cpu.rip = fault.rip + len(code)
        self.deliver_pending(cpu)
        return True

    # -- emulate_privileged_op ----------------------------------------------------------------------

    def emulate(self, cpu: Cpu, si: SensitiveInsn) -> bool:
        """Emulates a privileged instruction that trapped; False means Xen refuses (#GP to the guest)."""
        kind = si.kind
        if kind in ("cli", "sti"):
            # Only with a virtual IOPL the kernel may use: then the event mask stands in for IF.
            if self.virtual_iopl < 1:
                return False
            self.set_mask(cpu, 1 if kind == "cli" else 0)
        elif kind in ("in", "out"):
            if self.virtual_iopl < 1:
                return False
            port = si.port if si.port is not None else cpu.reg("rdx") & 0xFFFF
            self.io.append((kind, port, si.io_size))
            del self.io[:-64]
            if kind == "in":
                bits = 8 * si.io_size
                value = (1 << bits) - 1  # no device: the bus floats high
                if si.io_size == 4:
                    cpu.set_reg("rax", value)
                else:
                    cpu.set_reg("rax", (cpu.reg("rax") & ~((1 << bits) - 1)) | value)
        elif kind == "mov_cr_read":
            creg, reg = si.system_register, si.register
            if creg is None or reg is None:
                return False
            value = self.read_cr(cpu, creg.number)
            if value is None:
                return False
            cpu.state[reg.index] = value & M64
        elif kind == "mov_cr_write":
            creg, reg = si.system_register, si.register
            if creg is None or reg is None or not self.write_cr(cpu, creg.number, cpu.state[reg.index]):
                return False
        elif kind in ("mov_dr_read", "mov_dr_write"):
            dreg, reg = si.system_register, si.register
            if dreg is None or reg is None or dreg.number > 7:
                return False
            if kind == "mov_dr_read":
                cpu.state[reg.index] = self.debugregs[dreg.number]
            elif self.set_debugreg(dreg.number, cpu.state[reg.index]) != 0:
                return False
        elif kind in ("rdmsr", "wrmsr"):
            if not self.emulate_msr(cpu, kind):
                return False
        elif kind == "invlpg":
            if si.memory is not None:
                self.invlpgs.append(cpu.effective_address(si.memory))
                del self.invlpgs[:-64]
        elif kind == "wbinvd":
            pass  # an unprivileged domain's wbinvd is ignored
        elif kind == "clts":
            self.guest_cr0 &= ~CR0_TS
        elif kind == "swapgs":
            cpu.gs_base, cpu.kernel_gs_base = cpu.kernel_gs_base, cpu.gs_base
        elif kind == "rdpmc":
            counter = cpu.reg("rcx") & 0xFFFF_FFFF
            if counter >= len(cpu.pmc):
                return False
            cpu.set_reg("rax", cpu.pmc[counter] & 0xFFFF_FFFF)
            cpu.set_reg("rdx", (cpu.pmc[counter] >> 32) & 0xFF)
        else:
            return False  # hlt, lgdt/lidt/ltr/lldt, sysret...: Xen does not emulate them
        cpu.rip = si.next_rip
        return True

    def read_cr(self, cpu: Cpu, number: int) -> int | None:
        if number == 0:
            return self.guest_cr0
        if number == 2:
            return read_u64(cpu, self.vcpu_address(VCPU_CR2)) if self.vcpu_info_va else 0
        if number == 3:
            pfn = self.mfn_to_pfn(self.base_ptr)
            return (pfn if pfn is not None else self.base_ptr) << 12
        if number == 4:
            return self.guest_cr4
        if number == 8:
            return 0  # no local APIC, no TPR
        return None

    def write_cr(self, cpu: Cpu, number: int, value: int) -> bool:
        if number == 0:
            if (value ^ self.guest_cr0) & ~CR0_TS:
                return False  # only TS is the guest's
            self.guest_cr0 = value
        elif number == 2:
            self.vcpu_write(cpu, VCPU_CR2, struct.pack("<Q", value))
        elif number == 3:
            self.base_ptr = self.pfn_to_mfn((value & 0x000F_FFFF_FFFF_F000) >> 12)
            self.tlb_flushes += 1
        elif number == 4:
            self.guest_cr4 = (self.guest_cr4 & ~CR4_GUEST_BITS) | (value & CR4_GUEST_BITS)
        elif number != 8:
            return False
        return True

    def vcpu_address(self, offset: int) -> int:
        assert self.vcpu_info_va is not None
        return self.vcpu_info_va + offset

    def set_debugreg(self, number: int, value: int) -> int:
        if number in (4, 5) or number > 7:
            return -EINVAL
        if number < 4 and (not canonical(value) or (value >= MACH2PHYS_VA and value < START_KERNEL_MAP)):
            return -EPERM  # no breakpoints on Xen's own range
        self.debugregs[number] = value
        return 0

    def emulate_msr(self, cpu: Cpu, kind: str) -> bool:
        index = cpu.reg("rcx") & 0xFFFF_FFFF
        if kind == "rdmsr":
            readers = {
                system.MSR_FS_BASE: lambda: cpu.fs_base,
                system.MSR_GS_BASE: lambda: cpu.gs_base,
                system.MSR_KERNEL_GS_BASE: lambda: cpu.kernel_gs_base,
                system.MSR_EFER: lambda: cpu.msrs[system.MSR_EFER],
                system.MSR_TSC: cpu.read_tsc,
                system.MSR_PAT: lambda: cpu.msrs[system.MSR_PAT],
                system.MSR_APIC_BASE: lambda: cpu.msrs[system.MSR_APIC_BASE],
                0x1A0: lambda: 1,  # IA32_MISC_ENABLE: fast strings
            }
            hidden = (
                system.MSR_STAR,
                system.MSR_LSTAR,
                system.MSR_CSTAR,
                system.MSR_FMASK,
                system.MSR_SYSENTER_CS,
                system.MSR_SYSENTER_ESP,
                system.MSR_SYSENTER_EIP,
            )
            if index in hidden:
                value = 0
            elif index in readers:
                value = readers[index]()
            else:
                return False
            cpu.set_reg("rax", value & 0xFFFF_FFFF)
            cpu.set_reg("rdx", (value >> 32) & 0xFFFF_FFFF)
            return True
        value = ((cpu.reg("rdx") & 0xFFFF_FFFF) << 32) | (cpu.reg("rax") & 0xFFFF_FFFF)
        if index in (system.MSR_FS_BASE, system.MSR_GS_BASE, system.MSR_KERNEL_GS_BASE):
            if not canonical(value):
                return False
            if index == system.MSR_FS_BASE:
                cpu.fs_base = value
            elif index == system.MSR_GS_BASE:
                cpu.gs_base = value
            else:
                cpu.kernel_gs_base = value
            return True
        if index == system.MSR_EFER:
            return value == cpu.msrs[system.MSR_EFER]
        # Xen owns the system-call MSRs: writes are dropped.
        return index in (
            system.MSR_STAR,
            system.MSR_LSTAR,
            system.MSR_CSTAR,
            system.MSR_FMASK,
            system.MSR_SYSENTER_CS,
            system.MSR_SYSENTER_ESP,
            system.MSR_SYSENTER_EIP,
        )

    # -- hypercalls ---------------------------------------------------------------------------------

    def hypercall(self, cpu: Cpu, insn: SensitiveInsn) -> None:
        number = cpu.reg("rax") & 0xFFFF_FFFF
        args = [cpu.reg(r) for r in ("rdi", "rsi", "rdx", "r10", "r8")]
        name = HYPERCALLS.get(number, f"unknown_{number}")
        self.stats.hypercalls[name] += 1
        self.stats.replaced["syscall"] += 1
        self.charge("hypercall", costs.HYPERCALL_ROUND_TRIP)
        # syscall itself clobbers %rcx and %r11 (the stub saves them around it).
        cpu.set_reg("rcx", insn.next_rip)
        cpu.set_reg("r11", cpu.rflags)
        cpu.rip = insn.next_rip
        if number == HYPERCALL_IRET:
            do_iret(self, cpu)
        else:
            result = self.dispatch(cpu, number, args)
            cpu.set_reg("rax", result & M64)
        self.deliver_pending(cpu)

    def dispatch(self, cpu: Cpu, number: int, args: list[int]) -> int:
        name = HYPERCALLS.get(number)
        handler = HANDLERS.get(name) if name else None
        if handler is None:
            return -ENOSYS
        self.charge("hypercall", costs.HYPERCALL_WORK.get(name or "", 0.0))
        try:
            return int(handler(self, cpu, *args))
        except (AddressError, struct.error):
            return -EFAULT

    def block(self, cpu: Cpu, woken: Any) -> None:
        """Blocks the vCPU: time jumps to the next timer; with none, the domain sleeps for good."""
        while not woken():
            deadline = min(
                (d for d in (self.periodic_deadline, self.singleshot_deadline) if d is not None), default=None
            )
            if deadline is None:
                self.halted_reason = "blocked"
                raise system.Stop("hlt")
            now = self.now_ns(cpu)
            if deadline > now:
                cpu.tsc_offset += (deadline - now) * 2
                self.runstate_blocked_ns += deadline - now
            self.tick_timers_only(cpu)

    def tick_timers_only(self, cpu: Cpu) -> None:
        callback = self.callbacks.pop(CALLBACKTYPE_EVENT, None)
        try:
            self.tick(cpu)
        finally:
            if callback is not None:
                self.callbacks[CALLBACKTYPE_EVENT] = callback


__all__ = ["XenPv"]
