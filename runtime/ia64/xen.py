"""Xen/IA64 as the environment of the xen instance: XSI, hyperprivops, hypercalls, privop emulation.

The guest kernel runs deprivileged at machine cpl 2 (pv_info.kernel_rpl of the generated layer)
with the machine's psr.ic, psr.i and psr.bn left on. Its virtual processor state is where Linux
expects it (reference §5.3): the mapped registers at XSI_BASE + 0x4000 (virtual CRs at
0x4800 + 8n, psr.ic at XSI_PSR_IC, the bank-1 registers and their NaT bits, banknum,
precover_ifs, the itc offset), and psr.i as the inverse of the event mask byte whose address is
stored at XSI_PSR_I_ADDR (the pending byte just below it). Xen pins the whole area with a machine
translation register at pl 2, so the guest reads and writes it with plain loads and stores.

Breaks from the guest kernel are dispatched as Xen's ia64_handle_break does: the domain's
breakimm (0x1000) is a hypercall (number in r2, arguments in r32..r36, result in r8),
1..0x1a a hyperprivop, anything else is reflected to the guest as a Break fault. A Privileged
Operation fault is emulated against the virtual state (priv_emulate), at a cost; unprivileged but
sensitive instructions (thash, cover, ttag, mov from cpuid/pmd) run on the machine and see the
machine's state, which is why the pv macros exist. Machine TLB misses are filled from the
guest's virtual TLB when it has the translation (with the PTE's privilege level compressed to
kernel_rpl and the region ID moved into the domain's range) and reflected to the guest's IVT
otherwise. Costs come from `cost.py`.
"""

from __future__ import annotations

from array import array
from collections import Counter
from typing import TYPE_CHECKING, Final

from pvgen.generated import pvops_ia64
from pvgen.runtime.ia64 import cost
from pvgen.runtime.ia64.faults import (
    GE_PRIVILEGED_OPERATION,
    GE_PRIVILEGED_REGISTER,
    TLB_MISS_VECTORS,
    VECTORS,
    Interruption,
    MachineCheck,
    Stop,
)
from pvgen.runtime.ia64.state import (
    AR_BSP,
    AR_EFLAG,
    AR_ITC,
    CFM_MASK,
    CR_DCR,
    CR_EOI,
    CR_IFA,
    CR_IFS,
    CR_IHA,
    CR_IIM,
    CR_IIP,
    CR_IIPA,
    CR_IPSR,
    CR_ISR,
    CR_ITIR,
    CR_ITM,
    CR_ITV,
    CR_IVA,
    CR_IVR,
    CR_PTA,
    CR_TPR,
    IFS_V,
    MASK64,
    PSR_BN,
    PSR_CPL,
    PSR_CPL_SHIFT,
    PSR_DT,
    PSR_I,
    PSR_IC,
    PSR_KEPT_ON_INTERRUPTION,
    PSR_L,
    PSR_PP,
    PSR_READABLE,
    PSR_RI,
    PSR_RI_SHIFT,
    PSR_SM,
    SPURIOUS_VECTOR,
)
from pvgen.runtime.ia64.tlb import (
    PAGE_SIZES,
    PTA_VE,
    PTE_P,
    RR_VE,
    Tlb,
    TlbEntry,
    itir_key,
    itir_ps,
    rr_ps,
    rr_rid,
    thash,
)

from pvgen.ia64.insn import Imm, Indirect, Instruction, Reg, Special

if TYPE_CHECKING:
    from pvgen.runtime.ia64.cpu import Cpu

# The XSI area (reference §5.3): shared_info at XSI_BASE, mapped_regs at XSI_BASE + XSI_SIZE.
XSI_BASE: Final = 0xFFFFFFFFFFF00000
XSI_SIZE: Final = 0x4000
XMAPPEDREGS_OFS: Final = XSI_SIZE
XSI_BANK1_R16: Final = XSI_BASE + 0x4400
XSI_BANK0_R16: Final = XSI_BASE + 0x4480
XSI_B1NAT: Final = XSI_BASE + 0x4500
XSI_B0NATS: Final = XSI_BASE + 0x4508
XSI_VPSR: Final = XSI_BASE + 0x4590
XSI_VCR: Final = XSI_BASE + 0x4800  # virtual CR n at XSI_VCR + 8 * n
XSI_IPSR: Final = XSI_VCR + 8 * CR_IPSR
XSI_ISR: Final = XSI_VCR + 8 * CR_ISR
XSI_IIP: Final = XSI_VCR + 8 * CR_IIP
XSI_IFA: Final = XSI_VCR + 8 * CR_IFA
XSI_ITIR: Final = XSI_VCR + 8 * CR_ITIR
XSI_IIPA: Final = XSI_VCR + 8 * CR_IIPA
XSI_IFS: Final = XSI_VCR + 8 * CR_IFS
XSI_IIM: Final = XSI_VCR + 8 * CR_IIM
XSI_IHA: Final = XSI_VCR + 8 * CR_IHA
XSI_PRECOVER_IFS: Final = XSI_BASE + 0x4C00
XSI_PSR_IC: Final = XSI_BASE + 0x4C10
XSI_PSR_I_ADDR: Final = XSI_BASE + 0x4C18
XSI_PENDING_INTERRUPTION: Final = XSI_BASE + 0x4C20
XSI_METAPHYSICAL_MODE: Final = XSI_BASE + 0x4C48
XSI_BANKNUM: Final = XSI_BASE + 0x4C4C
XSI_RRS: Final = XSI_BASE + 0x4C50
XSI_KRS: Final = XSI_BASE + 0x4C90
XSI_ITC_OFFSET: Final = XSI_BASE + 0x4D50
XSI_ITC_LAST: Final = XSI_BASE + 0x4D58
#: vcpu_info[0] opens shared_info: evtchn_upcall_pending (byte 0), evtchn_upcall_mask (byte 1).
EVTCHN_PENDING: Final = XSI_BASE
EVTCHN_MASK: Final = XSI_BASE + 1

