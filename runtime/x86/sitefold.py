"""Build-time analysis of the code around each patch site, so that boot can fold a site's padding away.

A site must hold the indirect call a hypervisor needs, so natively it often patches to less
than its length: to nothing at all for an op the native kernel compiles away (a `nop` or an
`identity` op). Prefixes on the patched instructions absorb what they can; what remains
would be a NOP, one executed instruction per site that the native-mode build does not have.
Folding moves that padding out of the site: the instruction just before the site and the
ones just after it take the arch's redundant pad prefix (a CS override, ignored in 64-bit
mode) and slide over the hole, so the site's executions cost no instruction at all.

Sliding code is only safe where nothing refers to the addresses that move. This pass does
what Linux's objtool does for its own annotations: after the link it decodes every
executable section and collects each address something may reach other than by falling
through: symbols, direct branch and call targets, RIP-relative and absolute references
into code, and the targets of every relocation the linker kept (`ld --emit-relocs`:
exception tables, site records, function pointers in data). It then records, per site,
the neighbours that may take prefixes:

- before: the instruction that ends where the site begins, when no one jumps to the site
  (its start stays put; its end moves forward, so it must not be PC-relative);
- after: the following instructions, in order, until one whose start is referenced, that
  is a branch, or that is inside another site (they move back; a PC-relative one may
  only be the last to move, as its end must stay where it was).

Branches never take the prefix (on a Jcc a CS override is a branch hint), nor do
instructions with a segment override of their own or a VEX/EVEX encoding. The records go
into the image's `.pvgen.fold` section; the patcher (boot.py) decides how many prefixes
each neighbour takes, up to the arch's per-instruction limit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from pvgen.assemble import legacy_prefix_count, takes_pad_prefix

FOLD_SECTION = ".pvgen.fold"
SITES_SECTION = ".pvgen.sites"
# Site address, neighbour offset from the site (negative: before it), the neighbour's length,
# its legacy prefixes, flags (bit 0: PC-relative); 16 bytes.
FOLD_RECORD = struct.Struct("<QhBBB3x")
PC_RELATIVE = 1
MAX_AFTER = 4  # followers recorded per site: enough for any site's padding at five prefixes each
_SHF_EXECINSTR = 0x4
_ABSOLUTE_RELOCS = frozenset({1, 10, 11})  # R_X86_64_64, _32, _32S


class FoldError(Exception):
    """The image cannot be analysed: not an ELF file, or its sections cannot be read."""


@attrs.frozen
class Neighbour:
    """An instruction next to a site that may take pad prefixes."""

    address: int
    length: int
    prefixes: int  # legacy prefixes it already has
    pc_relative: bool  # its end must not move


@attrs.frozen
class FoldRoom:
    """The neighbours of one site that boot may slide over the site's padding."""

    site: int
    before: Neighbour | None
    after: tuple[Neighbour, ...]


@attrs.frozen
class _Insn:
    address: int
    length: int
    prefixes: int
    branch: bool  # a jump, call, return or interrupt: it never takes a prefix
    prefixable: bool
    pc_relative: bool


