"""IA-64 decoder: bytes to bundles to instructions.

Each slot is matched against the forms of `insn` that may execute on the slot's unit (A-type forms in
M and I slots). A slot no form claims, a slot in a reserved template, and an L+X pair whose X slot is
unknown all decode to `UnknownInstruction`, which keeps the raw bits; decoding never raises for bundle
contents. Only input whose length is not a multiple of 16 is rejected, with `BundleLengthError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import reduce
from typing import Final

import attrs

from pvgen.ia64.bundle import SLOT_MASK, TEMPLATES, Template
from pvgen.ia64.insn import FORMS, NO_PRED, AnyInstruction, Form, Instruction, UnknownInstruction


class BundleLengthError(ValueError):
    """The input is not a whole number of 16-byte bundles; `offset` is where the partial bundle starts."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.offset = length - length % 16
        super().__init__(
            f"{length} bytes is not a whole number of 16-byte bundles: partial bundle at offset {self.offset:#x}"
        )


@attrs.frozen
class DecodedBundle:
    """One decoded bundle. `instructions` has one entry per slot; in an MLX bundle the X instruction
    (which uses the L slot too) is the second and last entry, at slot 1."""

    address: int
    template: int
    instructions: tuple[AnyInstruction, ...]

    @property
    def info(self) -> Template:
        return TEMPLATES[self.template]

    @property
    def slot_numbers(self) -> tuple[int, ...]:
        return (0, 1) if len(self.instructions) == 2 else (0, 1, 2)


SlotDecoder = Callable[[int, int], AnyInstruction]  # (slot, L slot) -> instruction


def _compile(form: Form) -> Callable[[int, int], Instruction]:
    """A closure building the form's Instruction from a matching slot (no loops for common arities)."""
    mnemonic = form.mnemonic
    qp_mask = 0 if form.flags & NO_PRED else 0x3F
    extracts = tuple(o.extract for o in form.operands)
    new = Instruction
    if not extracts:
        return lambda slot, _l: new(mnemonic, (), slot & qp_mask, form)
    if len(extracts) == 1:
        (e0,) = extracts
        return lambda slot, lslot: new(mnemonic, (e0(slot, lslot),), slot & qp_mask, form)
    if len(extracts) == 2:
        e0, e1 = extracts
        return lambda slot, lslot: new(mnemonic, (e0(slot, lslot), e1(slot, lslot)), slot & qp_mask, form)
    if len(extracts) == 3:
        e0, e1, e2 = extracts
        return lambda slot, lslot: new(
            mnemonic, (e0(slot, lslot), e1(slot, lslot), e2(slot, lslot)), slot & qp_mask, form
        )
    if len(extracts) == 4:
        e0, e1, e2, e3 = extracts
        return lambda slot, lslot: new(
            mnemonic, (e0(slot, lslot), e1(slot, lslot), e2(slot, lslot), e3(slot, lslot)), slot & qp_mask, form
        )
    return lambda slot, lslot: new(mnemonic, tuple(e(slot, lslot) for e in extracts), slot & qp_mask, form)


Candidate = tuple[int, int, Callable[[int], bool] | None, int, Callable[[int, int], Instruction]]


def _unit_table(types: str) -> list[tuple[int, dict[int, list[Candidate]]] | None]:
    """Per major opcode: (discriminating mask, candidates by slot & mask), most specific first."""
    table: list[tuple[int, dict[int, list[Candidate]]] | None] = []
    forms = [f for f in FORMS if f.type in types]
    for op in range(16):
        bucket = [f for f in forms if f.value >> 37 == op]
        if not bucket:
            table.append(None)
            continue
        common = reduce(lambda a, b: a & b, (f.mask for f in bucket))
        ordered = sorted(bucket, key=lambda f: (f.check is None, -f.mask.bit_count()))
        candidates: dict[int, list[Candidate]] = {}
        for form in ordered:
            candidate = (form.mask, form.value, form.check, form.long_zero, _compile(form))
            candidates.setdefault(form.value & common, []).append(candidate)
        table.append((common, candidates))
    return table


_TABLES: Final = {unit: _unit_table(types) for unit, types in (("M", "MA"), ("I", "IA"), ("B", "B"), ("F", "F"))}
_X_TABLE: Final = _unit_table("X")
_CACHE_LIMIT: Final = 1 << 16
_caches: dict[str, dict[int, AnyInstruction]] = {unit: {} for unit in ("M", "I", "B", "F", "X")}


