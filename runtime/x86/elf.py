"""A minimal ELF64 loader: maps the PT_LOAD segments of a linked x86-64 image.

Enough for kernel-style test images linked with `ld -Ttext=0xffffffff81000000`:
segments are mapped page-aligned with their r/w/x permissions (pages two segments
share get the union), .bss is zero-filled, and the symbol table gives function and
data addresses.
"""

from __future__ import annotations

import struct
from pathlib import Path

import attrs
from pvgen.runtime.x86.memory import EXEC, PAGE, READ, WRITE, Memory

_PT_LOAD = 1
_SHT_SYMTAB = 2
_PF_X, _PF_W, _PF_R = 1, 2, 4


class ElfError(ValueError):
    """The file is not a little-endian ELF64 x86-64 image this loader understands."""


@attrs.frozen
class Image:
    """What was loaded: the entry point and the symbols (name -> address)."""

    entry: int
    symbols: dict[str, int]
    segments: tuple[tuple[int, int, int], ...]  # (address, size, perms)


def load_elf(memory: Memory, path: str | Path) -> Image:
    """Maps the image at `path` into `memory`."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfError(f"{path}: not a little-endian ELF64 file")
    (machine,) = struct.unpack_from("<H", data, 18)
    if machine != 62:
        raise ElfError(f"{path}: machine {machine} is not x86-64")
    entry, phoff, shoff = struct.unpack_from("<QQQ", data, 24)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
    segments = []
    for i in range(phnum):
        p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if p_type != _PT_LOAD or p_memsz == 0:
            continue
        perms = (READ if p_flags & _PF_R else 0) | (WRITE if p_flags & _PF_W else 0) | (EXEC if p_flags & _PF_X else 0)
        segments.append((p_vaddr, p_memsz, perms, data[p_offset : p_offset + p_filesz]))
    pages: dict[int, int] = {}
    for vaddr, memsz, perms, _ in segments:
        for page in range(vaddr // PAGE * PAGE, vaddr + memsz, PAGE):
            pages[page] = pages.get(page, 0) | perms
    # Map runs of pages with equal permissions as one region each.
    runs: list[tuple[int, int, int]] = []
    for page in sorted(pages):
        if runs and runs[-1][0] + runs[-1][1] == page and runs[-1][2] == pages[page]:
            runs[-1] = (runs[-1][0], runs[-1][1] + PAGE, runs[-1][2])
        else:
            runs.append((page, PAGE, pages[page]))
    for base, size, perms in runs:
        memory.map(base, size, perms, name=f"{Path(path).name}@{base:#x}")
    for vaddr, _memsz, _perms, content in segments:
        memory.write(vaddr, content)
    symbols: dict[str, int] = {}
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for sh_type, sh_offset, sh_size, sh_link, sh_entsize in ((s[1], s[4], s[5], s[6], s[9]) for s in sections):
        if sh_type != _SHT_SYMTAB or not sh_entsize:
            continue
        strtab = sections[sh_link]
        str_offset = strtab[4]
        for j in range(sh_size // sh_entsize):
            name_off, _info, _other, shndx, value, _size = struct.unpack_from(
                "<IBBHQQ", data, sh_offset + j * sh_entsize
            )
            if shndx == 0 or not name_off:
                continue
            end = data.index(b"\0", str_offset + name_off)
            symbols[data[str_offset + name_off : end].decode()] = value
    return Image(entry, symbols, tuple((v, m, p) for v, m, p, _ in segments))
