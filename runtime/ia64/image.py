"""IA-64 ELF images: segments, symbols and the pv_ops patch-site sections.

An image is an ELF64 little-endian IA-64 executable (ia64-linux-gnu-ld output) linked at physical
addresses (the model fetches instructions untranslated and the runtime identity-maps RAM). The
patch records are read from `.paravirt_bundles` (start, end, type: three 8-byte words per site)
and `.paravirt_branches` (tag, type) as §4.2 lays them out.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from pvgen.runtime.ia64.memory import PhysicalMemory

EM_IA_64 = 50


class ImageError(ValueError):
    """The file is not an IA-64 ELF executable the runtime can load."""


@attrs.frozen
class Image:
    path: str
    entry: int
    segments: tuple[tuple[int, bytes, int], ...]  # (address, file bytes, memory size)
    symbols: dict[str, int]
    sections: dict[str, tuple[int, bytes]]

    @property
    def gp(self) -> int:
        return self.symbols.get("__gp", 0)

    def words(self, section: str) -> list[int]:
        data = self.sections.get(section, (0, b""))[1]
        return [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data) - len(data) % 8, 8)]

    def bundle_sites(self) -> list[tuple[int, int, int]]:
        words = self.words(".paravirt_bundles")
        return [(words[i], words[i + 1], words[i + 2]) for i in range(0, len(words) - 2, 3)]

    def branch_sites(self) -> list[tuple[int, int]]:
        words = self.words(".paravirt_branches")
        return [(words[i], words[i + 1]) for i in range(0, len(words) - 1, 2)]

    def place(self, mem: PhysicalMemory) -> None:
        for address, data, size in self.segments:
            mem.write(address, data + bytes(size - len(data)))


def load_image(path: str | Path) -> Image:
    """Reads an IA-64 ELF executable; ImageError for anything else."""
    try:
        with open(path, "rb") as handle:
            elf = ELFFile(handle)
            if elf["e_machine"] != "EM_IA_64" and elf.header["e_machine"] != EM_IA_64:
                raise ImageError(f"{path}: not an IA-64 ELF file (machine {elf['e_machine']})")
            if elf.elfclass != 64 or not elf.little_endian:
                raise ImageError(f"{path}: expected ELF64 little-endian")
            segments = []
            for segment in elf.iter_segments():
                if segment["p_type"] == "PT_LOAD":
                    segments.append((segment["p_paddr"], segment.data(), segment["p_memsz"]))
            symbols: dict[str, int] = {}
            sections: dict[str, tuple[int, bytes]] = {}
            for section in elf.iter_sections():
                if isinstance(section, SymbolTableSection):
                    for symbol in section.iter_symbols():
                        if symbol.name and symbol["st_shndx"] != "SHN_UNDEF":
                            symbols.setdefault(symbol.name, symbol["st_value"])
                elif section.name in (".paravirt_bundles", ".paravirt_branches", ".paravirt_insts"):
                    sections[section.name] = (section["sh_addr"], section.data())
            return Image(str(path), elf.header["e_entry"], tuple(segments), symbols, sections)
    except (OSError, ELFError) as error:
        raise ImageError(f"{path}: not a well-formed ELF image (truncated or malformed: {error})") from error