def _match(table: list[tuple[int, dict[int, list[Candidate]]] | None], slot: int, lslot: int) -> Instruction | None:
    entry = table[slot >> 37]
    if entry is None:
        return None
    common, candidates = entry
    for mask, value, check, long_zero, build in candidates.get(slot & common, ()):
        if slot & mask == value and (check is None or check(slot)) and not lslot & long_zero:
            return build(slot, lslot)
    return None


def decode_slot(unit: str, slot: int, lslot: int = 0) -> AnyInstruction:
    """Decodes one 41-bit slot for unit M, I, B, F or X (X takes the L slot too)."""
    if unit == "X":
        key = lslot << 41 | slot
        cache = _caches["X"]
        insn = cache.get(key)
        if insn is None:
            insn = _match(_X_TABLE, slot, lslot) or UnknownInstruction(slot, "X", lslot)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[key] = insn
        return insn
    cache = _caches[unit]
    insn = cache.get(slot)
    if insn is None:
        insn = _match(_TABLES[unit], slot, 0) or UnknownInstruction(slot, unit)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[slot] = insn
    return insn


def _bundle_decoders() -> list[Callable[[int], tuple[AnyInstruction, ...]]]:
    """One function per template value turning the 128-bit word into its instructions.

    The per-unit caches are looked up inline: most slots of real code repeat (nops above all)."""
    decoders: list[Callable[[int], tuple[AnyInstruction, ...]]] = []
    mask = SLOT_MASK
    for template in TEMPLATES:
        units = template.units
        if units is None:

            def reserved(word: int) -> tuple[AnyInstruction, ...]:
                return (
                    UnknownInstruction((word >> 5) & mask, "?"),
                    UnknownInstruction((word >> 46) & mask, "?"),
                    UnknownInstruction(word >> 87, "?"),
                )

            decoders.append(reserved)
        elif units[1] == "L":

            def mlx(word: int, c0: dict[int, AnyInstruction] = _caches["M"]) -> tuple[AnyInstruction, ...]:
                s0 = (word >> 5) & mask
                i0 = c0.get(s0) or decode_slot("M", s0)
                return i0, decode_slot("X", word >> 87, (word >> 46) & mask)

            decoders.append(mlx)
        else:
            u0, u1, u2 = units

            def normal(
                word: int,
                u0: str = u0,
                u1: str = u1,
                u2: str = u2,
                c0: dict[int, AnyInstruction] = _caches[u0],
                c1: dict[int, AnyInstruction] = _caches[u1],
                c2: dict[int, AnyInstruction] = _caches[u2],
            ) -> tuple[AnyInstruction, ...]:
                s0, s1, s2 = (word >> 5) & mask, (word >> 46) & mask, word >> 87
                return (
                    c0.get(s0) or decode_slot(u0, s0),
                    c1.get(s1) or decode_slot(u1, s1),
                    c2.get(s2) or decode_slot(u2, s2),
                )

            decoders.append(normal)
    return decoders


_BUNDLE_DECODERS: Final = _bundle_decoders()


def decode_word(word: int) -> tuple[int, tuple[AnyInstruction, ...]]:
    """Decodes a 128-bit bundle integer into (template, instructions)."""
    template = word & 0x1F
    return template, _BUNDLE_DECODERS[template](word)


def iter_bundles(data: bytes, address: int = 0) -> Iterator[DecodedBundle]:
    """Decodes `data` bundle by bundle; the first bundle is at `address`."""
    if len(data) % 16:
        raise BundleLengthError(len(data))
    decoders = _BUNDLE_DECODERS
    from_bytes = int.from_bytes
    for offset in range(0, len(data), 16):
        word = from_bytes(data[offset : offset + 16], "little")
        template = word & 0x1F
        yield DecodedBundle(address + offset, template, decoders[template](word))


def decode(data: bytes, address: int = 0) -> list[DecodedBundle]:
    """Decodes `data` (a multiple of 16 bytes) into bundles; raises BundleLengthError otherwise."""
    if len(data) % 16:
        raise BundleLengthError(len(data))
    decoders = _BUNDLE_DECODERS
    words = [int.from_bytes(data[i : i + 16], "little") for i in range(0, len(data), 16)]
    return [DecodedBundle(address + 16 * n, word & 0x1F, decoders[word & 0x1F](word)) for n, word in enumerate(words)]