def analyse(path: str | Path, sites: Iterable[tuple[int, int]]) -> list[FoldRoom]:
    """The fold room of every site (address, length) of a linked image."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    try:
        with Path(path).open("rb") as stream:
            elf = ELFFile(stream)
            code = [
                (s["sh_addr"], s.data()) for s in elf.iter_sections() if s["sh_flags"] & _SHF_EXECINSTR and s["sh_size"]
            ]
            ranges = [(start, start + len(data)) for start, data in code]
            referenced = set(_symbol_addresses(elf))
            if elf.get_section_by_name(".rela" + SITES_SECTION) is None:
                # Without relocations nothing says what data refers to in code: no neighbour is safe.
                raise FoldError(f"no relocations for {SITES_SECTION}; link the image with --emit-relocs")
            for section in elf.iter_sections():
                # The site records name every site; that is no reason to keep a site's start.
                if isinstance(section, RelocationSection) and section.name != ".rela" + SITES_SECTION:
                    referenced.update(_relocation_targets(elf, section))
    except FoldError as error:
        raise FoldError(f"{path}: {error}") from None
    except (ELFError, OSError, struct.error, ValueError, KeyError, IndexError, AttributeError) as error:
        raise FoldError(f"{path}: cannot read the ELF image: {error}") from None
    instructions: dict[int, _Insn] = {}
    ends: dict[int, _Insn] = {}
    for start, data in code:
        for insn, targets in _decode(start, data):
            instructions[insn.address] = ends[insn.address + insn.length] = insn
            referenced.update(t for t in targets if any(lo <= t < hi for lo, hi in ranges))
    site_list = sorted(sites)
    inside = _covered(site_list)
    site_starts = {address for address, _ in site_list}
    rooms = []
    for address, length in site_list:
        before = ends.get(address)
        usable_before = (
            before is not None
            and address not in referenced  # a jump to the site would land inside the grown instruction
            and before.prefixable
            and not before.pc_relative
            and before.address not in inside
        )
        after: list[Neighbour] = []
        cursor = address + length
        while len(after) < MAX_AFTER:
            insn = instructions.get(cursor)
            if insn is None or insn.address in referenced or insn.address in site_starts or insn.address in inside:
                break
            if not insn.prefixable:
                break
            after.append(_neighbour(insn))
            if insn.pc_relative:
                break
            cursor += insn.length
        first = _neighbour(before) if usable_before and before is not None else None
        if first is not None or after:
            rooms.append(FoldRoom(address, first, tuple(after)))
    return rooms


def _neighbour(insn: _Insn) -> Neighbour:
    return Neighbour(insn.address, insn.length, insn.prefixes, insn.pc_relative)


def _covered(sites: Sequence[tuple[int, int]]) -> set[int]:
    """Every byte address inside a site (its first byte included)."""
    return {byte for address, length in sites for byte in range(address, address + length)}


def _symbol_addresses(elf: object) -> Iterable[int]:
    for section in elf.iter_sections():  # type: ignore[attr-defined]
        if section.name == ".symtab":
            for symbol in section.iter_symbols():
                if symbol["st_shndx"] not in ("SHN_UNDEF", "SHN_ABS") and symbol["st_info"]["type"] != "STT_FILE":
                    yield symbol["st_value"]


def _relocation_targets(elf: object, section: object) -> Iterable[int]:
    """S + A of every relocation the linker kept, but for PC-relative ones inside code (the
    decoder finds those targets exactly; their addend also counts the bytes after the field)."""
    from elftools.elf.sections import SymbolTableSection

    target_section = elf.get_section(section["sh_info"])  # type: ignore[attr-defined]
    in_code = bool(target_section["sh_flags"] & _SHF_EXECINSTR)
    symbols = elf.get_section(section["sh_link"])  # type: ignore[attr-defined]
    if not isinstance(symbols, SymbolTableSection):
        raise FoldError(f"relocation section {section.name} has no symbol table")  # type: ignore[attr-defined]
    for relocation in section.iter_relocations():  # type: ignore[attr-defined]
        if in_code and relocation["r_info_type"] not in _ABSOLUTE_RELOCS:
            continue
        symbol = symbols.get_symbol(relocation["r_info_sym"])
        yield (symbol["st_value"] + relocation["r_addend"]) & 0xFFFF_FFFF_FFFF_FFFF


def _decode(start: int, data: bytes) -> Iterable[tuple[_Insn, list[int]]]:
    """Every instruction of a code section (linear sweep, as gcc and gas emit no data in
    code), each with the code addresses it names: branch targets, RIP-relative and absolute
    operands."""
    import capstone
    from capstone import x86_const

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    for insn in md.disasm(data, start):
        raw = bytes(insn.bytes)
        targets: list[int] = []
        pc_relative = False
        branch = any(insn.group(g) for g in _BRANCH_GROUPS)
        for operand in insn.operands:
            if operand.type == x86_const.X86_OP_IMM:
                targets.append(operand.imm & 0xFFFF_FFFF_FFFF_FFFF)
                pc_relative = pc_relative or branch
            elif operand.type == x86_const.X86_OP_MEM:
                if operand.mem.base == x86_const.X86_REG_RIP:
                    pc_relative = True
                    targets.append((insn.address + insn.size + operand.mem.disp) & 0xFFFF_FFFF_FFFF_FFFF)
                elif operand.mem.base == 0 and operand.mem.index == 0:
                    targets.append(operand.mem.disp & 0xFFFF_FFFF_FFFF_FFFF)
        prefixable = not branch and takes_pad_prefix(raw)
        yield _Insn(insn.address, insn.size, legacy_prefix_count(raw), branch, prefixable, pc_relative), targets


def _branch_groups() -> tuple[int, ...]:
    import capstone

    return (
        capstone.CS_GRP_JUMP,
        capstone.CS_GRP_CALL,
        capstone.CS_GRP_RET,
        capstone.CS_GRP_INT,
        capstone.CS_GRP_IRET,
        capstone.CS_GRP_BRANCH_RELATIVE,
    )


_BRANCH_GROUPS = _branch_groups()


def encode(rooms: Iterable[FoldRoom]) -> bytes:
    """The `.pvgen.fold` section of a set of fold rooms."""
    out = bytearray()
    for room in rooms:
        for neighbour in ([room.before] if room.before else []) + list(room.after):
            flags = PC_RELATIVE if neighbour.pc_relative else 0
            offset = neighbour.address - room.site
            out += FOLD_RECORD.pack(room.site, offset, neighbour.length, neighbour.prefixes, flags)
    return bytes(out)


def decode(data: bytes) -> dict[int, FoldRoom]:
    """The fold rooms of a `.pvgen.fold` section, by site address."""
    if len(data) % FOLD_RECORD.size:
        raise FoldError(f"{FOLD_SECTION} is {len(data)} bytes, not a whole number of {FOLD_RECORD.size}-byte records")
    befores: dict[int, Neighbour] = {}
    afters: dict[int, list[Neighbour]] = {}
    for offset in range(0, len(data), FOLD_RECORD.size):
        site, delta, length, prefixes, flags = FOLD_RECORD.unpack_from(data, offset)
        neighbour = Neighbour(site + delta, length, prefixes, bool(flags & PC_RELATIVE))
        if delta < 0:
            befores[site] = neighbour
        else:
            afters.setdefault(site, []).append(neighbour)
    return {
        site: FoldRoom(site, befores.get(site), tuple(afters.get(site, ())))
        for site in sorted(set(befores) | set(afters))
    }