#: The machine translation register slot Xen keeps for the XSI pin, and its page size (64 KiB).
XSI_TR_SLOT: Final = 7
XSI_PS: Final = 16
XSI_PAGE: Final = XSI_BASE & ~((1 << XSI_PS) - 1)
_VIEWS: Final = {1: (0, 0), 2: (1, 1), 4: (2, 2), 8: (3, 3)}
# Word indices into the mapped-registers page (offsets of §5.3 minus XMAPPEDREGS_OFS).
_VCR_Q: Final = 0x800 >> 3
_PSR_I_ADDR_Q: Final = 0xC18 >> 3
_PSR_IC_I: Final = 0xC10 >> 2
_METAPHYSICAL_I: Final = 0xC48 >> 2
_BANKNUM_I: Final = 0xC4C >> 2
_MASKS: Final = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: (1 << 64) - 1}
#: Guest region IDs are moved up by this much in the machine (the domain's RID block).
RID_BASE: Final = 0x10000
#: Xen's own VHPT (machine cr.pta): what a native `thash` executed by the guest sees.
MACHINE_PTA: Final = 0x0FF0000 | (15 << 2) | PTA_VE

HYPERPRIVOPS: Final[dict[int, str]] = {
    0x01: "RFI",
    0x02: "RSM_DT",
    0x03: "SSM_DT",
    0x04: "COVER",
    0x05: "ITC_D",
    0x06: "ITC_I",
    0x07: "SSM_I",
    0x08: "GET_IVR",
    0x09: "GET_TPR",
    0x0A: "SET_TPR",
    0x0B: "EOI",
    0x0C: "SET_ITM",
    0x0D: "THASH",
    0x0E: "PTC_GA",
    0x0F: "ITR_D",
    0x10: "GET_RR",
    0x11: "SET_RR",
    0x12: "SET_KR",
    0x13: "FC",
    0x14: "GET_CPUID",
    0x15: "GET_PMD",
    0x16: "GET_EFLAG",
    0x17: "SET_EFLAG",
    0x18: "RSM_BE",
    0x19: "GET_PSR",
    0x1A: "SET_RR0_TO_RR4",
}
HYPERPRIVOP_NUMBERS: Final = {name: number for number, name in HYPERPRIVOPS.items()}
BREAKIMM: Final = 0x1000

# Hypercall numbers (Xen public interface; the 0x400/0x600 firmware-style calls of xensetup.S).
HYPERCALLS: Final[dict[int, str]] = {
    17: "xen_version",
    18: "console_io",
    24: "vcpu_op",
    29: "sched_op",
    30: "callback_op",
    32: "event_channel_op",
    49: "ia64_fast_eoi",
    0x400: "fw_send_ipi",
    0x600: "fw_set_shared_info_va",
    0x700: "opt_feature",
}
XEN_VERSION: Final = (3 << 16) | 4
ENOSYS: Final = -38
CONSOLEIO_WRITE: Final = 0
SCHEDOP_YIELD, SCHEDOP_BLOCK, SCHEDOP_SHUTDOWN = 0, 1, 2
CALLBACKOP_REGISTER: Final = 0
XENCOMM_INLINE_FLAG: Final = 0x8000000000000000


