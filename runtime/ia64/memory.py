"""Physical memory of the IA-64 model: sparse 4 KiB pages inside declared RAM ranges.

A page is a tuple of four memoryviews over one bytearray, cast to 1-, 2-, 4- and 8-byte unsigned
elements (IA-64 data is little-endian, like the x86 hosts this runs on), so translated code reads
an aligned ld8 as `page[3][offset >> 3]`. Pages are created on first touch. Pages that hold
translated code are tracked: a write to one of them (from the CPU or through `write`) first calls
`on_code_write(pfn)`, which drops the translations of that page.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Final

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
PAGE_MASK: Final = PAGE_SIZE - 1
#: Physical addresses use bits 62:0 here; bit 63 selects the uncacheable attribute (same memory).
PHYSICAL_MASK: Final = (1 << 63) - 1
#: Element views are usable as-is only where the host byte order matches IA-64's little endian.
FAST_VIEWS: Final = sys.byteorder == "little"

Page = tuple[memoryview, memoryview, memoryview, memoryview]


def new_page(data: bytearray) -> Page:
    view = memoryview(data)
    return view, view.cast("H"), view.cast("I"), view.cast("Q")


class PhysicalMemory:
    """RAM ranges backed lazily by 4 KiB pages, with code-page write tracking."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.pages: dict[int, Page] = {}
        self.code_pages: set[int] = set()
        self.on_code_write: Callable[[int], None] | None = None

    def add_ram(self, base: int, size: int) -> None:
        """Declares [base, base + size) as RAM (page-aligned)."""
        if base & PAGE_MASK or size & PAGE_MASK or size <= 0:
            raise ValueError(f"RAM range {base:#x}+{size:#x} is not page-aligned")
        self.ranges.append((base, base + size))

    def is_ram(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.ranges)

    def page(self, pfn: int) -> Page | None:
        """The page at frame `pfn`, created on first touch; None outside RAM."""
        page = self.pages.get(pfn)
        if page is None and self.is_ram(pfn << PAGE_SHIFT):
            page = self.pages[pfn] = new_page(bytearray(PAGE_SIZE))
        return page

    def _page_or_raise(self, pfn: int) -> Page:
        page = self.page(pfn)
        if page is None:
            from pvgen.runtime.ia64.faults import MachineCheck

            raise MachineCheck(pfn << PAGE_SHIFT)
        return page

    # Byte-level access for loaders, patchers and hypervisor models (physical addresses).

    def read(self, address: int, size: int) -> bytes:
        address &= PHYSICAL_MASK
        out = bytearray()
        while size > 0:
            offset = address & PAGE_MASK
            chunk = min(size, PAGE_SIZE - offset)
            out += self._page_or_raise(address >> PAGE_SHIFT)[0][offset : offset + chunk]
            address += chunk
            size -= chunk
        return bytes(out)

    def write(self, address: int, data: bytes) -> None:
        address &= PHYSICAL_MASK
        position = 0
        while position < len(data):
            offset = address & PAGE_MASK
            chunk = min(len(data) - position, PAGE_SIZE - offset)
            pfn = address >> PAGE_SHIFT
            page = self._page_or_raise(pfn)
            if pfn in self.code_pages and self.on_code_write is not None:
                self.on_code_write(pfn)
            page[0][offset : offset + chunk] = data[position : position + chunk]
            address += chunk
            position += chunk

    def read_u64(self, address: int) -> int:
        return int.from_bytes(self.read(address, 8), "little")

    def write_u64(self, address: int, value: int) -> None:
        self.write(address, (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"))

    def read_uint(self, address: int, size: int) -> int:
        return int.from_bytes(self.read(address, size), "little")

    def write_uint(self, address: int, size: int, value: int) -> None:
        self.write(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
