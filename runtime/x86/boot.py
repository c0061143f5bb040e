"""Boot-time pv_ops for x86-64 images: read the site records, fill the table, patch every site.

This is apply_paravirt made explicit. The op table (`pv_ops` in guest memory) is filled
from the generated Python layer; each `.pvgen.sites` record is checked against the bytes
it describes (the 6-byte `ff 15 rel32` indirect call through the op's slot, or `ff 25`
for a jump-type op) and then rewritten: the inline template when it fits, a direct
`e8`/`e9 rel32` call or jump to the implementation, NOPs for an op that does nothing, or
left as the indirect call. The rest of the site is padded with the arch's NOP forms.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs

SITES_SECTION = ".pvgen.sites"
TABLE_SYMBOL = "pv_ops"
RECORD = struct.Struct("<QBBH4x")  # instr address, op index, site length, clobbers; 16 bytes
UD2 = b"\x0f\x0b"  # what a site of an op with no implementation becomes (Linux: ud2a, then BUG)


class BootError(Exception):
    """The image cannot be booted as asked: a bad site, a missing symbol, a refused mask."""


@attrs.frozen
class SiteRecord:
    address: int
    index: int
    length: int
    clobbers: int


@attrs.frozen
class PatchReport:
    """What boot did to the image: per-kind site counts and the op each slot points at."""

    sites: int
    by_kind: dict[str, int]
    by_op: dict[str, dict[str, int]]  # "group.op" -> kind -> count
    table: dict[str, str]  # "group.op" -> symbol in its slot ("" for none)


def read_sites(path: str | Path) -> list[SiteRecord]:
    """The records of the image's `.pvgen.sites` section (none if it has no such section)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with Path(path).open("rb") as stream:
            elf = ELFFile(stream)
            section = elf.get_section_by_name(SITES_SECTION)
            data = section.data() if section is not None else b""
    except (ELFError, OSError, struct.error, ValueError) as error:
        raise BootError(f"{path}: cannot read the ELF image: {error}") from None
    if len(data) % RECORD.size:
        size = RECORD.size
        raise BootError(f"{path}: {SITES_SECTION} is {len(data)} bytes, not a whole number of {size}-byte records")
    return [SiteRecord(*RECORD.unpack_from(data, offset)) for offset in range(0, len(data), RECORD.size)]


def nop_fill(nops: Sequence[bytes], length: int) -> bytes:
    """The fewest NOP instructions that fill `length` bytes, longest forms first."""
    by_size = sorted(nops, key=len, reverse=True)
    out = b""
    while len(out) < length:
        room = length - len(out)
        out += next(n for n in by_size if len(n) <= room)
    return out


def implementation_symbol(layer: ModuleType, op: Any, hypervisor: str, masked: frozenset[str]) -> str:
    """The function a hypervisor's table slot holds for an op."""
    impl = layer.effective_impl(op, hypervisor, masked)
    owner = "native" if op.group in masked else hypervisor
    if impl.kind == "nop":
        return "pvgen_ret0" if op.returns_value else "pvgen_nop"
    if impl.kind == "identity":
        return "pvgen_ident_64"
    return str(layer.out_of_line_symbol(op, owner, impl))


def fill_table(
    layer: ModuleType, hypervisor: str, masked: frozenset[str], symbols: Mapping[str, int], write_u64: Any
) -> dict[str, str]:
    """Writes every slot of `pv_ops`; a symbol the image lacks leaves the slot NULL (its sites become ud2)."""
    base = symbols.get(TABLE_SYMBOL)
    if base is None:
        raise BootError(f"the image has no '{TABLE_SYMBOL}' table")
    table = {}
    for op in layer.OPS:
        if op.index < 0:
            continue
        name = implementation_symbol(layer, op, hypervisor, masked)
        address = symbols.get(name, 0)
        write_u64(base + op.index * layer.POINTER_SIZE, address)
        table[f"{op.group}.{op.name}"] = name if address else ""
    return table


def patch_sites(
    layer: ModuleType,
    hypervisor: str,
    masked: frozenset[str],
    sites: Sequence[SiteRecord],
    symbols: Mapping[str, int],
    read: Any,
    write: Any,
    table: Mapping[str, str],
) -> PatchReport:
    """Rewrites every site; refuses (BootError) a site whose bytes are not the expected indirect call."""
    base = symbols.get(TABLE_SYMBOL)
    if base is None and sites:
        raise BootError(f"the image has sites but no '{TABLE_SYMBOL}' table")
    by_kind: Counter[str] = Counter()
    by_op: dict[str, Counter[str]] = {}
    decisions: dict[tuple[int, int], bytes | tuple[str, str]] = {}
    nops = layer.NOPS
    for site in sites:
        op = layer.OPS_BY_INDEX.get(site.index)
        if op is None:
            raise BootError(f"site at {site.address:#x} names op index {site.index}, which the table does not have")
        qualname = f"{op.group}.{op.name}"
        current = read(site.address, site.length)
        opcode = b"\xff\x25" if op.transfer == "jump" else b"\xff\x15"
        slot = base + op.index * layer.POINTER_SIZE  # type: ignore[operator]
        expected = opcode + struct.pack("<i", slot - (site.address + 6))
        if site.length != 6 or current != expected:
            raise BootError(
                f"site at {site.address:#x} for {qualname} is not the expected indirect call: found "
                f"{current.hex(' ')}, expected {expected.hex(' ')}"
            )
        key = (site.index, site.length)
        decision = decisions.get(key)
        if decision is None:
            decision = _decide(layer, op, hypervisor, masked, site.length, table.get(qualname, ""))
            decisions[key] = decision
        if isinstance(decision, bytes):
            code = decision
            kind = "inline" if code and code != UD2 else ("bug" if code == UD2 else "nop")
        else:
            kind, symbol = decision
            if kind == "indirect":
                by_kind[kind] += 1
                by_op.setdefault(qualname, Counter())[kind] += 1
                continue
            target = symbols.get(symbol)
            if target is None:
                raise BootError(f"site at {site.address:#x} for {qualname} calls '{symbol}', which the image lacks")
            delta = target - (site.address + 5)
            if not -(1 << 31) <= delta < (1 << 31):
                raise BootError(f"site at {site.address:#x}: '{symbol}' at {target:#x} is out of rel32 range")
            code = (b"\xe9" if kind == "jump" else b"\xe8") + struct.pack("<i", delta)
        write(site.address, code + nop_fill(nops, site.length - len(code)))
        by_kind[kind] += 1
        by_op.setdefault(qualname, Counter())[kind] += 1
    return PatchReport(
        sites=len(sites),
        by_kind=dict(sorted(by_kind.items())),
        by_op={name: dict(sorted(kinds.items())) for name, kinds in sorted(by_op.items())},
        table=dict(table),
    )


def _decide(
    layer: ModuleType, op: Any, hypervisor: str, masked: frozenset[str], length: int, slot_symbol: str
) -> bytes | tuple[str, str]:
    """The bytes to write (inline or NOP fill), or (kind, symbol) for a direct call or jump."""
    if not slot_symbol:
        return UD2  # no implementation in this image: Linux patches a NULL op to ud2
    decision = layer.patch_decision(op.index, hypervisor, length, masked)
    if decision.kind in ("inline", "nop"):
        return bytes(decision.code)
    if decision.kind == "indirect":
        return ("indirect", "")
    return (decision.kind, slot_symbol if decision.kind in ("call", "jump") else str(decision.symbol))
