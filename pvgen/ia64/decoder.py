"""IA-64 decoder: bytes to bundles to instructions.

Each slot is matched against the forms of `insn` that may execute on the slot's unit (A-type forms in
M and I slots). A slot no form claims, a slot in a reserved template, and an L+X pair whose X slot is
unknown all decode to `UnknownInstruction`, which keeps the raw bits; decoding never raises for bundle
contents. Only input whose length is not a multiple of 16 is rejected, with `BundleLengthError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import reduce
from struct import iter_unpack
from types import CodeType, FunctionType
from typing import Final

import attrs

from pvgen.ia64.bundle import SLOT_MASK, TEMPLATES, Template
from pvgen.ia64.insn import (
    _SET_FORM,
    _SET_HASH,
    _SET_MNEMONIC,
    _SET_OPERANDS,
    _SET_QP,
    FORMS,
    INSTRUCTION_TWIN,
    NO_PRED,
    AnyInstruction,
    Form,
    Imm,
    Instruction,
    Target,
    UnknownInstruction,
    _MutableInstruction,
    _new,
    _set_imm_hash,
    _set_imm_value,
    _set_target_hash,
    _set_target_offset,
)


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


_BUILD_GLOBALS: Final[dict[str, object]] = {
    "new": _new,
    "Instruction": Instruction,
    "MutableInstruction": _MutableInstruction,
    "Imm": Imm,
    "Target": Target,
    "set_mnemonic": _SET_MNEMONIC,
    "set_operands": _SET_OPERANDS,
    "set_qp": _SET_QP,
    "set_form": _SET_FORM,
    "set_hash": _SET_HASH,
    "set_imm": _set_imm_value,
    "set_imm_hash": _set_imm_hash,
    "set_target": _set_target_offset,
    "set_target_hash": _set_target_hash,
}


def _build_source(form: Form, tag: str, indent: str, namespace: dict[str, object]) -> list[str]:
    """Source lines building `form`'s Instruction from `slot` (and `lslot`) and returning it.

    Operands come from the specs' `inline` expressions, so extracting them makes no calls (registers and
    small immediates are table picks); the Instruction (and a new Imm/Target operand) has its slots written
    directly instead of through the attrs __init__ (see `insn._MutableInstruction`). An operand without
    `inline` calls its `extract`. The form's objects go into `namespace` under names ending in `tag`."""
    namespace |= {f"mnemonic{tag}": form.mnemonic, f"form{tag}": form}
    lines = []
    items = []
    for n, spec in enumerate(form.operands):
        name = f"{n}{tag}"
        if spec.inline is None:
            namespace[f"e{name}"] = spec.extract
            items.append(f"e{name}(slot, lslot)")
            continue
        how, table, expr = spec.inline
        if how == "pick":
            namespace[f"t{name}"] = table
            items.append(f"t{name}[{expr}]")
        else:
            cls, setter = ("Imm", "set_imm") if how == "imm" else ("Target", "set_target")
            lines += [f"o{name} = new({cls})", f"{setter}(o{name}, {expr})", f"{setter}_hash(o{name}, None)"]
            items.append(f"o{name}")
    operands = f"({''.join(item + ', ' for item in items)})"
    qp = "0" if form.flags & NO_PRED else "slot & 63"
    if INSTRUCTION_TWIN:
        lines += [
            "insn = new(MutableInstruction)",
            f"insn.mnemonic = mnemonic{tag}",
            f"insn.operands = {operands}",
            f"insn.qp = {qp}",
            f"insn.form = form{tag}",
            "insn._attrs_cached_hash = None",
            "insn.__class__ = Instruction",
        ]
    else:
        lines += [
            "insn = new(Instruction)",
            f"set_mnemonic(insn, mnemonic{tag})",
            f"set_operands(insn, {operands})",
            f"set_qp(insn, {qp})",
            f"set_form(insn, form{tag})",
            "set_hash(insn, None)",
        ]
    lines.append("return insn")
    return [indent + line for line in lines]


