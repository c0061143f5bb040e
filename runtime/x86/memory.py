"""Flat 64-bit virtual memory: page-aligned regions with r/w/x permissions.

Translated code reaches memory through eight dictionaries keyed by page base, one per
access size, readable and writable apart; each value is a memoryview of that page cast
to the access width. The key is computed as `addr & (-4096 | (size - 1))`, so a
misaligned, non-canonical or wrapped address simply misses and takes the slow path
(`load`/`store`), which checks permissions, crosses pages byte by byte and raises #PF
or #GP. A page that holds translated code is absent from the writable dictionaries, so
every write to it goes through `store`, which invalidates the translations it overlaps:
that is how self-modifying code and run-time patching are seen.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Protocol

import attrs
from pvgen.runtime.x86.faults import PF_FETCH, PF_PRESENT, PF_USER, PF_WRITE, GeneralProtection, PageFault

PAGE = 4096
PAGE_MASK = -PAGE
M64 = (1 << 64) - 1
READ, WRITE, EXEC = 1, 2, 4
_SIZES = (1, 2, 4, 8)
# The fast path reads pages as native machine words.
FAST_PATH = sys.byteorder == "little"


def parse_perms(perms: str | int) -> int:
    """'rwx'-style text (any subset, '-' allowed) or READ|WRITE|EXEC bits."""
    if isinstance(perms, int):
        return perms & 7
    bits = 0
    for char in perms:
        if char == "r":
            bits |= READ
        elif char == "w":
            bits |= WRITE
        elif char == "x":
            bits |= EXEC
        elif char != "-":
            raise ValueError(f"unknown permission {char!r} in {perms!r}; expected letters from 'rwx'")
    return bits


def canonical(addr: int) -> bool:
    """Whether a 64-bit address is canonical (48-bit virtual addresses)."""
    top = addr >> 47
    return top == 0 or top == 0x1FFFF


class AddressError(ValueError):
    """A host-side access (loader, test, hypervisor model) to memory that is not mapped."""


class CodeWatcher(Protocol):
    """A translation that must be dropped when the bytes it was built from change."""

    def overlaps(self, start: int, end: int) -> bool: ...

    def invalidate(self) -> None: ...


@attrs.define(eq=False)
class Region:
    """A mapped range: base and size are page-aligned."""

    base: int
    size: int
    perms: int
    data: bytearray
    name: str = ""

    @property
    def end(self) -> int:
        return self.base + self.size


class Memory:
    """The address space of one CPU model."""

    def __init__(self) -> None:
        self.regions: list[Region] = []
        self._page_region: dict[int, Region] = {}
        # By size index (1, 2, 4, 8 bytes): page base -> memoryview cast to that width.
        self.readable: tuple[dict[int, memoryview], ...] = ({}, {}, {}, {})
        self.writable: tuple[dict[int, memoryview], ...] = ({}, {}, {}, {})
        self._code: dict[int, list[CodeWatcher]] = {}
        # Set by the CPU: accesses count as user-mode (CPL 3) in #PF error codes.
        self.user_mode = False

    # -- mapping ---------------------------------------------------------------------

    def map(self, base: int, size: int, perms: str | int = "rw", data: bytes = b"", name: str = "") -> Region:
        """Maps [base, base + size) with `perms`; `data` fills it from the start."""
        if base % PAGE or size <= 0 or size % PAGE:
            raise ValueError(f"region {base:#x}+{size:#x} must be page-aligned and non-empty")
        if base < 0 or base + size > 1 << 64:
            raise ValueError(f"region {base:#x}+{size:#x} is outside the 64-bit address space")
        if len(data) > size:
            raise ValueError(f"{len(data)} bytes of data do not fit in a region of {size:#x}")
        for region in self.regions:
            if base < region.end and region.base < base + size:
                raise ValueError(f"region {base:#x}+{size:#x} overlaps {region.name or hex(region.base)}")
        buffer = bytearray(size)
        buffer[: len(data)] = data
        region = Region(base, size, parse_perms(perms), buffer, name)
        self.regions.append(region)
        self.regions.sort(key=lambda r: r.base)
        for page in range(base, base + size, PAGE):
            self._page_region[page] = region
            self._refresh_page(page)
        return region

    def unmap(self, base: int) -> None:
        """Removes the region that starts at `base`; translations from it are dropped."""
        region = self._region_at(base)
        if region.base != base:
            raise AddressError(f"no region starts at {base:#x}")
        self.regions.remove(region)
        for page in range(region.base, region.end, PAGE):
            self._drop_code(page)
            del self._page_region[page]
            self._refresh_page(page)

    def protect(self, base: int, size: int, perms: str | int) -> None:
        """Changes the permissions of whole regions inside [base, base + size)."""
        bits = parse_perms(perms)
        for region in self.regions:
            if base <= region.base and region.end <= base + size:
                region.perms = bits
                for page in range(region.base, region.end, PAGE):
                    self._drop_code(page)
                    self._refresh_page(page)

    def _region_at(self, addr: int) -> Region:
        region = self._page_region.get(addr & PAGE_MASK)
        if region is None:
            raise AddressError(f"address {addr:#x} is not mapped")
        return region

    def region_of(self, addr: int) -> Region | None:
        return self._page_region.get(addr & PAGE_MASK)

    def _refresh_page(self, page: int) -> None:
        region = self._page_region.get(page)
        for i in range(4):
            self.readable[i].pop(page, None)
            self.writable[i].pop(page, None)
        if region is None or not FAST_PATH:
            return
        view = memoryview(region.data)[page - region.base : page - region.base + PAGE]
        for i, cast in enumerate((view.cast("B"), view.cast("H"), view.cast("I"), view.cast("Q"))):
            if region.perms & READ:
                self.readable[i][page] = cast
            if region.perms & WRITE and page not in self._code:
                self.writable[i][page] = cast

    # -- host-side access (no permission checks) ---------------------------------------

    def read(self, addr: int, size: int) -> bytes:
        """Bytes at [addr, addr + size), ignoring permissions; every byte must be mapped."""
        out = bytearray()
        while size > 0:
            region = self._region_at(addr)
            offset = addr - region.base
            chunk = min(size, region.size - offset)
            out += region.data[offset : offset + chunk]
            addr += chunk
            size -= chunk
        return bytes(out)

    def write(self, addr: int, data: bytes) -> bool:
        """Writes `data` ignoring permissions; returns whether translations were dropped."""
        start = addr
        view = memoryview(bytes(data))
        while view:
            region = self._region_at(addr)
            offset = addr - region.base
            chunk = min(len(view), region.size - offset)
            region.data[offset : offset + chunk] = view[:chunk]
            addr += chunk
            view = view[chunk:]
        return self._invalidate_range(start, start + len(data))

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write_u64(self, addr: int, value: int) -> bool:
        return self.write(addr, (value & M64).to_bytes(8, "little"))

    # -- guest access (permissions, faults) ---------------------------------------------

    def _check(self, addr: int, size: int, need: int, rip: int) -> list[tuple[Region, int, int]]:
        """The (region, offset, length) pieces of a guest access, or the fault it raises."""
        addr &= M64
        last = (addr + size - 1) & M64
        if not canonical(addr) or not canonical(last):
            raise GeneralProtection(rip, 0, detail=f"non-canonical address {addr:#x}")
        pieces = []
        while size > 0:
            region = self._page_region.get(addr & PAGE_MASK)
            if region is None or not region.perms & need:
                code = (PF_PRESENT if region is not None else 0) | (PF_USER if self.user_mode else 0)
                code |= PF_WRITE if need == WRITE else PF_FETCH if need == EXEC else 0
                raise PageFault(rip, code, addr)
            offset = addr - region.base
            chunk = min(size, PAGE - (addr & (PAGE - 1)))
            pieces.append((region, offset, chunk))
            addr = (addr + chunk) & M64
            size -= chunk
        return pieces

    def load(self, addr: int, size: int, rip: int) -> int:
        """A guest read of `size` bytes (little-endian) with permission checks."""
        out = b"".join(bytes(r.data[o : o + n]) for r, o, n in self._check(addr, size, READ, rip))
        return int.from_bytes(out, "little")

    def load_bytes(self, addr: int, size: int, rip: int) -> bytes:
        return b"".join(bytes(r.data[o : o + n]) for r, o, n in self._check(addr, size, READ, rip))

    def store(self, addr: int, size: int, value: int, rip: int) -> bool:
        """A guest write; returns whether it dropped translations (self-modifying code)."""
        pieces = self._check(addr, size, WRITE, rip)
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        pos = 0
        for region, offset, chunk in pieces:
            region.data[offset : offset + chunk] = data[pos : pos + chunk]
            pos += chunk
        addr &= M64
        if addr & PAGE_MASK not in self._code and (addr + size - 1) & PAGE_MASK not in self._code:
            return False
        return self._invalidate_range(addr, addr + size)

    def store_bytes(self, addr: int, data: bytes, rip: int) -> bool:
        pieces = self._check(addr, len(data), WRITE, rip)
        pos = 0
        for region, offset, chunk in pieces:
            region.data[offset : offset + chunk] = data[pos : pos + chunk]
            pos += chunk
        return self._invalidate_range(addr & M64, (addr & M64) + len(data))

    def fetch(self, addr: int, size: int, rip: int) -> bytes:
        """Up to `size` executable bytes at `addr`; #PF if not even the first one is."""
        addr &= M64
        if not canonical(addr):
            raise GeneralProtection(rip, 0, detail=f"non-canonical fetch address {addr:#x}")
        out = bytearray()
        while len(out) < size:
            region = self._page_region.get(addr & PAGE_MASK)
            if region is None or not region.perms & EXEC:
                if not out:
                    code = (PF_PRESENT if region is not None else 0) | PF_FETCH | (PF_USER if self.user_mode else 0)
                    raise PageFault(rip, code, addr)
                break
            offset = addr - region.base
            chunk = min(size - len(out), PAGE - (addr & (PAGE - 1)))
            out += region.data[offset : offset + chunk]
            addr += chunk
        return bytes(out)

    def probe(self, addr: int, size: int, need: int) -> bool:
        """Whether a guest access would succeed (no fault raised)."""
        try:
            self._check(addr, size, need, 0)
        except (PageFault, GeneralProtection):
            return False
        return True

    # -- translations ------------------------------------------------------------------

    def watch_code(self, watcher: CodeWatcher, ranges: Iterable[tuple[int, int]]) -> None:
        """Registers a translation built from the bytes in `ranges` ([start, end) pairs)."""
        pages: set[int] = set()
        for start, end in ranges:
            pages.update(range(start & PAGE_MASK, end, PAGE))
        for page in sorted(pages):
            watchers = self._code.get(page)
            if watchers is None:
                self._code[page] = [watcher]
                for i in range(4):
                    self.writable[i].pop(page, None)
            else:
                watchers.append(watcher)

    def unwatch_code(self, watcher: CodeWatcher, ranges: Iterable[tuple[int, int]]) -> None:
        pages: set[int] = set()
        for start, end in ranges:
            pages.update(range(start & PAGE_MASK, end, PAGE))
        for page in sorted(pages):
            watchers = self._code.get(page)
            if watchers is None:
                continue
            if watcher in watchers:
                watchers.remove(watcher)
            if not watchers:
                del self._code[page]
                self._refresh_page(page)

    def _invalidate_range(self, start: int, end: int) -> bool:
        hit = False
        for page in range(start & PAGE_MASK, end, PAGE):
            for watcher in list(self._code.get(page, ())):
                if watcher.overlaps(start, end):
                    watcher.invalidate()
                    hit = True
        return hit

    def _drop_code(self, page: int) -> None:
        for watcher in list(self._code.get(page, ())):
            watcher.invalidate()

    def code_pages(self) -> list[int]:
        return sorted(self._code)