class XenModel:
    """Xen/IA64 hosting one paravirtualised domain on the CPU model."""

    name = "xen"

    def __init__(self, *, emulate_privops: bool = True, xsi_machine_address: int = 0x0800_0000) -> None:
        self.emulate_privops = emulate_privops
        self.xsi_pa = xsi_machine_address
        self.kernel_rpl = int(pvops_ia64.DATA["xen"]["info.kernel_rpl"])
        self.vrr = [(n << 8) | (14 << 2) for n in range(8)]
        self.vtlb = Tlb()
        self.vpsr_extra = 0  # virtual psr bits kept by Xen (pp, sp, ...) beyond the mapped ones
        self.eflag = 0
        self.vpending: set[int] = set()
        self.vin_service: list[int] = []
        self.event_callback = 0
        self.shared_info_va = XSI_BASE
        self.console = bytearray()
        self.hyperprivops: Counter[str] = Counter()
        self.hypercalls: Counter[str] = Counter()
        self.emulated: Counter[str] = Counter()
        self.reflected: Counter[str] = Counter()
        self.tlb_fills = 0
        self._hyperprivops = {name: getattr(self, f"_hp_{name.lower()}") for name in HYPERPRIVOPS.values()}

    # -- setup ---------------------------------------------------------------------------------------

    def attach(self, cpu: Cpu) -> None:
        self.cpu = cpu
        if not cpu.mem.is_ram(self.xsi_pa):
            cpu.mem.add_ram(self.xsi_pa, 1 << XSI_PS)
        self._pages = []
        for number in range(1 << (XSI_PS - 12)):
            page = cpu.mem.page((self.xsi_pa >> 12) + number)
            assert page is not None
            self._pages.append(page)
        regs = self._pages[(XSI_BASE + XMAPPEDREGS_OFS - XSI_PAGE) >> 12]
        self._regs_q, self._regs_i = regs[3], regs[2]
        cpu.cr[CR_PTA] = MACHINE_PTA
        for region in range(8):
            cpu.rr[region] = self._machine_rr(self.vrr[region])
        self._pin_xsi()
        self.write(XSI_PSR_I_ADDR, EVTCHN_MASK)
        self.write(EVTCHN_MASK, 1, 1)  # events masked: virtual psr.i = 0
        self.write(XSI_PSR_IC, 1, 4)
        self.write(XSI_BANKNUM, 1, 4)
        self.set_vcr(CR_TPR, 1 << 16)  # reset values, as the processor's: all interrupts masked
        self.set_vcr(CR_ITV, 1 << 16)

    def boot(self, cpu: Cpu, entry: int, psr: int) -> None:
        """Starts the guest at `entry` with virtual `psr` (virtual cpl 0, machine kernel_rpl)."""
        cpu.ip = entry
        self.set_virtual_psr(cpu, psr)

    def _machine_rr(self, vrr: int) -> int:
        return (vrr & 0xFF) | (((rr_rid(vrr) + RID_BASE) & 0xFFFFFF) << 8)

    def _pin_xsi(self) -> None:
        """Xen's translation register for the XSI page: pl 2 (the guest kernel's), read-write."""
        pte = self.xsi_pa | PTE_P | (1 << 5) | (1 << 6) | (2 << 7) | (2 << 9)
        rid = rr_rid(self.cpu.rr[7])
        self.cpu.tlb.insert_tr("d", XSI_TR_SLOT, TlbEntry(XSI_BASE & ~((1 << XSI_PS) - 1), XSI_PS, rid, pte))
        self.cpu.flush_data_maps()

    def install_translation(self, side: str, slot: int, va: int, ps: int, pte: int) -> None:
        """A translation register the domain builder gives the guest (guest view + machine pin)."""
        entry = TlbEntry(va & ~((1 << ps) - 1), ps, rr_rid(self.vrr[va >> 61]), pte)
        self.vtlb.insert_tr(side, slot, entry)
        self.cpu.tlb.insert_tr(side, slot, self._machine_entry(entry))
        self.cpu.flush_data_maps()

    def _machine_entry(self, entry: TlbEntry) -> TlbEntry:
        """The guest's translation as the machine holds it: pl raised to kernel_rpl, rid moved."""
        pl = max((entry.pte >> 7) & 3, self.kernel_rpl)
        pte = (entry.pte & ~(3 << 7)) | (pl << 7)
        return TlbEntry(entry.va, entry.ps, (entry.rid + RID_BASE) & 0xFFFFFF, pte, entry.key)

    # -- XSI access ----------------------------------------------------------------------------------

    def _pa(self, va: int) -> int:
        return self.xsi_pa + (va - XSI_PAGE)

    def read(self, va: int, size: int = 8) -> int:
        """Reads the XSI area straight from its pages (the hot path of every hyperprivop)."""
        offset = va - XSI_PAGE
        view, shift = _VIEWS[size]
        return int(self._pages[offset >> 12][view][(offset & 0xFFF) >> shift])

    def write(self, va: int, value: int, size: int = 8) -> None:
        offset = va - XSI_PAGE
        view, shift = _VIEWS[size]
        self._pages[offset >> 12][view][(offset & 0xFFF) >> shift] = value & _MASKS[size]

    # The mapped registers fill page 4 of the area; the hot paths index it as 8- and 4-byte words.

    def vcr(self, number: int) -> int:
        return int(self._regs_q[_VCR_Q + number])

    def set_vcr(self, number: int, value: int) -> None:
        self._regs_q[_VCR_Q + number] = value & MASK64

    def _guest_byte(self, va: int) -> int:
        """A byte the guest addressed (the event mask, the pending byte) through its mapping."""
        if XSI_PAGE <= va < XSI_PAGE + (1 << XSI_PS):
            offset = va - XSI_PAGE
            return int(self._pages[offset >> 12][0][offset & 0xFFF])
        return self.cpu.mem.read_uint(va, 1)

    def _set_guest_byte(self, va: int, value: int) -> None:
        if XSI_PAGE <= va < XSI_PAGE + (1 << XSI_PS):
            offset = va - XSI_PAGE
            self._pages[offset >> 12][0][offset & 0xFFF] = value
        else:
            self.cpu.mem.write_uint(va, 1, value)

    # -- the virtual PSR -----------------------------------------------------------------------------

    def virtual_cpl(self, cpu: Cpu) -> int:
        return 0 if cpu.cpl == self.kernel_rpl else cpu.cpl

    def virtual_psr(self, cpu: Cpu) -> int:
        """The PSR the guest believes it has: i from the mask byte, ic, dt, bn, cpl virtualised."""
        words = self._regs_i
        psr = cpu.psr & ~(PSR_I | PSR_IC | PSR_BN | PSR_CPL | PSR_DT | PSR_RI)
        psr |= self.vpsr_extra
        if not self._guest_byte(self._regs_q[_PSR_I_ADDR_Q]):
            psr |= PSR_I
        if words[_PSR_IC_I]:
            psr |= PSR_IC
        if not words[_METAPHYSICAL_I]:
            psr |= PSR_DT
        if words[_BANKNUM_I]:
            psr |= PSR_BN
        return psr | ((0 if cpu.cpl == self.kernel_rpl else cpu.cpl) << PSR_CPL_SHIFT)

    def set_virtual_psr(self, cpu: Cpu, vpsr: int) -> None:
        words = self._regs_i
        mask_address = int(self._regs_q[_PSR_I_ADDR_Q])
        was_masked = self._guest_byte(mask_address)
        self._set_guest_byte(mask_address, 0 if vpsr & PSR_I else 1)
        words[_PSR_IC_I] = 1 if vpsr & PSR_IC else 0
        metaphysical = not vpsr & PSR_DT
        words[_METAPHYSICAL_I] = int(metaphysical)
        if cpu.metaphysical != metaphysical:
            cpu.metaphysical = metaphysical
            cpu.flush_data_maps()
        if bool(vpsr & PSR_BN) != bool(words[_BANKNUM_I]):
            self.switch_bank(cpu, 1 if vpsr & PSR_BN else 0)
        vcpl = (vpsr >> PSR_CPL_SHIFT) & 3
        mcpl = self.kernel_rpl if vcpl <= self.kernel_rpl else vcpl
        self.vpsr_extra = vpsr & PSR_PP
        machine = vpsr & ~(PSR_CPL | PSR_RI | PSR_DT | PSR_PP)
        machine |= PSR_I | PSR_IC | PSR_BN | (mcpl << PSR_CPL_SHIFT) | (0 if metaphysical else PSR_DT)
        cpu.set_psr(machine)
        if vpsr & PSR_I and was_masked and self._event_pending():
            cpu.attention = True

    def switch_bank(self, cpu: Cpu, bank: int) -> None:
        """The virtual bsw: machine r16-r31 trade places with the bank kept in the XSI.

        Each bank's NaT bits are kept the way st8.spill leaves them in ar.unat: the bit of r(16+n)
        is bit ((address of its slot) >> 3) & 63, which is what XEN_BSW_1's ld8.fill expects."""
        save, load = (XSI_BANK0_R16, XSI_BANK1_R16) if bank else (XSI_BANK1_R16, XSI_BANK0_R16)
        save_nat, load_nat = (XSI_B0NATS, XSI_B1NAT) if bank else (XSI_B1NAT, XSI_B0NATS)
        words = self._pages[(save - XSI_PAGE) >> 12][3]
        first = ((save - XSI_PAGE) & 0xFFF) >> 3
        words[first : first + 16] = array("Q", cpu.g[16:32])
        nats_out = 0
        if cpu.nat >> 16 & 0xFFFF:
            for n in range(16):
                if cpu.nat >> (16 + n) & 1:
                    nats_out |= 1 << (((save + 8 * n) >> 3) & 63)
        self.write(save_nat, nats_out)
        first = ((load - XSI_PAGE) & 0xFFF) >> 3
        cpu.g[16:32] = words[first : first + 16].tolist()
        nats_in = self.read(load_nat)
        cpu.nat &= ~(0xFFFF << 16)
        if nats_in:
            for n in range(16):
                if nats_in >> (((load + 8 * n) >> 3) & 63) & 1:
                    cpu.set_nat(16 + n)
        self.write(XSI_BANKNUM, bank, 4)

    def _event_pending(self) -> bool:
        return bool(self._guest_byte(self.read(XSI_PSR_I_ADDR) - 1))

    # -- environment hooks ---------------------------------------------------------------------------

    def on_break(self, cpu: Cpu, imm: int, iip: int, slot: int) -> int:
        if cpu.cpl == self.kernel_rpl:
            if imm == BREAKIMM:
                return self.hypercall(cpu, iip, slot)
            name = HYPERPRIVOPS.get(imm)
            if name is not None:
                return self.hyperprivop(cpu, name, iip, slot)
        fault = Interruption("break_instruction", iim=imm)
        fault.locate(iip, slot, None)
        return self.reflect(cpu, fault)

    def on_fault(self, cpu: Cpu, fault: Interruption) -> int:
        if isinstance(fault, MachineCheck):
            cpu.record_fault(fault, "fatal")
            raise Stop("crash", f"domain crashed: {fault}", ip=cpu.ip, fault=fault)
        privileged = fault.kind == "general_exception" and fault.isr & 0xF0 in (
            GE_PRIVILEGED_OPERATION,
            GE_PRIVILEGED_REGISTER,
        )
        if privileged and self.emulate_privops and cpu.cpl == self.kernel_rpl and isinstance(fault.insn, Instruction):
            key = self.emulate(cpu, fault)
            if key is not None:
                cpu.record_fault(fault, "emulated")
                return key
        if fault.kind in TLB_MISS_VECTORS and fault.ifa is not None:
            key = self._fill_from_vtlb(cpu, fault)
            if key is not None:
                cpu.record_fault(fault, "filled")
                return key
        return self.reflect(cpu, fault)

    def on_attention(self, cpu: Cpu, key: int) -> int:
        vpsr = self.virtual_psr(cpu)
        if vpsr & PSR_I and self._event_pending() and self.read(XSI_PSR_IC, 4):
            return self.deliver_event(cpu, key)
        return key

    # -- reflection into the guest -------------------------------------------------------------------

    def reflect(self, cpu: Cpu, fault: Interruption) -> int:
        """Delivers `fault` through the guest's virtual IVT (Xen's reflect_interruption)."""
        viva = self.vcr(CR_IVA)
        vpsr = self.virtual_psr(cpu)
        kind = fault.kind
        if viva == 0 or fault.vector is None:
            cpu.record_fault(fault, "fatal")
            raise Stop("crash", f"domain crashed: {fault} (no guest IVT)", ip=cpu.ip, fault=fault)
        if kind in TLB_MISS_VECTORS:
            kind = "data_nested_tlb" if not vpsr & PSR_IC else self._miss_kind(fault.ifa or 0)
        elif not vpsr & PSR_IC:
            cpu.record_fault(fault, "fatal")
            raise Stop("crash", f"domain crashed: {fault} with virtual psr.ic off", ip=cpu.ip, fault=fault)
        iip = fault.iip if fault.iip is not None else cpu.ip & -16
        slot = fault.slot
        self.set_vcr(CR_ISR, (fault.isr & ~(3 << 41)) | (slot << 41))
        if vpsr & PSR_IC:
            self.set_vcr(CR_IPSR, (vpsr & ~PSR_RI) | (slot << PSR_RI_SHIFT))
            self.set_vcr(CR_IIP, iip)
            self.set_vcr(CR_IIPA, iip)
            self.set_vcr(CR_IFS, 0)
            self.write(XSI_PRECOVER_IFS, cpu.cfm | IFS_V)  # Xen covers lazily
            if fault.ifa is not None:
                self.set_vcr(CR_IFA, fault.ifa)
                vrr = self.vrr[fault.ifa >> 61]
                self.set_vcr(CR_ITIR, (rr_ps(vrr) << 2) | (rr_rid(vrr) << 8))
                self.set_vcr(CR_IHA, thash(fault.ifa, self.vcr(CR_PTA), vrr))
            if fault.iim is not None:
                self.set_vcr(CR_IIM, fault.iim)
        vdcr = self.vcr(CR_DCR)
        new = (vpsr & PSR_KEPT_ON_INTERRUPTION) | (vdcr & 1) * PSR_PP | ((vdcr >> 1) & 1) * 2
        self.set_virtual_psr(cpu, new)
        self.reflected[fault.name] += 1
        cpu.record_fault(fault, "reflected" if kind == fault.kind else f"reflected as {kind}")
        cpu.charge("xen_reflect")
        return (viva & ~0x7FFF) | VECTORS[kind]

    def _miss_kind(self, va: int) -> str:
        walker = self.vcr(CR_PTA) & PTA_VE and self.vrr[va >> 61] & RR_VE
        return "data_tlb" if walker else "alt_data_tlb"

    def deliver_event(self, cpu: Cpu, key: int) -> int:
        """An event upcall: to the registered callback, else the guest's External Interrupt vector."""
        fault = Interruption("external_interrupt")
        fault.locate(key & -16, key & 15, None)
        target = self.reflect(cpu, fault)
        self.hypercalls["event_upcall"] += 1
        return self.event_callback or target

    def _fill_from_vtlb(self, cpu: Cpu, fault: Interruption) -> int | None:
        va = fault.ifa or 0
        entry = self.vtlb.lookup("d", va, rr_rid(self.vrr[va >> 61]))
        if entry is None or not entry.pte & PTE_P:
            return None
        if cpu.tlb.insert_tc("d", self._machine_entry(entry)):
            cpu.flush_data_maps()
        self.tlb_fills += 1
        cpu.charge("xen_tlb_fill")
        return (fault.iip or 0) | fault.slot

    # -- hyperprivops ---------------------------------------------------------------------------------

    def hyperprivop(self, cpu: Cpu, name: str, iip: int, slot: int) -> int:
        """Performs hyperprivop `name` (reference §5.1 register conventions); returns where to go on."""
        self.hyperprivops[name] += 1
        cpu.charge("hyperprivop", cost.hyperprivop_cycles(name))
        after = cpu.next_key(iip, slot)
        result = self._hyperprivops[name](cpu, cpu.g, after)
        return after if result is None else result

    def _hp_rfi(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        return self.virtual_rfi(cpu)

    def _hp_rsm_dt(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.set_virtual_psr(cpu, self.virtual_psr(cpu) & ~PSR_DT)
        return None

    def _hp_ssm_dt(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.set_virtual_psr(cpu, self.virtual_psr(cpu) | PSR_DT)
        return None

    def _hp_cover(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        if not self.read(XSI_PSR_IC, 4):
            self.set_vcr(CR_IFS, cpu.cfm | IFS_V)
        cpu.ar[AR_BSP] = (cpu.ar[AR_BSP] + 8 * (cpu.cfm & 0x7F)) & MASK64
        cpu.cfm = 0
        return None

    def _hp_itc_d(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.virtual_itc(cpu, "d", g[8])
        return None

    def _hp_itc_i(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.virtual_itc(cpu, "i", g[8])
        return None

    def _hp_ssm_i(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        vpsr = self.virtual_psr(cpu)
        self._set_guest_byte(self.read(XSI_PSR_I_ADDR), 0)
        if self._event_pending() and vpsr & PSR_IC:
            return self.deliver_event(cpu, after)
        return None

    def _hp_get_ivr(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        g[8] = self.virtual_ivr()
        return None

    def _hp_get_tpr(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        g[8] = self.vcr(CR_TPR)
        return None

    def _hp_set_tpr(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.set_vcr(CR_TPR, g[8])
        return None

    def _hp_eoi(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        if self.vin_service:
            self.vin_service.remove(max(self.vin_service))
        return None

    def _hp_set_itm(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.set_vcr(CR_ITM, g[8])
        return None

    def _hp_thash(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        g[8] = thash(g[8], self.vcr(CR_PTA), self.vrr[g[8] >> 61])
        return None

    def _hp_ptc_ga(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.virtual_ptc(cpu, g[8], g[9])
        return None

    def _hp_itr_d(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.virtual_itr(cpu, "d", g[9], g[8])
        return None

    def _hp_get_rr(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        g[8] = self.vrr[g[8] >> 61]
        return None

    def _hp_set_rr(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.set_rr(cpu, g[8] >> 61, g[9])
        return None

    def _hp_set_kr(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.write(XSI_KRS + 8 * (g[8] & 7), g[9])
        cpu.ar[g[8] & 7] = g[9]  # kernel registers stay readable natively at every level
        return None

    def _hp_fc(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        cpu.fc(g[8])
        return None

    def _hp_get_cpuid(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        g[8] = cpu.cpuid[g[8]] if g[8] < len(cpu.cpuid) else 0
        return None

    def _hp_get_pmd(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        g[8] = 0  # the domain has no performance monitors of its own
        return None

    def _hp_get_eflag(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        g[8] = self.eflag
        return None

    def _hp_set_eflag(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        self.eflag = g[8]
        return None

    def _hp_rsm_be(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        cpu.set_psr(cpu.psr & ~2)
        return None

    def _hp_get_psr(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        g[8] = self.virtual_psr(cpu) & PSR_READABLE
        return None

    def _hp_set_rr0_to_rr4(self, cpu: Cpu, g: list[int], after: int) -> int | None:
        for region, value in enumerate((g[8], g[9], g[10], g[11], g[14])):
            self.set_rr(cpu, region, value)
        return None

    def virtual_rfi(self, cpu: Cpu) -> int:
        ipsr, iip, ifs = self.vcr(CR_IPSR), self.vcr(CR_IIP), self.vcr(CR_IFS)
        if ifs & IFS_V:
            cpu.cfm = ifs & CFM_MASK
            cpu.ar[AR_BSP] = (cpu.ar[AR_BSP] - 8 * (cpu.cfm & 0x7F)) & MASK64
        self.set_virtual_psr(cpu, ipsr)
        return (iip & -16) | ((ipsr >> PSR_RI_SHIFT) & 3)

    def virtual_itc(self, cpu: Cpu, side: str, pte: int) -> None:
        ifa, itir = self.vcr(CR_IFA), self.vcr(CR_ITIR)
        ps = itir_ps(itir)
        if ps not in PAGE_SIZES:
            ps = rr_ps(self.vrr[ifa >> 61])
        entry = TlbEntry(ifa & ~((1 << ps) - 1), ps, rr_rid(self.vrr[ifa >> 61]), pte, itir_key(itir))
        self.vtlb.insert_tc(side, entry)
        if cpu.tlb.insert_tc(side, self._machine_entry(entry)):
            cpu.flush_data_maps()

    def virtual_itr(self, cpu: Cpu, side: str, slot: int, pte: int) -> None:
        ifa, itir = self.vcr(CR_IFA), self.vcr(CR_ITIR)
        ps = itir_ps(itir)
        entry = TlbEntry(ifa & ~((1 << ps) - 1), ps, rr_rid(self.vrr[ifa >> 61]), pte, itir_key(itir))
        self.vtlb.insert_tr(side, slot, entry)
        cpu.tlb.insert_tr(side, slot % XSI_TR_SLOT, self._machine_entry(entry))
        cpu.flush_data_maps()

    def virtual_ptc(self, cpu: Cpu, va: int, size: int) -> None:
        ps = (size >> 2) & 0x3F
        vrid = rr_rid(self.vrr[va >> 61])
        self.vtlb.purge(va, ps, vrid)
        cpu.tlb.purge(va, ps, (vrid + RID_BASE) & 0xFFFFFF)
        cpu.forget_data_range(va, ps)

    def set_rr(self, cpu: Cpu, region: int, value: int) -> None:
        self.vrr[region] = value & 0xFFFFFFFF
        self.write(XSI_RRS + 8 * region, value)
        cpu.rr[region] = self._machine_rr(value)
        cpu.flush_data_maps()
        if region == 7:  # Xen re-pins its region-7 translations with the new RID (ia64_new_rr7)
            self._pin_xsi()

    def virtual_ivr(self) -> int:
        tpr = self.vcr(CR_TPR)
        candidates = [v for v in self.vpending if not tpr >> 16 & 1]
        if not candidates:
            return SPURIOUS_VECTOR
        vector = max(candidates)
        self.vpending.discard(vector)
        self.vin_service.append(vector)
        return vector

    # -- privileged-operation emulation ---------------------------------------------------------------

    def emulate(self, cpu: Cpu, fault: Interruption) -> int | None:
        """priv_emulate: performs the faulting instruction on the virtual state; None if unknown."""
        insn = fault.insn
        assert isinstance(insn, Instruction) and fault.iip is not None
        g = cpu.g
        ops = insn.operands
        mnemonic = insn.mnemonic
        after = cpu.next_key(fault.iip, fault.slot)

        def value(operand: object) -> int:
            assert isinstance(operand, Reg)
            return g[operand.num]

        def target(number: int, result: int) -> None:
            if number:
                g[number] = result & MASK64
                cpu.set_nat(number, False)

        handled = True
        if mnemonic == "mov" and len(ops) == 2 and isinstance(ops[1], Reg) and ops[1].file == "cr":
            target(ops[0].num, self._read_vcr(ops[1].num))
        elif mnemonic == "mov" and isinstance(ops[0], Reg) and ops[0].file == "cr":
            self._write_vcr(cpu, ops[0].num, value(ops[1]))
        elif mnemonic == "mov" and len(ops) == 2 and isinstance(ops[1], Special) and ops[1].name == "psr":
            target(ops[0].num, self.virtual_psr(cpu) & PSR_READABLE)
        elif mnemonic == "mov" and isinstance(ops[0], Special) and ops[0].name == "psr.l":
            vpsr = self.virtual_psr(cpu)
            self.set_virtual_psr(cpu, (vpsr & ~PSR_L) | (value(ops[1]) & PSR_L))
        elif mnemonic in ("ssm", "rsm"):
            assert isinstance(ops[0], Imm)
            vpsr = self.virtual_psr(cpu)
            bits = ops[0].value & PSR_SM
            self.set_virtual_psr(cpu, vpsr | bits if mnemonic == "ssm" else vpsr & ~bits)
        elif mnemonic in ("itc.d", "itc.i"):
            self.virtual_itc(cpu, mnemonic[-1], value(ops[0]))
        elif mnemonic in ("itr.d", "itr.i"):
            assert isinstance(ops[0], Indirect)
            self.virtual_itr(cpu, mnemonic[-1], g[ops[0].index], value(ops[1]))
        elif mnemonic in ("ptc.l", "ptc.g", "ptc.ga"):
            self.virtual_ptc(cpu, value(ops[0]), value(ops[1]))
        elif mnemonic == "ptc.e":
            self.vtlb.purge_all()
            cpu.tlb.purge_all()
            cpu.flush_data_maps()
        elif mnemonic == "mov" and isinstance(ops[0], Indirect) and ops[0].file == "rr":
            self.set_rr(cpu, g[ops[0].index] >> 61, value(ops[1]))
        elif mnemonic == "mov" and len(ops) == 2 and isinstance(ops[1], Indirect) and ops[1].file == "rr":
            target(ops[0].num, self.vrr[g[ops[1].index] >> 61])
        elif mnemonic == "mov" and isinstance(ops[0], Indirect):
            pass  # pkr/dbr/ibr/pmc/pmd writes: accepted and ignored
        elif mnemonic == "mov" and isinstance(ops[1], Indirect):
            target(ops[0].num, 0)
        elif mnemonic.startswith("mov.") and isinstance(ops[0], Reg) and ops[0].file == "ar":
            number = ops[0].num
            written = value(ops[1]) if isinstance(ops[1], Reg) else ops[1].value & MASK64  # type: ignore[union-attr]
            if number < 8:
                self.write(XSI_KRS + 8 * number, written)
                cpu.ar[number] = written
            elif number == AR_ITC:
                self.write(XSI_ITC_OFFSET, (written - cpu.read_itc()) & MASK64)
            elif number == AR_EFLAG:
                self.eflag = written
            else:
                handled = False
        elif mnemonic.startswith("mov.") and isinstance(ops[1], Reg) and ops[1].file == "ar":
            number = ops[1].num
            if number == AR_ITC:
                target(ops[0].num, cpu.read_itc() + self.read(XSI_ITC_OFFSET))
            else:
                target(ops[0].num, cpu.ar[number])
        elif mnemonic == "rfi":
            after = self.virtual_rfi(cpu)
        elif mnemonic in ("bsw.0", "bsw.1"):
            self.switch_bank(cpu, int(mnemonic[-1]))
        elif mnemonic in ("tpa", "tak"):
            va = value(ops[1])
            entry = self.vtlb.lookup("d", va, rr_rid(self.vrr[va >> 61]))
            if entry is None:
                return None
            target(ops[0].num, entry.physical(va) if mnemonic == "tpa" else entry.key)
        else:
            handled = False
        if not handled:
            return None
        self.emulated[mnemonic] += 1
        cpu.charge("xen_privop_emulation")
        return after

    def _read_vcr(self, number: int) -> int:
        if number == CR_IVR:
            return self.virtual_ivr()
        if number == CR_EOI:
            return 0
        return self.vcr(number)

    def _write_vcr(self, cpu: Cpu, number: int, value: int) -> None:
        if number == CR_EOI:
            if self.vin_service:
                self.vin_service.remove(max(self.vin_service))
            return
        if number == CR_IVA:
            value &= ~0x7FFF
        self.set_vcr(number, value)

    # -- hypercalls ------------------------------------------------------------------------------------

    def hypercall(self, cpu: Cpu, iip: int, slot: int) -> int:
        g = cpu.g
        number = g[2]
        name = HYPERCALLS.get(number, f"hypercall_{number}")
        self.hypercalls[name] += 1
        cpu.charge("xen_hypercall")
        args = g[32:37]
        result = 0
        if name == "fw_set_shared_info_va":
            self.shared_info_va = g[28]
        elif name == "fw_send_ipi":
            self.vpending.add(g[15] & 0xFF)
        elif name == "xen_version":
            result = XEN_VERSION if args[0] == 0 else 0
        elif name == "console_io":
            if args[0] == CONSOLEIO_WRITE:
                self.console += self._guest_bytes(cpu, args[2], args[1])
                result = args[1]
            else:
                result = ENOSYS
        elif name == "sched_op":
            if args[0] == SCHEDOP_SHUTDOWN:
                raise Stop("shutdown", f"SCHEDOP_shutdown (reason {args[1]})", ip=cpu.next_key(iip, slot))
        elif name == "callback_op":
            if args[0] == CALLBACKOP_REGISTER:
                address = args[1] & ~XENCOMM_INLINE_FLAG
                self.event_callback = cpu.mem.read_u64(address + 8)
            else:
                result = ENOSYS
        elif name in ("vcpu_op", "event_channel_op", "ia64_fast_eoi", "opt_feature"):
            result = 0
        else:
            result = ENOSYS
        g[8] = result & MASK64
        return cpu.next_key(iip, slot)

    def _guest_bytes(self, cpu: Cpu, address: int, size: int) -> bytes:
        """Guest memory named by a xencomm inline handle (physical) or a guest address (identity)."""
        return cpu.mem.read(address & ~XENCOMM_INLINE_FLAG, min(size, 1 << 16))

    # -- reporting -------------------------------------------------------------------------------------

    def guest_tlb(self) -> list[tuple[str, TlbEntry]]:
        return self.vtlb.entries()