_CODE: Final[dict[str, CodeType]] = {}


def _function(source: str, namespace: dict[str, object]) -> Callable[..., object]:
    """The one function `source` defines, with `namespace` (and _BUILD_GLOBALS) as its globals.

    Functions of the same shape (forms with the same operand layout) share one code object, so that
    generating them keeps the import fast."""
    code = _CODE.get(source)
    if code is None:
        module = compile(source, "<ia64 decoder>", "exec")
        code = _CODE[source] = next(c for c in module.co_consts if isinstance(c, CodeType))
    return FunctionType(code, {**_BUILD_GLOBALS, **namespace})


def _compile(form: Form) -> Callable[[int, int], Instruction]:
    """A function building the form's Instruction from a matching slot and L slot (see _build_source)."""
    namespace: dict[str, object] = {}
    lines = ["def build(slot, lslot):", *_build_source(form, "", "    ", namespace)]
    return _function("\n".join(lines) + "\n", namespace)  # type: ignore[return-value]


def _matcher(candidates: list[tuple[Form, bool]]) -> Callable[[int], Instruction | None]:
    """A function trying `candidates` (form, whether the table key already proves its fixed bits) in
    order on a slot and building the first that matches (None when none does): the cold decode path of
    one table key, with no loop and no further call."""
    namespace: dict[str, object] = {}
    lines = ["def match(slot):", "    lslot = 0"]
    for n, (form, proven) in enumerate(candidates):
        tests = [] if proven else [f"slot & mask{n} == value{n}"]
        namespace |= {f"mask{n}": form.mask, f"value{n}": form.value}
        if form.check is not None:
            namespace[f"check{n}"] = form.check
            tests.append(f"check{n}(slot)")
        if tests:
            lines.append(f"    if {' and '.join(tests)}:")
            lines += _build_source(form, str(n), "        ", namespace)
        else:
            lines += _build_source(form, str(n), "    ", namespace)
            break
    else:
        lines.append("    return None")
    return _function("\n".join(lines) + "\n", namespace)  # type: ignore[return-value]


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


def _flat_table(unit: str) -> tuple[tuple[int, ...], dict[int, Callable[[int], Instruction | None]]]:
    """A unit's forms (not X) as one dict: (discriminating mask per major opcode, matcher by slot & mask).

    Every form fixes the major opcode, so the keys of different opcodes never collide; an opcode with no
    forms gets its opcode bits as mask and no key."""
    masks = []
    matchers: dict[int, Callable[[int], Instruction | None]] = {}
    types = {"M": "MA", "I": "IA", "B": "B", "F": "F"}[unit]
    forms = [f for f in FORMS if f.type in types]
    for op, entry in enumerate(_TABLES[unit]):
        if entry is None:
            masks.append(0xF << 37)
            continue
        common = entry[0]
        masks.append(common)
        bucket = sorted((f for f in forms if f.value >> 37 == op), key=lambda f: (f.check is None, -f.mask.bit_count()))
        by_key: dict[int, list[tuple[Form, bool]]] = {}
        for form in bucket:
            by_key.setdefault(form.value & common, []).append((form, form.mask == common))
        for key, candidates in by_key.items():
            matchers[key] = _matcher(candidates)
    return tuple(masks), matchers


_FLAT: Final = {unit: _flat_table(unit) for unit in _TABLES}

# The decode of one slot `s{n}` of unit table n into `i{n}`: the cache, then the forms (the cold path,
# inline to save calls), then UnknownInstruction; the result is cached.
_SLOT_SOURCE: Final = """
    i{n} = c{n}.get(s{n})
    if i{n} is None:
        match = k{n}.get(s{n} & o{n}[s{n} >> 37])
        if match is None or (i{n} := match(s{n})) is None:
            i{n} = unknown(s{n}, u{n})
        if len(c{n}) >= limit:
            c{n}.clear()
        c{n}[s{n}] = i{n}"""


