"""IA-64 system semantics: PSR/CR/AR/RR moves, the TLB instructions, memory, interrupts, delivery.

These are the `Cpu` methods translated code calls for everything that is not a plain register
operation: each checks privilege (cpl 0, psr.ic where the architecture asks for it) and raises the
architectural `Interruption`, performs data translation for the load/store slow paths, runs the
interrupt controller (pending vectors, TPR, IVR acknowledge, EOI, the ITM timer) and delivers
interruptions through the IVT (SDM Vol. 2 §5.5). The state they act on is declared here and owned
by `Cpu`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pvgen.runtime.ia64.faults import (
    ISR_NA,
    ISR_R,
    ISR_W,
    TLB_MISS_VECTORS,
    VECTORS,
    Interruption,
    MachineCheck,
    illegal_operation,
    privileged_operation,
    privileged_register,
    reserved_field,
)
from pvgen.runtime.ia64.memory import FAST_VIEWS, PAGE_SHIFT, PHYSICAL_MASK, Page, PhysicalMemory
from pvgen.runtime.ia64.state import (
    AR_BSP,
    AR_BSPSTORE,
    AR_CCV,
    AR_EC,
    AR_ITC,
    AR_PFS,
    AR_RSC,
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
    IMPLEMENTED_CRS,
    INTERRUPTION_CRS,
    MASK64,
    PSR_BN,
    PSR_CPL,
    PSR_CPL_SHIFT,
    PSR_DT,
    PSR_IC,
    PSR_KEPT_ON_INTERRUPTION,
    PSR_L,
    PSR_PP,
    PSR_READABLE,
    PSR_RI,
    PSR_RI_SHIFT,
    PSR_SI,
    PSR_SM,
    PSR_UM,
    READ_ONLY_CRS,
    SPURIOUS_VECTOR,
    WRITE_ONLY_CRS,
)
from pvgen.runtime.ia64.tlb import (
    OFFSET_MASK,
    PAGE_SIZES,
    PTA_VE,
    PTE_A,
    PTE_D,
    PTE_P,
    RR_VE,
    Tlb,
    TlbEntry,
    access_rights,
    itir_key,
    itir_ps,
    rr_ps,
    rr_rid,
    thash,
    ttag,
)

if TYPE_CHECKING:
    from pvgen.runtime.ia64.cpu import Environment

_VIEW = {1: (0, 0, 0xFF), 2: (1, 1, 0xFFFF), 4: (2, 2, 0xFFFFFFFF), 8: (3, 3, MASK64)}


class SystemInstructions:
    """The system-instruction half of `Cpu` (see the module docstring)."""

    mem: PhysicalMemory
    g: list[int]
    nat: int
    ar: list[int]
    cr: list[int]
    rr: list[int]
    indirect: dict[str, dict[int, int]]
    cpuid: list[int]
    psr: int
    cpl: int
    cfm: int
    tlb: Tlb
    RM: dict[int, Page]
    WM: dict[int, Page]
    metaphysical: bool
    ip: int
    attention: bool
    itc_base: int
    pending: set[int]
    in_service: list[int]
    env: Environment
    set_psr: Callable[[int], None]
    set_nat: Callable[..., None]
    flush_data_maps: Callable[[], None]
    forget_data_range: Callable[[int, int], None]
    invalidate_code_page: Callable[[int], None]
    charge: Callable[..., None]
    cycles: Callable[[], int]

    def _require_cpl0(self, what: str) -> None:
        if self.cpl:
            raise privileged_operation(f"{what} at cpl {self.cpl}")

    # -- PSR instructions -----------------------------------------------------------------------------

    def read_psr(self) -> int:
        self._require_cpl0("mov from psr")
        return self.psr & PSR_READABLE

    def mov_psr_l(self, value: int) -> None:
        self._require_cpl0("mov psr.l")
        self.set_psr((self.psr & ~PSR_L) | (value & PSR_L))

    def mov_psr_um(self, value: int) -> None:
        self.set_psr((self.psr & ~PSR_UM) | (value & PSR_UM))

    def ssm(self, mask: int) -> None:
        self._require_cpl0("ssm")
        self.set_psr(self.psr | (mask & PSR_SM))

    def rsm(self, mask: int) -> None:
        self._require_cpl0("rsm")
        self.set_psr(self.psr & ~(mask & PSR_SM))

    def sum(self, mask: int) -> None:
        self.set_psr(self.psr | (mask & PSR_UM))

    def rum(self, mask: int) -> None:
        self.set_psr(self.psr & ~(mask & PSR_UM))

    # -- control and application registers ----------------------------------------------------------

    def mov_from_cr(self, number: int) -> int:
        if self.cpl:
            raise privileged_operation(f"mov from cr{number} at cpl {self.cpl}")
        if number not in IMPLEMENTED_CRS:
            raise illegal_operation(f"cr{number} is not implemented")
        if number in INTERRUPTION_CRS and self.psr & PSR_IC:
            raise illegal_operation(f"cr{number} read with psr.ic = 1")
        if number == CR_IVR:
            return self.acknowledge_interrupt()
        if number in WRITE_ONLY_CRS:
            return 0
        if 68 <= number <= 71:
            base = (number - 68) * 64
            return sum(1 << (v - base) for v in self.pending if base <= v < base + 64)
        return self.cr[number]

    def mov_to_cr(self, number: int, value: int) -> None:
        if self.cpl:
            raise privileged_operation(f"mov to cr{number} at cpl {self.cpl}")
        if number not in IMPLEMENTED_CRS or number in READ_ONLY_CRS:
            raise illegal_operation(f"cr{number} is not writable")
        if number in INTERRUPTION_CRS and self.psr & PSR_IC:
            raise illegal_operation(f"cr{number} written with psr.ic = 1")
        if number == CR_EOI:
            self.end_of_interrupt()
            return
        if number == CR_IVA:
            value &= ~0x7FFF
        self.cr[number] = value
        if number in (CR_TPR, CR_ITM, CR_ITV):
            self.attention = True

    def mov_from_ar(self, number: int) -> int:
        if number == AR_ITC:
            if self.psr & PSR_SI and self.cpl:
                raise privileged_register("ar.itc read with psr.si = 1")
            return self.read_itc()
        return self.ar[number]

    def mov_to_ar(self, number: int, value: int) -> None:
        if number < 8 or number == AR_ITC:
            if self.cpl:
                raise privileged_register(f"ar{number} written at cpl {self.cpl}")
            if number == AR_ITC:
                self.itc_base = value - self.cycles()
                return
        elif number == AR_BSP:
            raise illegal_operation("ar.bsp is read-only")
        elif number == AR_BSPSTORE:
            self.ar[AR_BSP] = value
        elif number == AR_RSC:
            # rsc.pl cannot be set more privileged than the current level.
            value = (value & ~0xC) | (max((value >> 2) & 3, self.cpl) << 2)
        elif number == AR_EC:
            value &= 63
        self.ar[number] = value

    def read_itc(self) -> int:
        return (self.itc_base + self.cycles()) & MASK64

    # -- indirect register files, TLB -----------------------------------------------------------------

    def mov_to_ind(self, file: str, index: int, value: int) -> None:
        self._require_cpl0(f"mov to {file}[]")
        if file == "rr":
            if rr_ps(value) not in PAGE_SIZES:
                raise reserved_field(f"rr page size {rr_ps(value)}")
            self.rr[index >> 61] = value & 0xFFFFFFFF
            self.flush_data_maps()
            return
        self.indirect[file][index & 0xFF] = value

    def mov_from_ind(self, file: str, index: int) -> int:
        if file == "cpuid":
            return self.cpuid[index] if index < len(self.cpuid) else 0
        if file == "pmd":
            return self.indirect["pmd"].get(index & 0xFF, 0)
        self._require_cpl0(f"mov from {file}[]")
        if file == "rr":
            return self.rr[index >> 61]
        return self.indirect[file].get(index & 0xFF, 0)

    def _insertion(self, pte: int) -> TlbEntry:
        ifa, itir = self.cr[CR_IFA], self.cr[CR_ITIR]
        ps = itir_ps(itir)
        if ps not in PAGE_SIZES:
            raise reserved_field(f"itir page size {ps}")
        return TlbEntry(ifa & ~((1 << ps) - 1), ps, rr_rid(self.rr[ifa >> 61]), pte, itir_key(itir))

    def itc(self, side: str, pte: int) -> None:
        self._require_cpl0(f"itc.{side}")
        if self.psr & PSR_IC:
            raise illegal_operation(f"itc.{side} with psr.ic = 1")
        if self.tlb.insert_tc(side, self._insertion(pte)):
            self.flush_data_maps()  # overlapping entries went: cached pages may have used them

    def itr(self, side: str, slot: int, pte: int) -> None:
        self._require_cpl0(f"itr.{side}")
        if self.psr & PSR_IC:
            raise illegal_operation(f"itr.{side} with psr.ic = 1")
        self.tlb.insert_tr(side, slot, self._insertion(pte))
        self.flush_data_maps()

    def ptc(self, va: int, size: int) -> None:
        self._require_cpl0("ptc")
        ps = (size >> 2) & 0x3F
        self.tlb.purge(va, ps, rr_rid(self.rr[va >> 61]))
        self.forget_data_range(va, ps)

    def ptc_e(self, _va: int) -> None:
        self._require_cpl0("ptc.e")
        self.tlb.purge_all()
        self.flush_data_maps()

    def thash(self, va: int) -> int:
        return thash(va, self.cr[CR_PTA], self.rr[va >> 61])

    def ttag(self, va: int) -> int:
        return ttag(va, self.rr[va >> 61])

    def tpa(self, va: int) -> int:
        self._require_cpl0("tpa")
        entry = self.tlb.lookup("d", va, rr_rid(self.rr[va >> 61]))
        if entry is None:
            raise self._tlb_miss(va, ISR_NA)
        return entry.physical(va)

    def tak(self, va: int) -> int:
        self._require_cpl0("tak")
        entry = self.tlb.lookup("d", va, rr_rid(self.rr[va >> 61]))
        return entry.key if entry is not None else 1

    def fc(self, _va: int) -> None:
        """fc/fc.i: caches are not modelled; the data is already coherent."""

    # -- register stack, banks, interruption return --------------------------------------------------

    def cover(self) -> None:
        if not self.psr & PSR_IC:
            self.cr[CR_IFS] = self.cfm | IFS_V
        self.ar[AR_BSP] = (self.ar[AR_BSP] + 8 * (self.cfm & 0x7F)) & MASK64
        self.cfm = 0

    def clrrrb(self) -> None:
        self.cfm &= (1 << 18) - 1

    def bsw(self, bank: int) -> None:
        self._require_cpl0(f"bsw.{bank}")
        self.set_psr(self.psr | PSR_BN if bank else self.psr & ~PSR_BN)

    def rfi(self) -> int:
        self._require_cpl0("rfi")
        ipsr, iip, ifs = self.cr[CR_IPSR], self.cr[CR_IIP], self.cr[CR_IFS]
        if ifs & IFS_V:
            self.cfm = ifs & CFM_MASK
            self.ar[AR_BSP] = (self.ar[AR_BSP] - 8 * (self.cfm & 0x7F)) & MASK64
        slot = (ipsr >> PSR_RI_SHIFT) & 3
        self.set_psr(ipsr & ~PSR_RI)
        if self.pending:
            self.attention = True
        return (iip & -16) | slot

    def br_call(self) -> None:
        cfm = self.cfm
        self.ar[AR_PFS] = (self.cpl << 62) | ((self.ar[AR_EC] & 63) << 52) | cfm
        self.cfm = (cfm & 0x7F) - ((cfm >> 7) & 0x7F) if cfm else 0

    def br_ret(self, target: int) -> int:
        pfs = self.ar[AR_PFS]
        self.cfm = pfs & CFM_MASK
        self.ar[AR_EC] = (pfs >> 52) & 63
        ppl = pfs >> 62
        if ppl > self.cpl:  # a return may only lower privilege
            self.set_psr((self.psr & ~PSR_CPL) | (ppl << PSR_CPL_SHIFT))
        return target

    def break_instruction(self, imm: int, iip: int, slot: int) -> int:
        self.events["break"] += 1
        return self.env.on_break(self, imm, iip, slot)

    # -- memory ---------------------------------------------------------------------------------------

    def _tlb_miss(self, va: int, isr: int) -> Interruption:
        walker = self.cr[CR_PTA] & PTA_VE and self.rr[va >> 61] & RR_VE
        return Interruption("data_tlb" if walker else "alt_data_tlb", ifa=va, isr=isr)

    def translate_data(self, va: int, write: bool) -> tuple[Page, int]:
        """The physical page for a data access (filling the fast maps); raises translation faults."""
        isr = ISR_W if write else ISR_R
        cache_write = True
        if self.psr & PSR_DT:
            rid = rr_rid(self.rr[va >> 61])
            entry = self.tlb.lookup("d", va, rid)
            if entry is None:
                raise self._tlb_miss(va, isr)
            pte = entry.pte
            if not pte & PTE_P:
                raise Interruption("page_not_present", ifa=va, isr=isr)
            can_read, can_write, _ = access_rights(pte, self.cpl)
            if not (can_write if write else can_read):
                raise Interruption("data_access_rights", ifa=va, isr=isr)
            if not pte & PTE_A:
                raise Interruption("data_access_bit", ifa=va, isr=isr)
            if write and not pte & PTE_D:
                raise Interruption("dirty_bit", ifa=va, isr=isr)
            cache_write = can_write and bool(pte & PTE_D)
            pa = entry.physical(va)
        elif self.metaphysical:
            entry = next((e for e in self.tlb.dtr if e is not None and e.covers(va, e.rid) and va >> 61 == 7), None)
            pa = entry.physical(va) if entry is not None else va & OFFSET_MASK
        else:
            pa = va & PHYSICAL_MASK
        pfn = pa >> PAGE_SHIFT
        page = self.mem.page(pfn)
        if page is None:
            raise MachineCheck(pa)
        if FAST_VIEWS:
            self.RM[va >> PAGE_SHIFT] = page
            if cache_write and pfn not in self.mem.code_pages:
                self.WM[va >> PAGE_SHIFT] = page
        return page, pfn

    def load(self, va: int, size: int) -> int:
        if va & (size - 1):
            raise Interruption("unaligned_reference", ifa=va, isr=ISR_R)
        page, _ = self.translate_data(va, False)
        view, shift, _mask = _VIEW[size]
        return int(page[view][(va & 0xFFF) >> shift])

    def ld_s(self, va: int, size: int, target: int) -> int:
        """ld.s: a fault is deferred as a NaT in the target register."""
        try:
            value = self.load(va, size)
        except Interruption:
            self.set_nat(target)
            return 0
        return value

    def store(self, va: int, size: int, value: int) -> None:
        if va & (size - 1):
            raise Interruption("unaligned_reference", ifa=va, isr=ISR_W)
        page, pfn = self.translate_data(va, True)
        if pfn in self.mem.code_pages:
            self.invalidate_code_page(pfn)
        view, shift, mask = _VIEW[size]
        page[view][(va & 0xFFF) >> shift] = value & mask

    def cmpxchg(self, va: int, size: int, new: int) -> int:
        if va & (size - 1):
            raise Interruption("unaligned_reference", ifa=va, isr=ISR_W | ISR_R)
        page, pfn = self.translate_data(va, True)
        view, shift, mask = _VIEW[size]
        offset = (va & 0xFFF) >> shift
        old = int(page[view][offset])
        if old == self.ar[AR_CCV]:
            if pfn in self.mem.code_pages:
                self.invalidate_code_page(pfn)
            page[view][offset] = new & mask
        return old

    # -- interrupts -----------------------------------------------------------------------------------

    def pend_interrupt(self, vector: int) -> None:
        self.pending.add(vector)
        self.attention = True

    def _masked(self, vector: int) -> bool:
        tpr = self.cr[CR_TPR]
        if tpr >> 16 & 1:
            return True
        if vector >> 4 <= (tpr >> 4) & 0xF and (tpr >> 4) & 0xF:
            return True
        return bool(self.in_service) and vector <= max(self.in_service)

    def deliverable_interrupt(self) -> int | None:
        candidates = [v for v in self.pending if not self._masked(v)]
        return max(candidates) if candidates else None

    def acknowledge_interrupt(self) -> int:
        """cr.ivr: the highest pending unmasked vector moves to in-service (15 if none)."""
        vector = self.deliverable_interrupt()
        if vector is None:
            return SPURIOUS_VECTOR
        self.pending.discard(vector)
        self.in_service.append(vector)
        return vector

    def end_of_interrupt(self) -> None:
        if self.in_service:
            self.in_service.remove(max(self.in_service))
            self.attention = True

    def check_timer(self) -> None:
        itv, itm = self.cr[CR_ITV], self.cr[CR_ITM]
        if itm and not itv >> 16 & 1 and self.read_itc() >= itm:
            self.pend_interrupt(itv & 0xFF)
            self.cr[CR_ITM] = 0

    # -- interruption delivery ----------------------------------------------------------------------------

    def deliver(self, fault: Interruption) -> int:
        """Delivers an interruption through the IVT (SDM Vol. 2 §5.5); returns the handler's key."""
        psr, cr = self.psr, self.cr
        kind = fault.kind
        if kind in TLB_MISS_VECTORS and not psr & PSR_IC:
            kind = "data_nested_tlb"
        iip = fault.iip if fault.iip is not None else self.ip & -16
        slot = fault.slot
        cr[CR_ISR] = (fault.isr & ~(3 << 41)) | (slot << 41)
        if psr & PSR_IC:
            cr[CR_IPSR] = (psr & ~PSR_RI) | (slot << PSR_RI_SHIFT)
            cr[CR_IIP] = iip
            cr[CR_IIPA] = iip
            cr[CR_IFS] = 0
            if fault.ifa is not None:
                cr[CR_IFA] = fault.ifa
                rr = self.rr[fault.ifa >> 61]
                cr[CR_ITIR] = (rr_ps(rr) << 2) | (rr_rid(rr) << 8)
                cr[CR_IHA] = self.thash(fault.ifa)
            if fault.iim is not None:
                cr[CR_IIM] = fault.iim
        dcr = cr[CR_DCR]
        new = psr & PSR_KEPT_ON_INTERRUPTION
        new |= (dcr & 1) * PSR_PP | ((dcr >> 1) & 1) * 2  # dcr.pp -> psr.pp, dcr.be -> psr.be
        self.set_psr(new)
        self.charge("interruption")
        return (cr[CR_IVA] & ~0x7FFF) | VECTORS[kind]
