"""IA-64 translation: region registers, the TLB (translation registers and cache) and the VHPT hash.

An address's region (bits 63:61) selects a region register, whose region ID (rr.rid) tags the
translations: an entry matches an address when its rid equals the region's rid and the address's
bits 60:ps equal the entry's virtual page number. Each side (instruction, data) has 8 translation
registers (`itr`/`dtr`, inserted by `itr.i`/`itr.d`, never replaced) and a translation cache
(`itc.i`/`itc.d`, FIFO replacement). `thash` computes the short-format VHPT address
(SDM Vol. 2 §4.1.5): region bits of the address, pta.base above the table size, and the page
number times 8 inside it.
"""

from __future__ import annotations

from typing import Final

import attrs

REGION_SHIFT: Final = 61
OFFSET_MASK: Final = (1 << REGION_SHIFT) - 1

# Field positions.
PTE_P: Final = 1 << 0
PTE_A: Final = 1 << 5
PTE_D: Final = 1 << 6
PTE_PPN_MASK: Final = ((1 << 50) - 1) & ~0xFFF  # ppn, bits 49:12
PTA_VE: Final = 1 << 0
PTA_VF: Final = 1 << 8
PTA_BASE_MASK: Final = OFFSET_MASK & ~0x7FFF  # pta.base bits 60:15
RR_VE: Final = 1 << 0

#: Page sizes (log2) the architecture lists for itc/itr/ptc.
PAGE_SIZES: Final = frozenset({12, 13, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32})
TC_ENTRIES: Final = 64
TR_ENTRIES: Final = 8


def rr_rid(rr: int) -> int:
    return (rr >> 8) & 0xFFFFFF


def rr_ps(rr: int) -> int:
    return (rr >> 2) & 0x3F


def itir_ps(itir: int) -> int:
    return (itir >> 2) & 0x3F


def itir_key(itir: int) -> int:
    return (itir >> 8) & 0xFFFFFF


def pte_pl(pte: int) -> int:
    return (pte >> 7) & 3


def pte_ar(pte: int) -> int:
    return (pte >> 9) & 7


def access_rights(pte: int, cpl: int) -> tuple[bool, bool, bool]:
    """(read, write, execute) allowed at `cpl` by the page's ar/pl (SDM Vol. 2 Table 4-3)."""
    ar, pl = pte_ar(pte), pte_pl(pte)
    if ar == 7:
        return False, False, True  # execute-only / execute-promote page
    if cpl > pl:
        return False, False, False
    # ar 4 and 5 add write permission at privilege level 0 only.
    return True, ar in (2, 3, 6) or (ar in (4, 5) and cpl == 0), ar in (1, 3, 5, 6)


def thash(va: int, pta: int, rr: int) -> int:
    """The VHPT entry address for `va` (short format; long format: an implementation-chosen hash)."""
    size = (pta >> 2) & 0x3F
    mask = (1 << size) - 1
    ps = rr_ps(rr)
    region = va & ~OFFSET_MASK
    if pta & PTA_VF:
        # Long format (32-byte entries): the hash function is implementation-specific. The model
        # mixes the page number with the region ID, as Itanium 2's does in spirit.
        index = (((va & OFFSET_MASK) >> ps) ^ (rr_rid(rr) << 10)) << 5
        return region | (pta & PTA_BASE_MASK & ~mask) | (index & mask)
    return region | (pta & PTA_BASE_MASK & ~mask) | ((((va & OFFSET_MASK) >> ps) << 3) & mask)


def ttag(va: int, rr: int) -> int:
    """The long-format VHPT tag of `va` (implementation-specific; bit 63 is the invalid bit, 0)."""
    return (((va & OFFSET_MASK) >> rr_ps(rr)) ^ (rr_rid(rr) << 39)) & ((1 << 63) - 1)


@attrs.frozen
class TlbEntry:
    """One translation: `va` is the page base as inserted (region bits included), `rid` its tag."""

    va: int
    ps: int
    rid: int
    pte: int
    key: int = 0

    @property
    def vpn(self) -> int:
        return (self.va & OFFSET_MASK) >> self.ps

    def covers(self, va: int, rid: int) -> bool:
        return rid == self.rid and (va & OFFSET_MASK) >> self.ps == self.vpn

    def overlaps(self, va: int, ps: int, rid: int) -> bool:
        """Whether [va, va + 2**ps) (in region ID `rid`) shares a byte with this entry."""
        if rid != self.rid:
            return False
        shift = max(ps, self.ps)
        return (va & OFFSET_MASK) >> shift == (self.va & OFFSET_MASK) >> shift

    def physical(self, va: int) -> int:
        size_mask = (1 << self.ps) - 1
        return (self.pte & PTE_PPN_MASK & ~size_mask) | (va & size_mask)

    def describe(self) -> str:
        return f"va {self.va:#x} ps {self.ps} rid {self.rid:#x} pte {self.pte:#x} key {self.key:#x}"


@attrs.define
class Tlb:
    """Instruction and data translation registers and caches of one processor."""

    itr: list[TlbEntry | None] = attrs.field(factory=lambda: [None] * TR_ENTRIES)
    dtr: list[TlbEntry | None] = attrs.field(factory=lambda: [None] * TR_ENTRIES)
    itc: list[TlbEntry] = attrs.field(factory=list)
    dtc: list[TlbEntry] = attrs.field(factory=list)

    def lookup(self, side: str, va: int, rid: int) -> TlbEntry | None:
        for entry in self.dtr if side == "d" else self.itr:
            if entry is not None and entry.covers(va, rid):
                return entry
        for entry in reversed(self.dtc if side == "d" else self.itc):
            if entry.covers(va, rid):
                return entry
        return None

    def insert_tc(self, side: str, entry: TlbEntry) -> bool:
        """itc.i/itc.d: overlapping cache entries are purged first, the oldest goes when full.

        Returns whether an existing entry was removed (cached translations may be stale)."""
        cache = self.dtc if side == "d" else self.itc
        kept = [e for e in cache if not e.overlaps(entry.va, entry.ps, entry.rid)]
        removed = len(kept) != len(cache)
        kept.append(entry)
        if len(kept) > TC_ENTRIES:
            del kept[0]
            removed = True
        cache[:] = kept
        return removed

    def insert_tr(self, side: str, slot: int, entry: TlbEntry) -> None:
        registers = self.dtr if side == "d" else self.itr
        registers[slot % TR_ENTRIES] = entry

    def purge(self, va: int, ps: int, rid: int, sides: str = "id") -> list[TlbEntry]:
        """ptc.l/ptc.g/ptc.ga: removes cache entries overlapping the range; returns them."""
        removed: list[TlbEntry] = []
        for side in sides:
            cache = self.dtc if side == "d" else self.itc
            keep = []
            for entry in cache:
                (removed if entry.overlaps(va, ps, rid) else keep).append(entry)
            cache[:] = keep
        return removed

    def purge_all(self) -> None:
        """ptc.e: empties both translation caches (the registers stay)."""
        self.itc.clear()
        self.dtc.clear()

    def entries(self) -> list[tuple[str, TlbEntry]]:
        """Every valid entry, tagged itr/dtr/itc/dtc, registers first."""
        out: list[tuple[str, TlbEntry]] = []
        out += [("itr", e) for e in self.itr if e is not None]
        out += [("dtr", e) for e in self.dtr if e is not None]
        out += [("itc", e) for e in self.itc]
        out += [("dtc", e) for e in self.dtc]
        return out