def _slot_decoders(units: str, head: str, tail: str) -> Callable[[int], tuple[AnyInstruction, ...]]:
    """A generated function decoding the slots of `units` from a bundle word (see _SLOT_SOURCE)."""
    namespace: dict[str, object] = {"unknown": UnknownInstruction, "limit": _CACHE_LIMIT, "decode_slot": decode_slot}
    for n, unit in enumerate(units):
        masks, candidates = _FLAT[unit]
        namespace |= {f"c{n}": _caches[unit], f"k{n}": candidates, f"o{n}": masks, f"u{n}": unit}
    body = "".join(_SLOT_SOURCE.format(n=n) for n in range(len(units)))
    exec(f"def decode(word):\n{head}{body}\n{tail}\n", namespace)  # source built above
    return namespace["decode"]  # type: ignore[return-value]


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
    return _SINGLE[unit](slot)[0]


_SINGLE: Final = {unit: _slot_decoders(unit, "    s0 = word", "    return (i0,)") for unit in _TABLES}


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
            head = f"    s0 = (word >> 5) & {mask}"
            decoders.append(
                _slot_decoders("M", head, f"    return i0, decode_slot('X', word >> 87, (word >> 46) & {mask})")
            )
        else:
            head = f"    s0, s1, s2 = (word >> 5) & {mask}, (word >> 46) & {mask}, word >> 87"
            decoders.append(_slot_decoders("".join(units), head, "    return i0, i1, i2"))
    return decoders


_BUNDLE_DECODERS: Final = _bundle_decoders()


def decode_word(word: int) -> tuple[int, tuple[AnyInstruction, ...]]:
    """Decodes a 128-bit bundle integer into (template, instructions)."""
    template = word & 0x1F
    return template, _BUNDLE_DECODERS[template](word)


_SET_ADDRESS: Final = DecodedBundle.__dict__["address"].__set__
_SET_TEMPLATE: Final = DecodedBundle.__dict__["template"].__set__
_SET_INSTRUCTIONS: Final = DecodedBundle.__dict__["instructions"].__set__


def iter_bundles(data: bytes, address: int = 0) -> Iterator[DecodedBundle]:
    """Decodes `data` bundle by bundle; the first bundle is at `address`."""
    if len(data) % 16:
        raise BundleLengthError(len(data))
    decoders = _BUNDLE_DECODERS
    from_bytes = int.from_bytes
    new, cls = _new, DecodedBundle
    set_address, set_template, set_instructions = _SET_ADDRESS, _SET_TEMPLATE, _SET_INSTRUCTIONS
    for offset in range(0, len(data), 16):
        word = from_bytes(data[offset : offset + 16], "little")
        template = word & 0x1F
        bundle = new(cls)  # DecodedBundle(address + offset, template, ...) without the attrs __init__
        set_address(bundle, address + offset)
        set_template(bundle, template)
        set_instructions(bundle, decoders[template](word))
        yield bundle


def decode(data: bytes, address: int = 0) -> list[DecodedBundle]:
    """Decodes `data` (a multiple of 16 bytes) into bundles; raises BundleLengthError otherwise."""
    if len(data) % 16:
        raise BundleLengthError(len(data))
    decoders = _BUNDLE_DECODERS
    new, cls = _new, DecodedBundle
    set_address, set_template, set_instructions = _SET_ADDRESS, _SET_TEMPLATE, _SET_INSTRUCTIONS
    bundles: list[DecodedBundle] = []
    append = bundles.append
    for low, high in iter_unpack("<QQ", data):  # the two little-endian halves of each bundle
        word = low | high << 64
        template = word & 0x1F
        bundle = new(cls)  # DecodedBundle(address, template, ...) without the attrs __init__
        set_address(bundle, address)
        address += 16
        set_template(bundle, template)
        set_instructions(bundle, decoders[template](word))
        append(bundle)
    return bundles
