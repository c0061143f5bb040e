"""IA-64 instruction model and the table of instruction forms (bit layouts) for the supported subset.

An `Instruction` is what objdump shows: a mnemonic with its completers ("ld8.acq", "br.cond.dptk.few",
"mov.m"), the qualifying predicate and typed operands. Pseudo-ops are canonical: GAS's `cmp.ne p6, p7 = a, b`
is `cmp.eq p7, p6 = a, b` here, `adds r9 = 0, r8` is `mov r9 = r8`, unpredicated `br.cond.sptk.many` is
`br.many`. A `Form` binds one mnemonic and operand signature to its fixed opcode bits and operand fields;
every bit of the 41-bit slot is either fixed by the form or belongs to an operand field, so decoding is
strict (a set reserved bit makes the slot unknown) and decode/encode round-trip exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Final

import attrs

from pvgen.ia64.bundle import SLOT_MASK

# ---------------------------------------------------------------------------------------------------
# Operands


AR_NAMES: Final[dict[int, str]] = {
    **{n: f"ar.k{n}" for n in range(8)},
    16: "ar.rsc",
    17: "ar.bsp",
    18: "ar.bspstore",
    19: "ar.rnat",
    21: "ar.fcr",
    24: "ar.eflag",
    25: "ar.csd",
    26: "ar.ssd",
    27: "ar.cflg",
    28: "ar.fsr",
    29: "ar.fir",
    30: "ar.fdr",
    32: "ar.ccv",
    36: "ar.unat",
    40: "ar.fpsr",
    44: "ar.itc",
    45: "ar.ruc",
    64: "ar.pfs",
    65: "ar.lc",
    66: "ar.ec",
}
CR_NAMES: Final[dict[int, str]] = {
    0: "cr.dcr",
    1: "cr.itm",
    2: "cr.iva",
    8: "cr.pta",
    16: "cr.ipsr",
    17: "cr.isr",
    19: "cr.iip",
    20: "cr.ifa",
    21: "cr.itir",
    22: "cr.iipa",
    23: "cr.ifs",
    24: "cr.iim",
    25: "cr.iha",
    26: "cr.iib0",
    27: "cr.iib1",
    64: "cr.lid",
    65: "cr.ivr",
    66: "cr.tpr",
    67: "cr.eoi",
    68: "cr.irr0",
    69: "cr.irr1",
    70: "cr.irr2",
    71: "cr.irr3",
    72: "cr.itv",
    73: "cr.pmv",
    74: "cr.cmcv",
    80: "cr.lrr0",
    81: "cr.lrr1",
}
#: Names GAS accepts beyond the ones objdump prints (cr.gpta is cr9; objdump prints "cr9").
EXTRA_CR_NAMES: Final[dict[str, int]] = {"cr.gpta": 9}
_REG_LIMITS: Final[dict[str, int]] = {"r": 128, "p": 64, "b": 8, "ar": 128, "cr": 128}


@attrs.frozen(cache_hash=True)
class Reg:
    """A register: general `r`, predicate `p`, branch `b`, application `ar` or control `cr`."""

    file: str
    num: int

    def __str__(self) -> str:
        if self.file == "ar":
            return AR_NAMES.get(self.num, f"ar{self.num}")
        if self.file == "cr":
            return CR_NAMES.get(self.num, f"cr{self.num}")
        return f"{self.file}{self.num}"

    @property
    def kind(self) -> str:
        return self.file


@attrs.frozen(cache_hash=True)
class Special:
    """A register named by itself: psr, psr.l, psr.um, ip, pr."""

    name: str

    def __str__(self) -> str:
        return self.name

    @property
    def kind(self) -> str:
        return self.name


@attrs.frozen(cache_hash=True)
class Imm:
    """An immediate value (signed where the field is signed)."""

    value: int

    def __str__(self) -> str:
        return str(self.value)

    @property
    def kind(self) -> str:
        return "imm"


@attrs.frozen(cache_hash=True)
class Mem:
    """A memory operand `[rN]`."""

    base: int

    def __str__(self) -> str:
        return f"[r{self.base}]"

    @property
    def kind(self) -> str:
        return "mem"


@attrs.frozen(cache_hash=True)
class Indirect:
    """An indirect register file element such as `rr[r8]` or `cpuid[r3]`."""

    file: str
    index: int

    def __str__(self) -> str:
        return f"{self.file}[r{self.index}]"

    @property
    def kind(self) -> str:
        return "ind." + self.file


@attrs.frozen(cache_hash=True)
class Target:
    """A branch target as a byte displacement from the bundle holding the branch (a multiple of 16)."""

    offset: int

    def __str__(self) -> str:
        return f".{self.offset:+#x}"

    @property
    def kind(self) -> str:
        return "target"


Operand = Reg | Special | Imm | Mem | Indirect | Target


@attrs.frozen(cache_hash=True, weakref_slot=False)  # no __weakref__: see _MutableInstruction
class Instruction:
    """One instruction: mnemonic with completers, operands (outputs first), qualifying predicate."""

    mnemonic: str
    operands: tuple[Operand, ...] = ()
    qp: int = 0
    #: The form the decoder matched (a shortcut for the encoder); not part of the value.
    form: Form | None = attrs.field(default=None, eq=False, repr=False)

    def __str__(self) -> str:
        return format_instruction(self)


@attrs.frozen
class UnknownInstruction:
    """A slot the codec does not know: kept raw so that it re-encodes to the same bits.

    `unit` is the slot's unit letter ("?" in a reserved template); `long` is the L slot of an MLX
    bundle whose X slot is unknown.
    """

    raw: int
    unit: str
    long: int | None = None

    mnemonic: str = attrs.field(default="unknown", init=False)
    qp: int = attrs.field(default=0, init=False)

    def __str__(self) -> str:
        return f"data8 {self.raw:#011x}"


AnyInstruction = Instruction | UnknownInstruction


class _MutableInstruction:
    """The memory layout of `Instruction` without its frozen __setattr__, for the decoder's hot path.

    The generated builders fill one with plain attribute stores and then assign `__class__ = Instruction`,
    which CPython allows because the two layouts are the same (this is why Instruction has no
    __weakref__ slot: with one, CPython refuses the assignment). This costs about half of writing the
    slots through their descriptors; `INSTRUCTION_TWIN` is False (and the descriptors are used) if the
    assignment is refused."""

    __slots__ = Instruction.__slots__  # type: ignore[attr-defined]


def _twin_works() -> bool:
    probe = object.__new__(_MutableInstruction)
    try:
        probe.__class__ = Instruction  # type: ignore[assignment]
    except TypeError:
        return False
    return True


INSTRUCTION_TWIN: Final = _twin_works()

# Fast constructors for the decoder's hot path: the same objects the attrs __init__ builds (every slot
# set, the cached hash empty), written through the slot descriptors to skip the generated __init__.
_new: Final = object.__new__
_set_imm_value: Final = Imm.__dict__["value"].__set__
_set_imm_hash: Final = Imm.__dict__["_attrs_cached_hash"].__set__
_set_target_offset: Final = Target.__dict__["offset"].__set__
_set_target_hash: Final = Target.__dict__["_attrs_cached_hash"].__set__
_SET_MNEMONIC: Final = Instruction.__dict__["mnemonic"].__set__
_SET_OPERANDS: Final = Instruction.__dict__["operands"].__set__
_SET_QP: Final = Instruction.__dict__["qp"].__set__
_SET_FORM: Final = Instruction.__dict__["form"].__set__
_SET_HASH: Final = Instruction.__dict__["_attrs_cached_hash"].__set__


def new_imm(value: int) -> Imm:
    """`Imm(value)` without the attrs __init__ (decoder hot path)."""
    imm = _new(Imm)
    _set_imm_value(imm, value)
    _set_imm_hash(imm, None)
    return imm


def new_target(offset: int) -> Target:
    """`Target(offset)` without the attrs __init__ (decoder hot path)."""
    target = _new(Target)
    _set_target_offset(target, offset)
    _set_target_hash(target, None)
    return target


# Interned operands: decoding creates no register objects.
GR: Final = tuple(Reg("r", n) for n in range(128))
PR: Final = tuple(Reg("p", n) for n in range(64))
BR: Final = tuple(Reg("b", n) for n in range(8))
AR: Final = tuple(Reg("ar", n) for n in range(128))
CR: Final = tuple(Reg("cr", n) for n in range(128))
MEM: Final = tuple(Mem(n) for n in range(128))
SPECIALS: Final = {name: Special(name) for name in ("psr", "psr.l", "psr.um", "ip", "pr")}
_REG_TABLES: Final = {"r": GR, "p": PR, "b": BR, "ar": AR, "cr": CR}
INDIRECT_FILES: Final = ("rr", "dbr", "ibr", "pkr", "pmc", "pmd", "cpuid", "dtr", "itr")
_INDIRECT: Final = {f: tuple(Indirect(f, n) for n in range(128)) for f in INDIRECT_FILES}


def reg(file: str, num: int) -> Reg:
    """The interned register `file``num` (ValueError when out of range)."""
    if not 0 <= num < _REG_LIMITS[file]:
        raise ValueError(f"no register {file}{num}")
    return _REG_TABLES[file][num]


# ---------------------------------------------------------------------------------------------------
# Operand fields

Extract = Callable[[int, int], Operand]  # (slot, L slot) -> operand
Insert = Callable[[int], tuple[int, int]]  # operand value -> (slot bits, L bits)


class OperandError(ValueError):
    """An operand value does not fit its field."""


@attrs.frozen
class OperandSpec:
    """How one operand sits in the slot: its kind, the bits it owns, and how to read and write it."""

    name: str
    kind: str
    bits: int  # slot bits owned by the operand (for the strict mask)
    extract: Extract
    insert: Insert
    style: str = "dec"  # immediates: dec, hex, hex64 (printed as an unsigned 64-bit value)
    fixed: int | None = None  # a fixed register number (cmpxchg's ar.ccv)
    #: `extract` as Python source for the decoder's generated per-form builders, with `slot` and `lslot` in
    #: scope: ("pick", table, index expression) is `table[index]`; ("imm", expression) and ("target",
    #: expression) are `Imm(expression)` and `Target(expression)`. None: the decoder calls `extract`.
    inline: tuple[str, tuple[Operand, ...] | None, str] | None = attrs.field(
        default=None, eq=False, repr=False, kw_only=True
    )


def _field(lo: int, width: int) -> int:
    return ((1 << width) - 1) << lo


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


def _check(value: int, lo: int, hi: int, what: str) -> None:
    if not lo <= value <= hi:
        raise OperandError(f"{what} {value} is out of range {lo}..{hi}")


def _reg_spec(name: str, file: str, lo: int, width: int) -> OperandSpec:
    table = _REG_TABLES[file]
    limit = 1 << width

    def extract(slot: int, _l: int) -> Operand:
        return table[(slot >> lo) & (limit - 1)]

    top = min(limit, _REG_LIMITS[file]) - 1

    def insert(value: int) -> tuple[int, int]:
        if not 0 <= value <= top:
            raise OperandError(f"register {file} {value} is out of range 0..{top}")
        return value << lo, 0

    index = f"(slot >> {lo}) & {limit - 1}"
    return OperandSpec(name, file, _field(lo, width), extract, insert, inline=("pick", table, index))


def _mem_spec(name: str) -> OperandSpec:
    def extract(slot: int, _l: int) -> Operand:
        return MEM[(slot >> 20) & 0x7F]

    def insert(value: int) -> tuple[int, int]:
        _check(value, 0, 127, "register r")
        return value << 20, 0

    return OperandSpec(name, "mem", _field(20, 7), extract, insert, inline=("pick", MEM, "(slot >> 20) & 127"))


def _indirect_spec(file: str) -> OperandSpec:
    table = _INDIRECT[file]

    def extract(slot: int, _l: int) -> Operand:
        return table[(slot >> 20) & 0x7F]

    def insert(value: int) -> tuple[int, int]:
        _check(value, 0, 127, "register r")
        return value << 20, 0

    inline = ("pick", table, "(slot >> 20) & 127")
    return OperandSpec("ind_" + file, "ind." + file, _field(20, 7), extract, insert, inline=inline)


def _special_spec(name: str) -> OperandSpec:
    operand = SPECIALS[name]
    return OperandSpec(name, name, 0, lambda _s, _l: operand, lambda _v: (0, 0), inline=("pick", (operand,), "0"))


def _fixed_reg_spec(name: str, file: str, num: int) -> OperandSpec:
    operand = _REG_TABLES[file][num]

    def insert(value: int) -> tuple[int, int]:
        if value != num:
            raise OperandError(f"operand must be {operand}")
        return 0, 0

    return OperandSpec(name, file, 0, lambda _s, _l: operand, insert, fixed=num, inline=("pick", (operand,), "0"))


def _imm_spec(
    name: str,
    parts: tuple[tuple[int, int, int], ...],
    *,
    signed: bool,
    style: str = "dec",
    scale: int = 0,
    drop_low: bool = False,
) -> OperandSpec:
    """An immediate made of slot fields: each part is (slot lo bit, width, position in the value)."""
    total = max(pos + width for _lo, width, pos in parts)
    bits = 0
    for lo, width, _pos in parts:
        bits |= _field(lo, width)
    lo_limit = -(1 << (total - 1)) if signed else 0
    hi_limit = (1 << (total - 1)) - 1 if signed else (1 << total) - 1

    # The field gathering unrolled into one expression (compiled once per spec; no loop when decoding).
    gather = " | ".join(f"((slot >> {lo}) & {(1 << width) - 1}) << {pos}" for lo, width, pos in parts)
    sign = 1 << (total - 1)
    body = f"value = {gather}\n    "
    body += f"value = (value ^ {sign}) - {sign}\n    " if signed else ""
    body += f"imm = new(Imm)\n    set_value(imm, value << {scale})\n    set_hash(imm, None)\n    return imm"
    namespace = {"new": _new, "Imm": Imm, "set_value": _set_imm_value, "set_hash": _set_imm_hash}
    exec(f"def extract(slot, _l):\n    {body}\n", namespace)  # built from the constant parts above
    extract: Extract = namespace["extract"]

    def insert(value: int) -> tuple[int, int]:
        if scale:
            if value & ((1 << scale) - 1) and not drop_low:
                raise OperandError(f"value {value} is not a multiple of {1 << scale}")
            value >>= scale
        _check(value, lo_limit, hi_limit, "immediate")
        word = 0
        for lo, width, pos in parts:
            word |= ((value >> pos) & ((1 << width) - 1)) << lo
        return word, 0

    if total <= 9:  # small fields: one shared Imm per raw field value
        values = range(1 << total)
        table = tuple(Imm(((v ^ sign) - sign if signed else v) << scale) for v in values)
        inline: tuple[str, tuple[Operand, ...] | None, str] = ("pick", table, gather)
    else:
        inline = ("imm", None, f"((({gather}) ^ {sign}) - {sign}) << {scale}" if signed else f"({gather}) << {scale}")
    return OperandSpec(name, "imm", bits, extract, insert, style, inline=inline)


def _target25_spec() -> OperandSpec:
    # B1/B3: target = bundle + sext(s << 20 | imm20b, 21) * 16.
    bits = _field(36, 1) | _field(13, 20)

    def extract(slot: int, _l: int) -> Operand:
        return new_target(_sext(((slot >> 36) & 1) << 20 | (slot >> 13) & 0xFFFFF, 21) << 4)

    def insert(value: int) -> tuple[int, int]:
        if value & 15:
            raise OperandError(f"branch displacement {value} is not a multiple of 16")
        disp = value >> 4
        _check(disp, -(1 << 20), (1 << 20) - 1, "branch displacement (bundles)")
        return ((disp >> 20) & 1) << 36 | (disp & 0xFFFFF) << 13, 0

    inline = ("target", None, "(((((slot >> 36) & 1) << 20 | (slot >> 13) & 0xFFFFF) ^ 0x100000) - 0x100000) << 4")
    return OperandSpec("tgt25c", "target", bits, extract, insert, inline=inline)


def _target64_spec() -> OperandSpec:
    # X3/X4: i (36), imm20b (32:13) and imm39 in L bits 40:2; target = bundle + sext(60 bits) * 16.
    bits = _field(36, 1) | _field(13, 20)

    def extract(slot: int, lslot: int) -> Operand:
        value = (slot >> 13) & 0xFFFFF | ((lslot >> 2) & ((1 << 39) - 1)) << 20 | ((slot >> 36) & 1) << 59
        return new_target(_sext(value, 60) << 4)

    def insert(value: int) -> tuple[int, int]:
        if value & 15:
            raise OperandError(f"branch displacement {value} is not a multiple of 16")
        disp = value >> 4
        _check(disp, -(1 << 59), (1 << 59) - 1, "branch displacement (bundles)")
        return ((disp >> 59) & 1) << 36 | (disp & 0xFFFFF) << 13, ((disp >> 20) & ((1 << 39) - 1)) << 2

    value = "(slot >> 13) & 0xFFFFF | ((lslot >> 2) & 0x7FFFFFFFFF) << 20 | ((slot >> 36) & 1) << 59"
    inline = ("target", None, f"((({value}) ^ {1 << 59}) - {1 << 59}) << 4")
    return OperandSpec("tgt64", "target", bits, extract, insert, inline=inline)


def _immu64_spec() -> OperandSpec:
    bits = _field(36, 1) | _field(27, 9) | _field(22, 5) | _field(21, 1) | _field(13, 7)

    def extract(slot: int, lslot: int) -> Operand:
        value = (
            (slot >> 13) & 0x7F
            | ((slot >> 27) & 0x1FF) << 7
            | ((slot >> 22) & 0x1F) << 16
            | ((slot >> 21) & 1) << 21
            | lslot << 22
            | ((slot >> 36) & 1) << 63
        )
        return new_imm(value)

    def insert(value: int) -> tuple[int, int]:
        if value < 0:
            value += 1 << 64
        _check(value, 0, (1 << 64) - 1, "immediate")
        word = (
            (value & 0x7F) << 13
            | ((value >> 7) & 0x1FF) << 27
            | ((value >> 16) & 0x1F) << 22
            | ((value >> 21) & 1) << 21
            | ((value >> 63) & 1) << 36
        )
        return word, (value >> 22) & SLOT_MASK

    value = (
        "(slot >> 13) & 0x7F | ((slot >> 27) & 0x1FF) << 7 | ((slot >> 22) & 0x1F) << 16"
        " | ((slot >> 21) & 1) << 21 | lslot << 22 | ((slot >> 36) & 1) << 63"
    )
    return OperandSpec("immu64", "imm", bits, extract, insert, "hex", inline=("imm", None, value))


def _immu62_spec() -> OperandSpec:
    # nop.x / break.x / hint.x: L (41 bits) << 21 | i (36) << 20 | imm20a (25:6).
    bits = _field(36, 1) | _field(6, 20)

    def extract(slot: int, lslot: int) -> Operand:
        return new_imm(lslot << 21 | ((slot >> 36) & 1) << 20 | (slot >> 6) & 0xFFFFF)

    def insert(value: int) -> tuple[int, int]:
        _check(value, 0, (1 << 62) - 1, "immediate")
        return (value & 0xFFFFF) << 6 | ((value >> 20) & 1) << 36, (value >> 21) & SLOT_MASK

    inline = ("imm", None, "lslot << 21 | ((slot >> 36) & 1) << 20 | (slot >> 6) & 0xFFFFF")
    return OperandSpec("immu62", "imm", bits, extract, insert, "hex", inline=inline)


def _count_spec(name: str, kind: str) -> OperandSpec:
    """Pseudo-op counts that set two fields: shl (dep.z pos, 64-pos) and shr/shr.u (extr pos, 64-pos)."""
    if kind == "shl":  # cpos6c (25:20) = 63 - n, len6d (32:27) = 63 - n
        bits = _field(20, 6) | _field(27, 6)

        def extract(slot: int, _l: int) -> Operand:
            return new_imm(63 - ((slot >> 20) & 0x3F))

        def insert(value: int) -> tuple[int, int]:
            _check(value, 0, 63, "shift count")
            return (63 - value) << 20 | (63 - value) << 27, 0

    else:  # pos6b (19:14) = n, len6d (32:27) = 63 - n
        bits = _field(14, 6) | _field(27, 6)

        def extract(slot: int, _l: int) -> Operand:
            return new_imm((slot >> 14) & 0x3F)

        def insert(value: int) -> tuple[int, int]:
            _check(value, 0, 63, "shift count")
            return value << 14 | (63 - value) << 27, 0

    lo = 20 if kind == "shl" else 14
    table = tuple(Imm(63 - f if kind == "shl" else f) for f in range(64))
    return OperandSpec(name, "imm", bits, extract, insert, inline=("pick", table, f"(slot >> {lo}) & 63"))


def _offset_spec(name: str, lo: int, width: int, *, base: int, negate: bool) -> OperandSpec:
    """Bit positions and lengths stored as `base - value` (cpos) or `value - base` (len - 1)."""
    limit = (1 << width) - 1

    def extract(slot: int, _l: int) -> Operand:
        field = (slot >> lo) & limit
        return new_imm(base - field if negate else field + base)

    def insert(value: int) -> tuple[int, int]:
        field = base - value if negate else value - base
        if not 0 <= field <= limit:
            raise OperandError(f"bit field value {value} is out of range")
        return field << lo, 0

    table = tuple(Imm(base - f if negate else f + base) for f in range(limit + 1))
    inline = ("pick", table, f"(slot >> {lo}) & {limit}")
    return OperandSpec(name, "imm", _field(lo, width), extract, insert, inline=inline)


R1 = _reg_spec("r1", "r", 6, 7)
R2 = _reg_spec("r2", "r", 13, 7)
R3 = _reg_spec("r3", "r", 20, 7)
R3_2 = _reg_spec("r3_2", "r", 20, 2)
P1 = _reg_spec("p1", "p", 6, 6)
P2 = _reg_spec("p2", "p", 27, 6)
B1 = _reg_spec("b1", "b", 6, 3)
B2 = _reg_spec("b2", "b", 13, 3)
AR3 = _reg_spec("ar3", "ar", 20, 7)
CR3 = _reg_spec("cr3", "cr", 20, 7)
MR3 = _mem_spec("mr3")
AR_CCV = _fixed_reg_spec("ar.ccv", "ar", 32)
IMM14 = _imm_spec("imm14", ((13, 7, 0), (27, 6, 7), (36, 1, 13)), signed=True)
IMM22 = _imm_spec("imm22", ((13, 7, 0), (27, 9, 7), (22, 5, 16), (36, 1, 21)), signed=True)
IMM8 = _imm_spec("imm8", ((13, 7, 0), (36, 1, 7)), signed=True)
IMM9A = _imm_spec("imm9a", ((6, 7, 0), (27, 1, 7), (36, 1, 8)), signed=True)
IMM9B = _imm_spec("imm9b", ((13, 7, 0), (27, 1, 7), (36, 1, 8)), signed=True)
IMMU21 = _imm_spec("immu21", ((6, 20, 0), (36, 1, 20)), signed=False, style="hex")
IMMU24 = _imm_spec("immu24", ((6, 21, 0), (31, 2, 21), (36, 1, 23)), signed=False, style="hex")
IMM17 = _imm_spec("imm17", ((6, 7, 0), (24, 8, 7), (36, 1, 15)), signed=True, style="hex64", scale=1, drop_low=True)
IMMU64 = _immu64_spec()
IMMU62 = _immu62_spec()
TGT25C = _target25_spec()
TGT64 = _target64_spec()
POS6 = _offset_spec("pos6", 14, 6, base=0, negate=False)
LEN6 = _offset_spec("len6", 27, 6, base=1, negate=False)
CPOS6C = _offset_spec("cpos6c", 20, 6, base=63, negate=True)
CPOS6D = _offset_spec("cpos6d", 31, 6, base=63, negate=True)
LEN4 = _offset_spec("len4", 27, 4, base=1, negate=False)
COUNT_SHL = _count_spec("count6", "shl")
COUNT_SHR = _count_spec("count6", "shr")


# ---------------------------------------------------------------------------------------------------
# Forms

LAST: Final = 1  # must end an instruction group (GAS forces a stop after it)
FIRST: Final = 2  # must start an instruction group
NO_PRED: Final = 4  # cannot be predicated (qp bits are fixed zero)

QP_MASK: Final = 0x3F


@attrs.frozen
class Form:
    """One instruction form: mnemonic, operand fields and the fixed bits that identify it."""

    mnemonic: str
    fmt: str  # SDM format name ("M44", "A5", ...)
    type: str  # A (M or I slot), M, I, B, F, X
    value: int  # fixed bits
    mask: int  # every bit that is not an operand field (or the qp)
    operands: tuple[OperandSpec, ...]
    outputs: int  # operands left of the "="
    flags: int = 0
    check: Callable[[int], bool] | None = None  # extra decode condition (pseudo-ops)
    long_zero: int = 0  # L-slot bits that must be zero (brl: imm39 sits in bits 40:2)
    #: (operands, qp) -> (slot bits, L bits), compiled from the operand specs (OperandError on range).
    encoder: Callable[[tuple[Operand, ...], int], tuple[int, int]] = attrs.field(
        default=None, eq=False, repr=False, kw_only=True
    )

    @property
    def signature(self) -> tuple[str, ...]:
        return tuple(o.kind for o in self.operands)

    @property
    def long(self) -> bool:
        return self.type == "X"


FORMS: list[Form] = []


def _add(
    mnemonic: str,
    fmt: str,
    type_: str,
    fixed: dict[tuple[int, int], int],
    operands: tuple[OperandSpec, ...] = (),
    outputs: int = 0,
    flags: int = 0,
    check: Callable[[int], bool] | None = None,
) -> None:
    value = 0
    for (lo, width), field_value in fixed.items():
        assert 0 <= field_value < 1 << width, (mnemonic, lo, width, field_value)
        value |= field_value << lo
    owned = 0 if flags & NO_PRED or (0, 6) in fixed else QP_MASK
    for spec in operands:
        owned |= spec.bits
    mask = SLOT_MASK & ~owned
    assert value & ~mask == 0, mnemonic
    encoder = _compile_encoder(value, operands)
    long_zero = 3 if TGT64 in operands else 0
    FORMS.append(Form(mnemonic, fmt, type_, value, mask, operands, outputs, flags, check, long_zero, encoder=encoder))


_VALUE_FIELD: Final = {"imm": "value", "mem": "base", "target": "offset", **{f: "num" for f in _REG_LIMITS}}


def _compile_encoder(
    value: int, specs: tuple[OperandSpec, ...]
) -> Callable[[tuple[Operand, ...], int], tuple[int, int]]:
    """A closure encoding operands for one form, unrolled for the usual one to three operands."""
    inserts = []
    for spec in specs:
        field = "index" if spec.kind.startswith("ind.") else _VALUE_FIELD.get(spec.kind)
        get = attrgetter(field) if field else (lambda _op: 0)
        inserts.append((spec.insert, get))
    if len(inserts) == 1:
        ((i0, g0),) = inserts

        def one(ops: tuple[Operand, ...], qp: int) -> tuple[int, int]:
            a, la = i0(g0(ops[0]))
            return value | qp | a, la

        return one
    if len(inserts) == 2:
        (i0, g0), (i1, g1) = inserts

        def two(ops: tuple[Operand, ...], qp: int) -> tuple[int, int]:
            a, la = i0(g0(ops[0]))
            b, lb = i1(g1(ops[1]))
            return value | qp | a | b, la | lb

        return two
    if len(inserts) == 3:
        (i0, g0), (i1, g1), (i2, g2) = inserts

        def three(ops: tuple[Operand, ...], qp: int) -> tuple[int, int]:
            a, la = i0(g0(ops[0]))
            b, lb = i1(g1(ops[1]))
            c, lc = i2(g2(ops[2]))
            return value | qp | a | b | c, la | lb | lc

        return three

    def many(ops: tuple[Operand, ...], qp: int) -> tuple[int, int]:
        word, lword = value | qp, 0
        for (insert, get), op in zip(inserts, ops, strict=True):
            bits, lbits = insert(get(op))
            word |= bits
            lword |= lbits
        return word, lword

    return many


OP = (37, 4)
X3 = (33, 3)
X6 = (27, 6)


def _build_m_unit() -> None:
    # M-sys1: op 1, x3 0, x6 (32:27); x (36) is fc.i only.
    m1 = {OP: 1, X3: 0}
    for x6, file in enumerate(("rr", "dbr", "ibr", "pkr", "pmc", "pmd")):
        _add("mov", "M42", "M", {**m1, X6: x6}, (_indirect_spec(file), R2), 1)
    for x6, name in ((0x09, "ptc.l"), (0x0A, "ptc.g"), (0x0B, "ptc.ga")):
        _add(name, "M45", "M", {**m1, X6: x6}, (R3, R2), 0, LAST if name != "ptc.l" else 0)
    _add("itr.d", "M42", "M", {**m1, X6: 0x0E}, (_indirect_spec("dtr"), R2), 1)
    _add("itr.i", "M42", "M", {**m1, X6: 0x0F}, (_indirect_spec("itr"), R2), 1)
    for x6, file in ((0x10, "rr"), (0x11, "dbr"), (0x12, "ibr"), (0x13, "pkr"), (0x14, "pmc"), (0x15, "pmd")):
        _add("mov", "M43", "M", {**m1, X6: x6}, (R1, _indirect_spec(file)), 1)
    _add("mov", "M43", "M", {**m1, X6: 0x17}, (R1, _indirect_spec("cpuid")), 1)
    for x6, name in ((0x1A, "thash"), (0x1B, "ttag"), (0x1E, "tpa"), (0x1F, "tak")):
        _add(name, "M46", "M", {**m1, X6: x6}, (R1, R3), 1)
    _add("mov", "M36", "M", {**m1, X6: 0x21}, (R1, _special_spec("psr.um")), 1)
    _add("mov", "M36", "M", {**m1, X6: 0x25}, (R1, _special_spec("psr")), 1)
    _add("mov", "M35", "M", {**m1, X6: 0x29}, (_special_spec("psr.um"), R2), 1)
    _add("mov", "M35", "M", {**m1, X6: 0x2D}, (_special_spec("psr.l"), R2), 1)
    _add("mov.m", "M31", "M", {**m1, X6: 0x22}, (R1, AR3), 1)
    _add("mov.m", "M29", "M", {**m1, X6: 0x2A}, (AR3, R2), 1)
    _add("mov", "M33", "M", {**m1, X6: 0x24}, (R1, CR3), 1)
    _add("mov", "M32", "M", {**m1, X6: 0x2C}, (CR3, R2), 1)
    _add("itc.d", "M41", "M", {**m1, X6: 0x2E}, (R2,), 0, LAST)
    _add("itc.i", "M41", "M", {**m1, X6: 0x2F}, (R2,), 0, LAST)
    _add("fc", "M28", "M", {**m1, X6: 0x30, (36, 1): 0}, (R3,))
    _add("fc.i", "M28", "M", {**m1, X6: 0x30, (36, 1): 1}, (R3,))
    _add("ptc.e", "M28", "M", {**m1, X6: 0x34}, (R3,))

    # M-sys0: op 0, x3 0, x2 (32:31), x4 (30:27).
    m0 = {OP: 0, X3: 0}
    x2, x4, y = (31, 2), (27, 4), (26, 1)
    _add("break.m", "M37", "M", {**m0, x2: 0, x4: 0, y: 0}, (IMMU21,))
    _add("nop.m", "M48", "M", {**m0, x2: 0, x4: 1, y: 0}, (IMMU21,))
    # hint.m: objdump and GAS disagree on the immediate's layout, so only `hint.m 0` (@pause) is known.
    _add("hint.m", "M48", "M", {**m0, x2: 0, x4: 1, y: 1, (6, 20): 0, (36, 1): 0}, (_fixed_imm(0),))
    for code, name in ((4, "sum"), (5, "rum"), (6, "ssm"), (7, "rsm")):
        _add(name, "M44", "M", {**m0, x4: code}, (IMMU24,))
    _add("invala", "M24", "M", {**m0, x2: 1, x4: 0, (6, 21): 0})
    _add("mf", "M24", "M", {**m0, x2: 2, x4: 2, (6, 21): 0})
    _add("mf.a", "M24", "M", {**m0, x2: 2, x4: 3, (6, 21): 0})
    _add("srlz.d", "M24", "M", {**m0, x2: 3, x4: 0, (6, 21): 0})
    _add("srlz.i", "M24", "M", {**m0, x2: 3, x4: 1, (6, 21): 0})
    _add("sync.i", "M24", "M", {**m0, x2: 3, x4: 3, (6, 21): 0})
    _add("loadrs", "M25", "M", {**m0, x2: 0, x4: 0xA, (6, 21): 0}, (), 0, FIRST | NO_PRED)
    _add("flushrs", "M25", "M", {**m0, x2: 0, x4: 0xC, (6, 21): 0}, (), 0, FIRST | NO_PRED)
    _add("mov.m", "M30", "M", {**m0, x2: 2, x4: 8}, (AR3, IMM8), 1)

    # Loads and stores: op 4 (m 36, x 27: M1/M2/M4/M16), op 5 (M3/M5); x6 (35:30), hint (29:28).
    x6m, hint_f, m_f, x_f = (30, 6), (28, 2), (36, 1), (27, 1)
    load_types = {"": 0x00, ".s": 0x04, ".a": 0x08, ".sa": 0x0C, ".bias": 0x10, ".acq": 0x14}
    load_types |= {".c.clr": 0x20, ".c.nc": 0x24, ".c.clr.acq": 0x28}
    loads = [(f"ld{1 << size}{suffix}", base + size) for suffix, base in load_types.items() for size in range(4)]
    loads.append(("ld8.fill", 0x1B))
    store_types = (("", 0x30), (".rel", 0x34))
    stores = [(f"st{1 << size}{suffix}", base + size) for suffix, base in store_types for size in range(4)]
    stores.append(("st8.spill", 0x3B))
    for name, code in loads:
        for hint, hname in ((0, ""), (1, ".nt1"), (3, ".nta")):
            mnem = name + hname
            _add(mnem, "M1", "M", {OP: 4, m_f: 0, x6m: code, hint_f: hint, x_f: 0, (13, 7): 0}, (R1, MR3), 1)
            _add(mnem, "M2", "M", {OP: 4, m_f: 1, x6m: code, hint_f: hint, x_f: 0}, (R1, MR3, R2), 1)
            _add(mnem, "M3", "M", {OP: 5, x6m: code, hint_f: hint}, (R1, MR3, IMM9B), 1)
    for name, code in stores:
        for hint, hname in ((0, ""), (3, ".nta")):
            mnem = name + hname
            _add(mnem, "M4", "M", {OP: 4, m_f: 0, x6m: code, hint_f: hint, x_f: 0, (6, 7): 0}, (MR3, R2), 1)
            _add(mnem, "M5", "M", {OP: 5, x6m: code, hint_f: hint}, (MR3, R2, IMM9A), 1)
    for size in range(4):
        for sem, base in ((".acq", 0), (".rel", 4)):
            for hint, hname in ((0, ""), (1, ".nt1"), (3, ".nta")):
                fixed = {OP: 4, m_f: 0, x6m: base + size, hint_f: hint, x_f: 1}
                _add(f"cmpxchg{1 << size}{sem}{hname}", "M16", "M", fixed, (R1, MR3, R2, AR_CCV), 1)


def _build_i_unit() -> None:
    i0 = {OP: 0, X3: 0}
    y = (26, 1)
    _add("break.i", "I19", "I", {**i0, X6: 0, y: 0}, (IMMU21,))
    _add("nop.i", "I18", "I", {**i0, X6: 1, y: 0}, (IMMU21,))
    _add("hint.i", "I18", "I", {**i0, X6: 1, y: 1}, (IMMU21,))
    _add("mov.i", "I27", "I", {**i0, X6: 0x0A}, (AR3, IMM8), 1)
    _add("mov.i", "I26", "I", {**i0, X6: 0x2A}, (AR3, R2), 1)
    _add("mov", "I25", "I", {**i0, X6: 0x30}, (R1, _special_spec("ip")), 1)
    _add("mov", "I22", "I", {**i0, X6: 0x31}, (R1, B2), 1)
    _add("mov.i", "I28", "I", {**i0, X6: 0x32}, (R1, AR3), 1)
    _add("mov", "I25", "I", {**i0, X6: 0x33}, (R1, _special_spec("pr")), 1)
    _add("mov", "I23", "I", {OP: 0, X3: 3, (32, 1): 0, (20, 4): 0}, (_special_spec("pr"), R2, IMM17), 1)
    # I21 mov b1 = r2 with no hints and no tag: wh (21:20) 1, x (22) 0, ih (23) 0, timm9c (32:24) 0.
    _add("mov", "I21", "I", {OP: 0, X3: 7, (20, 2): 1, (22, 1): 0, (23, 1): 0, (24, 9): 0}, (B1, R2), 1)

    # op 5: x2 (35:34), x (33); I11 extr (y 13), I12 dep.z (y 26), I16 tbit.
    def is_shr(slot: int) -> bool:
        return ((slot >> 14) & 0x3F) + ((slot >> 27) & 0x3F) == 63

    def is_shl(slot: int) -> bool:
        return (slot >> 20) & 0x3F == (slot >> 27) & 0x3F

    x2, xb = (34, 2), (33, 1)
    for yv, base in ((0, "extr.u"), (1, "extr")):
        fixed = {OP: 5, (36, 1): 0, x2: 1, xb: 0, (13, 1): yv}
        _add("shr.u" if yv == 0 else "shr", "I11", "I", fixed, (R1, R3, COUNT_SHR), 1, 0, is_shr)
        _add(base, "I11", "I", fixed, (R1, R3, POS6, LEN6), 1)
    fixed = {OP: 5, (36, 1): 0, x2: 1, xb: 1, (26, 1): 0}
    _add("shl", "I12", "I", fixed, (R1, R2, COUNT_SHL), 1, 0, is_shl)
    _add("dep.z", "I12", "I", fixed, (R1, R2, CPOS6C, LEN6), 1)
    _add("dep", "I15", "I", {OP: 4}, (R1, R2, R3, CPOS6D, LEN4), 1)
    for c, unc in ((0, ""), (1, ".unc")):
        fixed = {OP: 5, (36, 1): 0, x2: 0, xb: 0, (13, 1): 0, (12, 1): c}
        _add("tbit.z" + unc, "I16", "I", fixed, (P1, P2, R3, POS6), 2)
    # I5 / I7 variable shifts: op 7, za (36) 1, x2a (35:34) 0, zb (33) 1, ve (32) 0, x2c (31:30), x2b (29:28).
    var = {OP: 7, (36, 1): 1, (34, 2): 0, (33, 1): 1, (32, 1): 0}
    _add("shr.u", "I5", "I", {**var, (30, 2): 0, (28, 2): 0}, (R1, R3, R2), 1)
    _add("shr", "I5", "I", {**var, (30, 2): 0, (28, 2): 2}, (R1, R3, R2), 1)
    _add("shl", "I7", "I", {**var, (30, 2): 1, (28, 2): 0}, (R1, R2, R3), 1)


def _build_a_unit() -> None:
    a1 = {OP: 8, (36, 1): 0, (34, 2): 0, (33, 1): 0}
    x4, x2b = (29, 4), (27, 2)
    for name, code4, code2, extra in (
        ("add", 0, 0, False),
        ("add", 0, 1, True),
        ("sub", 1, 1, False),
        ("sub", 1, 0, True),
        ("addp4", 2, 0, False),
        ("and", 3, 0, False),
        ("andcm", 3, 1, False),
        ("or", 3, 2, False),
        ("xor", 3, 3, False),
    ):
        ops = (R1, R2, R3, _fixed_imm(1)) if extra else (R1, R2, R3)
        _add(name, "A1", "A", {**a1, x4: code4, x2b: code2}, ops, 1)
    a3 = {OP: 8, (34, 2): 0, (33, 1): 0}
    for name, code4, code2 in (("sub", 9, 1), ("and", 0xB, 0), ("andcm", 0xB, 1), ("or", 0xB, 2), ("xor", 0xB, 3)):
        _add(name, "A3", "A", {**a3, x4: code4, x2b: code2}, (R1, IMM8, R3), 1)
    a4 = {OP: 8, (34, 2): 2, (33, 1): 0}
    _add("mov", "A4", "A", {**a4, (36, 1): 0, (27, 6): 0, (13, 7): 0}, (R1, R3), 1)
    _add("adds", "A4", "A", a4, (R1, IMM14, R3), 1)
    _add("mov", "A5", "A", {OP: 9, (20, 2): 0}, (R1, IMM22), 1)
    _add("addl", "A5", "A", {OP: 9}, (R1, IMM22, R3_2), 1)
    for op, rel in ((0xC, "lt"), (0xD, "ltu"), (0xE, "eq")):
        for x2, size in ((0, ""), (1, "4")):
            for c, unc in ((0, ""), (1, ".unc")):
                mnem = f"cmp{size}.{rel}{unc}"
                fixed = {OP: op, (36, 1): 0, (34, 2): x2, (33, 1): 0, (12, 1): c}
                _add(mnem, "A6", "A", fixed, (P1, P2, R2, R3), 2)
                fixed = {OP: op, (34, 2): x2 + 2, (33, 1): 0, (12, 1): c}
                _add(mnem, "A8", "A", fixed, (P1, P2, IMM8, R3), 2)


def _fixed_imm(fixed: int) -> OperandSpec:
    """An immediate operand with one allowed value and no bits (add r1 = r2, r3, 1; hint.m 0)."""

    def insert(value: int) -> tuple[int, int]:
        if value != fixed:
            raise OperandError(f"this operand must be {fixed}")
        return 0, 0

    operand = Imm(fixed)
    return OperandSpec("fixed", "imm", 0, lambda _s, _l: operand, insert, inline=("pick", (operand,), "0"))


BRANCH_HINTS: Final = ("sptk", "spnt", "dptk", "dpnt")
B5_HINTS: Final = {1: "sptk", 3: "spnt", 5: "dptk", 7: "dpnt"}


def _build_b_unit() -> None:
    wh, ph, dh = (33, 2), (12, 1), (35, 1)
    for w, hint in enumerate(BRANCH_HINTS):
        for p, pname in ((0, "few"), (1, "many")):
            for d, dname in ((0, ""), (1, ".clr")):
                tail = f"{hint}.{pname}{dname}"
                if hint == "sptk":  # unpredicated br.cond.sptk prints as the pseudo-op br.few / br.many
                    short = f"br.{pname}{dname}"
                    _add(short, "B1", "B", {OP: 4, dh: d, wh: w, ph: p, (6, 3): 0, (0, 6): 0}, (TGT25C,))
                    fixed = {OP: 0, dh: d, wh: w, X6: 0x20, ph: p, (6, 3): 0, (16, 11): 0, (0, 6): 0}
                    _add(short, "B4", "B", {**fixed, (9, 3): 0}, (B2,))
                _add("br.cond." + tail, "B1", "B", {OP: 4, dh: d, wh: w, ph: p, (6, 3): 0}, (TGT25C,))
                _add("br.call." + tail, "B3", "B", {OP: 5, dh: d, wh: w, ph: p, (9, 3): 0}, (B1, TGT25C), 1)
                fixed = {OP: 0, dh: d, wh: w, ph: p, (16, 11): 0, (9, 3): 0}
                _add("br.cond." + tail, "B4", "B", {**fixed, X6: 0x20, (6, 3): 0}, (B2,))
                _add("br.ret." + tail, "B4", "B", {**fixed, X6: 0x21, (6, 3): 4}, (B2,))
                _add("brl.cond." + tail, "X3", "X", {OP: 0xC, dh: d, wh: w, ph: p, (6, 3): 0}, (TGT64,))
                if hint == "sptk":
                    fixed_x = {OP: 0xC, dh: d, wh: w, ph: p, (6, 3): 0, (0, 6): 0}
                    _add(f"brl.{pname}{dname}", "X3", "X", fixed_x, (TGT64,))
                _add("brl.call." + tail, "X4", "X", {OP: 0xD, dh: d, wh: w, ph: p}, (B1, TGT64), 1)
    for w, hint in B5_HINTS.items():
        for p, pname in ((0, "few"), (1, "many")):
            for d, dname in ((0, ""), (1, ".clr")):
                fixed = {OP: 1, dh: d, (32, 3): w, ph: p, (16, 16): 0, (9, 3): 0}
                _add(f"br.call.{hint}.{pname}{dname}", "B5", "B", fixed, (B1, B2), 1)
    b0 = {OP: 0, X3: 0, (6, 21): 0}
    for x6, name in ((2, "cover"), (4, "clrrrb"), (5, "clrrrb.pr"), (8, "rfi"), (0xC, "bsw.0"), (0xD, "bsw.1")):
        _add(name, "B8", "B", {**b0, X6: x6, (0, 6): 0}, (), 0, LAST | NO_PRED)
    _add("epc", "B8", "B", {**b0, X6: 0x10, (0, 6): 0}, (), 0, NO_PRED)
    _add("break.b", "B9", "B", {OP: 0, X3: 0, X6: 0, (26, 1): 0}, (IMMU21,))
    _add("nop.b", "B9", "B", {OP: 2, X3: 0, X6: 0, (26, 1): 0}, (IMMU21,))


def _build_f_and_x_units() -> None:
    f0 = {OP: 0, (33, 1): 0, (34, 2): 0, X6: 0}
    _add("break.f", "F15", "F", {**f0, (26, 1): 0}, (IMMU21,))
    _add("nop.f", "F16", "F", {**f0, X6: 1, (26, 1): 0}, (IMMU21,))
    _add("hint.f", "F16", "F", {**f0, X6: 1, (26, 1): 1}, (IMMU21,))
    x0 = {OP: 0, X3: 0}
    _add("break.x", "X1", "X", {**x0, X6: 0, (26, 1): 0}, (IMMU62,))
    _add("nop.x", "X5", "X", {**x0, X6: 1, (26, 1): 0}, (IMMU62,))
    _add("hint.x", "X5", "X", {**x0, X6: 1, (26, 1): 1}, (IMMU62,))
    _add("movl", "X2", "X", {OP: 6, (20, 1): 0}, (R1, IMMU64), 1)


_build_m_unit()
_build_i_unit()
_build_a_unit()
_build_b_unit()
_build_f_and_x_units()

#: Forms by (mnemonic, operand kinds), in table order.
FORMS_BY_SIGNATURE: Final[dict[tuple[str, tuple[str, ...]], list[Form]]] = {}
for _form in FORMS:
    FORMS_BY_SIGNATURE.setdefault((_form.mnemonic, _form.signature), []).append(_form)

#: Every mnemonic the table knows.
MNEMONICS: Final = frozenset(f.mnemonic for f in FORMS)


def form_of(insn: Instruction) -> Form | None:
    """The first form whose mnemonic and operand kinds match `insn` (None when there is none)."""
    if insn.form is not None:
        return insn.form
    forms = FORMS_BY_SIGNATURE.get((insn.mnemonic, tuple(o.kind for o in insn.operands)))
    return forms[0] if forms else None


def format_operand(spec: OperandSpec | None, operand: Operand, address: int = 0) -> str:
    """An operand as objdump prints it; targets are printed as absolute addresses from `address`."""
    if isinstance(operand, Imm):
        style = spec.style if spec is not None else "dec"
        if style == "hex":
            return f"{operand.value:#x}"
        if style == "hex64":
            return f"{operand.value & 0xFFFFFFFFFFFFFFFF:#x}"
        return str(operand.value)
    if isinstance(operand, Target):
        return f"{(address + operand.offset) & 0xFFFFFFFFFFFFFFFF:#x}"
    return str(operand)


def format_instruction(insn: AnyInstruction, address: int = 0) -> str:
    """The instruction text objdump prints (predicate excluded): "ld8 r3=[r2],8", "break.m 0x1"."""
    if isinstance(insn, UnknownInstruction):
        return str(insn)
    form = form_of(insn)
    specs: tuple[OperandSpec | None, ...] = form.operands if form else (None,) * len(insn.operands)
    outputs = form.outputs if form else 0
    texts = [format_operand(s, o, address) for s, o in zip(specs, insn.operands, strict=True)]
    if not texts:
        return insn.mnemonic
    if outputs:
        return f"{insn.mnemonic} {','.join(texts[:outputs])}={','.join(texts[outputs:])}"
    return f"{insn.mnemonic} {','.join(texts)}"
