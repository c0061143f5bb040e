"""IA-64 bundle layout: the 128-bit word, the 32 templates, and packing of the three 41-bit slots.

A bundle is 16 bytes stored little-endian. Bits 4:0 hold the template, bits 45:5 slot 0, bits 86:46
slot 1 and bits 127:87 slot 2. The template fixes the execution unit of each slot and where the
instruction-group stops fall; an odd template is the even one with a stop after slot 2.
"""

from __future__ import annotations

import attrs

SLOT_MASK = (1 << 41) - 1
BUNDLE_SIZE = 16

#: Unit letters: M memory, I integer, F floating point, B branch, L+X the two halves of a long insn.
UNITS = ("M", "I", "F", "B", "L", "X")


@attrs.frozen
class Template:
    """One of the 32 template values: its slot units and the slots a stop follows."""

    value: int
    units: tuple[str, str, str] | None  # None for a reserved template
    stops: tuple[int, ...]  # slot numbers followed by a stop (end of instruction group)

    @property
    def reserved(self) -> bool:
        return self.units is None

    @property
    def name(self) -> str:
        """The name objdump prints in brackets: "MII", or "-3-" for reserved pair 0x06/0x07."""
        return "".join(self.units) if self.units is not None else f"-{self.value >> 1:x}-"

    @property
    def stop_at_end(self) -> bool:
        return bool(self.value & 1)

    def asm_name(self) -> str:
        """The GAS directive selecting this template's layout (".mii", ".mlx", ...)."""
        assert self.units is not None
        return "." + ("mlx" if self.units[1] == "L" else "".join(self.units).lower())


def _build_templates() -> tuple[Template, ...]:
    # (units, slot followed by a mid-bundle stop or None) for each even value / 2.
    layout: list[tuple[str | None, int | None]] = [
        ("MII", None),
        ("MII", 1),
        ("MLX", None),
        (None, None),
        ("MMI", None),
        ("MMI", 0),
        ("MFI", None),
        ("MMF", None),
        ("MIB", None),
        ("MBB", None),
        (None, None),
        ("BBB", None),
        ("MMB", None),
        (None, None),
        ("MFB", None),
        (None, None),
    ]
    templates = []
    for value in range(32):
        units, middle = layout[value >> 1]
        if units is None:
            templates.append(Template(value, None, ()))
            continue
        stops = tuple(s for s in (middle,) if s is not None) + ((2,) if value & 1 else ())
        unit_tuple = (units[0], units[1], units[2])
        templates.append(Template(value, unit_tuple, stops))
    return tuple(templates)


#: All 32 templates, indexed by value.
TEMPLATES: tuple[Template, ...] = _build_templates()

#: Template value by (units, stops) for the valid ones, e.g. ("M", "I", "I"), (1, 2) -> 0x03.
TEMPLATE_BY_LAYOUT: dict[tuple[tuple[str, str, str], tuple[int, ...]], int] = {
    (t.units, t.stops): t.value for t in TEMPLATES if t.units is not None
}


def pack(template: int, slot0: int, slot1: int, slot2: int) -> bytes:
    """Packs a template and three 41-bit slots into 16 little-endian bytes."""
    if not 0 <= template < 32:
        raise ValueError(f"template {template} is not in 0..31")
    for slot in (slot0, slot1, slot2):
        if not 0 <= slot <= SLOT_MASK:
            raise ValueError(f"slot value {slot:#x} does not fit in 41 bits")
    return (template | slot0 << 5 | slot1 << 46 | slot2 << 87).to_bytes(16, "little")


def pack_int(template: int, slot0: int, slot1: int, slot2: int) -> int:
    """The bundle as one 128-bit integer (no range checks; for callers that checked already)."""
    return template | slot0 << 5 | slot1 << 46 | slot2 << 87


def unpack(data: bytes) -> tuple[int, int, int, int]:
    """Splits 16 bytes into (template, slot0, slot1, slot2)."""
    if len(data) != BUNDLE_SIZE:
        raise ValueError(f"a bundle is 16 bytes, got {len(data)}")
    word = int.from_bytes(data, "little")
    return word & 0x1F, (word >> 5) & SLOT_MASK, (word >> 46) & SLOT_MASK, word >> 87


def unpack_int(word: int) -> tuple[int, int, int, int]:
    """Splits a 128-bit bundle integer into (template, slot0, slot1, slot2)."""
    return word & 0x1F, (word >> 5) & SLOT_MASK, (word >> 46) & SLOT_MASK, word >> 87
