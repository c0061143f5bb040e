"""IA-64 encoder: instructions to bundle bytes, and an assembler for the GNU as subset the spec uses.

`encode_bundle` packs instructions into a bundle of a given template (units are checked). `assemble`
parses GAS syntax (`(p6) ssm psr.i`, `;;` stops, `{ .mii ... }` explicit bundles, `[99:]` tags, labels
and `888b` local references, `movl`, the pseudo-ops `cmp.ne`, `tbit.nz`, `shl`, `mov`, ...) and bundles
the instructions the way `ia64-linux-gnu-as -xnone` does: GAS keeps up to four instructions queued,
picks the best template for the first three (its `best_template` goodness table, tuned for Itanium 2),
fills slots in order with nops, switches MII/MMI to the mid-stop templates MI;I and M;MI when a stop
falls inside a bundle, starts a new bundle at each label, and puts itc/ptc.g/ptc.ga (and B-unit
rfi/cover/bsw/clrrrb) last in their instruction group. The end of the text ends the last group, as
the end of a file does for GAS. Errors are `AsmError`s with a line and column, never tracebacks.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs

from pvgen.ia64.bundle import SLOT_MASK, TEMPLATES, pack_int
from pvgen.ia64.insn import (
    AR_NAMES,
    CR_NAMES,
    EXTRA_CR_NAMES,
    FIRST,
    FORMS_BY_SIGNATURE,
    INDIRECT_FILES,
    LAST,
    NO_PRED,
    SPECIALS,
    AnyInstruction,
    Form,
    Imm,
    Indirect,
    Instruction,
    Mem,
    Operand,
    OperandError,
    Reg,
    Special,
    Target,
    UnknownInstruction,
    reg,
)


class EncodeError(ValueError):
    """An instruction cannot be encoded (unknown form, operand out of range, wrong unit)."""


# ---------------------------------------------------------------------------------------------------
# Instruction encoding

_UNIT_TYPES: Final = {"M": ("M", "A"), "I": ("I", "A"), "B": ("B",), "F": ("F",), "X": ("X",), "L": ("X",)}
_encode_caches: dict[str, dict[AnyInstruction, tuple[int, int]]] = {unit: {} for unit in "MIBFX"}


def encode_form(form: Form, insn: Instruction) -> tuple[int, int]:
    """(slot bits, L bits) of `insn` in `form` (OperandError when an operand does not fit)."""
    qp = insn.qp
    if qp and (form.flags & NO_PRED or not 0 < qp < 64):
        raise OperandError(f"{insn.mnemonic} cannot be predicated" if form.flags & NO_PRED else f"no register p{qp}")
    if len(insn.operands) != len(form.operands):
        raise OperandError(f"{form.mnemonic} takes {len(form.operands)} operands")
    return form.encoder(insn.operands, qp)


def encode_slot(insn: AnyInstruction, unit: str) -> tuple[int, int]:
    """Encodes `insn` for a slot of `unit` (M, I, B, F or X); returns (slot bits, L-slot bits)."""
    cache = _encode_caches.get(unit)
    if cache is None:
        raise EncodeError(f"no slot unit {unit!r}; expected one of: B, F, I, M, X")
    form = getattr(insn, "form", None)
    allowed = _UNIT_TYPES[unit]
    if form is not None and form.type in allowed:
        # Decoded (and assembled) instructions know their form: encoding them directly is
        # cheaper than hashing them for the cache.
        try:
            return encode_form(form, insn)  # type: ignore[arg-type]
        except OperandError as error:
            raise EncodeError(f"{insn}: {error}") from None
    result = cache.get(insn)
    if result is not None:
        return result
    if isinstance(insn, UnknownInstruction):
        result = insn.raw & SLOT_MASK, (insn.long or 0) & SLOT_MASK
    else:
        forms = FORMS_BY_SIGNATURE.get((insn.mnemonic, tuple(o.kind for o in insn.operands)))
        if not forms:
            raise EncodeError(f"unknown instruction form: {insn}")
        fitting = [f for f in forms if f.type in allowed]
        if not fitting:
            raise EncodeError(f"{insn.mnemonic} cannot go in an {unit} slot")
        errors = []
        for candidate in fitting:
            try:
                result = encode_form(candidate, insn)
                break
            except OperandError as error:
                errors.append(str(error))
        else:
            raise EncodeError(f"{insn}: {errors[0]}")
    if len(cache) >= 1 << 16:
        cache.clear()
    cache[insn] = result
    return result


def encode_bundle_int(template: int, instructions: Sequence[AnyInstruction]) -> int:
    """The bundle as a 128-bit integer; see `encode_bundle`."""
    info = TEMPLATES[template]
    units = info.units
    if units is None:
        if len(instructions) != 3 or not all(isinstance(i, UnknownInstruction) for i in instructions):
            raise EncodeError(f"template {template:#x} is reserved: only raw (unknown) slots fit")
        return pack_int(template, *(i.raw & SLOT_MASK for i in instructions))  # type: ignore[union-attr]
    if units[1] == "L":
        if len(instructions) != 2:
            raise EncodeError(f"an {info.name} bundle takes 2 instructions (M and L+X), got {len(instructions)}")
        slot0, _ = encode_slot(instructions[0], "M")
        slot2, slot1 = encode_slot(instructions[1], "X")
        return pack_int(template, slot0, slot1, slot2)
    if len(instructions) != 3:
        raise EncodeError(f"an {info.name} bundle takes 3 instructions, got {len(instructions)}")
    return pack_int(
        template,
        encode_slot(instructions[0], units[0])[0],
        encode_slot(instructions[1], units[1])[0],
        encode_slot(instructions[2], units[2])[0],
    )


def encode_bundle(template: int, instructions: Sequence[AnyInstruction]) -> bytes:
    """Encodes one bundle: `template` (0..31, the stop bit included) and one instruction per slot
    (two for MLX: the M instruction and the L+X instruction). Raises EncodeError."""
    return encode_bundle_int(template, instructions).to_bytes(16, "little")


def encode(bundles: Iterable[tuple[int, Sequence[AnyInstruction]]]) -> bytes:
    """Encodes (template, instructions) pairs into consecutive bundles."""
    return b"".join(encode_bundle(t, i) for t, i in bundles)


# ---------------------------------------------------------------------------------------------------
# Assembler: errors, results


class AsmError(ValueError):
    """An error in assembly text, located at a 1-based line and column."""

    def __init__(self, message: str, line: int, column: int) -> None:
        self.message = message
        self.line = line
        self.column = column
        super().__init__(f"{line}:{column}: error: {message}")


@attrs.frozen
class Relocation:
    """A branch or long-immediate operand naming a symbol the text does not define (field left 0)."""

    offset: int  # address of the bundle
    slot: int
    symbol: str
    addend: int


@attrs.frozen
class Assembly:
    """Assembled code: bytes, the bundles as (template, instructions), label and tag addresses."""

    code: bytes
    bundles: tuple[tuple[int, tuple[AnyInstruction, ...]], ...]
    symbols: Mapping[str, int]
    relocations: tuple[Relocation, ...]


# ---------------------------------------------------------------------------------------------------
# Assembler: lexical level

_TEMPLATE_DIRECTIVES: Final = {
    ".mii": 0,
    ".mli": 2,
    ".mlx": 2,
    ".mmi": 4,
    ".mfi": 6,
    ".mmf": 7,
    ".mib": 8,
    ".mbb": 9,
    ".bbb": 11,
    ".mmb": 12,
    ".mfb": 14,
}
_IGNORED_DIRECTIVES: Final = frozenset({".serialize.data", ".serialize.instruction", ".mem.offset", ".pred.rel"})
_CONDITIONALS: Final = frozenset({".ifc", ".ifnc", ".else", ".endif"})
PSR_BITS: Final = {
    "psr.be": 1,
    "psr.up": 2,
    "psr.ac": 3,
    "psr.mfl": 4,
    "psr.mfh": 5,
    "psr.ic": 13,
    "psr.i": 14,
    "psr.pk": 15,
    "psr.dt": 17,
    "psr.dfl": 18,
    "psr.dfh": 19,
    "psr.sp": 20,
    "psr.pp": 21,
    "psr.di": 22,
    "psr.si": 23,
    "psr.db": 24,
    "psr.lp": 25,
    "psr.tb": 26,
    "psr.rt": 27,
    "psr.is": 34,
    "psr.mc": 35,
    "psr.it": 36,
    "psr.id": 37,
    "psr.da": 38,
    "psr.dd": 39,
    "psr.ss": 40,
    "psr.ed": 43,
    "psr.bn": 44,
}
_AR_BY_NAME: Final = {name: num for num, name in AR_NAMES.items()}
_CR_BY_NAME: Final = {name: num for num, name in CR_NAMES.items()} | EXTRA_CR_NAMES
_ALIASES: Final = {"gp": ("r", 1), "sp": ("r", 12), "tp": ("r", 13), "rp": ("b", 0)} | {
    f"ret{n}": ("r", 8 + n) for n in range(4)
}
_NAME = r"[A-Za-z_.$][A-Za-z0-9_.$@?]*"
_TOKEN = re.compile(
    rf"\s*(?:(?P<num>0[xX][0-9a-fA-F]+|[0-9]+[bf]?)|(?P<name>{_NAME})|(?P<op><<|>>|[-+~|&^()\[\]=,*/]))"
)


@attrs.frozen
class _Token:
    kind: str  # num, name, op
    text: str
    column: int


@attrs.frozen
class _Statement:
    kind: str  # insn, stop, open, close, label, tag, directive
    text: str
    line: int
    column: int
    qp: int = 0
    qp_column: int = 0


def _split_statements(source: str) -> list[_Statement]:
    """Splits source into statements: `;;` stops, `;` separators, `{`/`}`, labels, tags, predicates."""
    statements: list[_Statement] = []
    for line_no, raw in enumerate(source.split("\n"), start=1):
        line = raw
        comment = line.find("//")
        if comment >= 0:
            line = line[:comment]
        if line.lstrip().startswith("#"):
            continue
        pos, n = 0, len(line)
        start = 0
        while pos <= n:
            ch = line[pos] if pos < n else "\n"
            if ch == '"':  # a string (.error "...") may hold separators
                close = line.find('"', pos + 1)
                pos = n if close < 0 else close + 1
                continue
            if ch in ";{}\n":
                _parse_piece(line[start:pos], line_no, start + 1, statements)
                if ch == ";" and pos + 1 < n and line[pos + 1] == ";":
                    statements.append(_Statement("stop", ";;", line_no, pos + 1))
                    pos += 1
                elif ch == "{":
                    statements.append(_Statement("open", "{", line_no, pos + 1))
                elif ch == "}":
                    statements.append(_Statement("close", "}", line_no, pos + 1))
                start = pos + 1
            pos += 1
    return statements


_LABEL = re.compile(rf"\s*({_NAME}|[0-9]+)\s*:(?!:)")
_TAG = re.compile(rf"\s*\[\s*({_NAME}|[0-9]+)\s*:\s*\]")
_PRED = re.compile(r"\s*\(\s*p([0-9]+)\s*\)")


def _parse_piece(text: str, line: int, column: int, out: list[_Statement]) -> None:
    pos = 0
    while True:
        match = _TAG.match(text, pos)
        if match:
            out.append(_Statement("tag", match.group(1), line, column + match.start(1)))
            pos = match.end()
            continue
        match = _LABEL.match(text, pos)
        if match and not text[match.end() :].startswith("="):
            out.append(_Statement("label", match.group(1), line, column + match.start(1)))
            pos = match.end()
            continue
        break
    qp, qp_column = 0, 0
    match = _PRED.match(text, pos)
    if match:
        qp, qp_column = int(match.group(1)), column + match.start(1) - 1
        if qp > 63:
            raise AsmError(f"no predicate register p{qp}", line, qp_column)
        pos = match.end()
    rest = text[pos:]
    stripped = rest.strip()
    if not stripped:
        if qp_column:
            raise AsmError("qualifying predicate not followed by instruction", line, qp_column)
        return
    col = column + pos + (len(rest) - len(rest.lstrip()))
    kind = "directive" if stripped.startswith(".") else "insn"
    if kind == "directive" and qp_column:
        raise AsmError("a directive cannot be predicated", line, qp_column)
    out.append(_Statement(kind, stripped, line, col, qp, qp_column))


def _tokenize(text: str, line: int, column: int) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            stray = len(text) - len(text[pos:].lstrip())
            raise AsmError(f"unexpected character {text[stray]!r}", line, column + stray)
        kind = match.lastgroup or "op"
        tokens.append(_Token(kind, match.group(kind), column + match.start(kind)))
        pos = match.end()
    return tokens


# ---------------------------------------------------------------------------------------------------
# Assembler: operands


@attrs.frozen
class _Expr:
    """A parsed expression: a constant, or a symbol plus a constant."""

    value: int
    symbol: str | None = None


ParsedOperand = Reg | Special | Mem | Indirect | _Expr


class _OperandParser:
    def __init__(self, tokens: list[_Token], line: int, local_labels: dict[str, int]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.line = line
        self.local_labels = local_labels

    def error(self, message: str, token: _Token | None = None) -> AsmError:
        token = token or (self.tokens[self.pos] if self.pos < len(self.tokens) else self.tokens[-1])
        return AsmError(message, self.line, token.column)

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end of operands")
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text:
            raise self.error(f"expected {text!r}, found {token.text!r}", token)

    def operand(self) -> tuple[ParsedOperand, _Token]:
        token = self.peek()
        if token is None:
            raise self.error("missing operand")
        if token.text == "[":
            self.take()
            base = self.register_token(self.take())
            if base.file != "r":
                raise self.error("expected a general register inside [ ]", token)
            self.expect("]")
            return Mem(base.num), token
        if token.kind == "name":
            name = token.text
            lowered = name.lower()
            following = self.tokens[self.pos + 1] if self.pos + 1 < len(self.tokens) else None
            if lowered in INDIRECT_FILES and following is not None and following.text == "[":
                self.pos += 2
                index = self.register_token(self.take())
                if index.file != "r":
                    raise self.error("expected a general register inside [ ]", token)
                self.expect("]")
                return Indirect(lowered, index.num), token
            register = self.try_register(name)
            if register is not None:
                self.take()
                return register, token
        return self.expression(), token

    def register_token(self, token: _Token) -> Reg:
        register = self.try_register(token.text) if token.kind == "name" else None
        if not isinstance(register, Reg):
            raise self.error(f"expected a register, found {token.text!r}", token)
        return register

    @staticmethod
    def try_register(name: str) -> Reg | Special | None:
        lowered = name.lower()
        if lowered in SPECIALS:
            return SPECIALS[lowered]
        if lowered in _ALIASES:
            file, num = _ALIASES[lowered]
            return reg(file, num)
        if lowered in _AR_BY_NAME:
            return reg("ar", _AR_BY_NAME[lowered])
        if lowered in _CR_BY_NAME:
            return reg("cr", _CR_BY_NAME[lowered])
        match = re.fullmatch(r"(r|p|b|ar|cr)([0-9]+)", lowered)
        if match:
            file, num = match.group(1), int(match.group(2))
            try:
                return reg(file, num)
            except ValueError:
                return None
        return None

    # expression := term (('|' | '^' | '&' | '+' | '-' | '<<' | '>>') term)*, evaluated left to right
    # with C precedence for the operators the spec needs.
    def expression(self) -> _Expr:
        return self.binary(0)

    _PRECEDENCE: Final = {"|": 1, "^": 2, "&": 3, "<<": 4, ">>": 4, "+": 5, "-": 5, "*": 6, "/": 6}

    def binary(self, min_level: int) -> _Expr:
        left = self.unary()
        while True:
            token = self.peek()
            level = self._PRECEDENCE.get(token.text, 0) if token is not None and token.kind == "op" else 0
            if level <= min_level:
                return left
            self.take()
            right = self.binary(level)
            left = self.combine(token, left, right)  # type: ignore[arg-type]

    def combine(self, token: _Token, left: _Expr, right: _Expr) -> _Expr:
        op = token.text
        if op in "+-" and right.symbol is None:
            value = left.value + right.value if op == "+" else left.value - right.value
            return _Expr(value, left.symbol)
        if op == "+" and left.symbol is None:
            return _Expr(left.value + right.value, right.symbol)
        if left.symbol is not None or right.symbol is not None:
            raise self.error(f"operator {op!r} needs constant operands", token)
        a, b = left.value, right.value
        if op in "/" and b == 0:
            raise self.error("division by zero", token)
        results = {"|": a | b, "^": a ^ b, "&": a & b, "*": a * b}
        if op in results:
            return _Expr(results[op])
        if op == "/":
            return _Expr(int(a / b))
        if b < 0 or b > 127:
            raise self.error("shift count out of range", token)
        return _Expr(a << b if op == "<<" else a >> b)

    def unary(self) -> _Expr:
        token = self.take()
        if token.text == "-":
            inner = self.unary()
            if inner.symbol is not None:
                raise self.error("cannot negate a symbol", token)
            return _Expr(-inner.value)
        if token.text == "~":
            inner = self.unary()
            if inner.symbol is not None:
                raise self.error("cannot complement a symbol", token)
            return _Expr(~inner.value)
        if token.text == "+":
            return self.unary()
        if token.text == "(":
            inner = self.binary(0)
            self.expect(")")
            return inner
        if token.kind == "num":
            text = token.text
            if text[-1] in "bf" and not text.lower().startswith("0x"):
                return _Expr(0, self.local_reference(text, token))
            return _Expr(int(text, 0) if not text.startswith("0") or text.lower().startswith("0x") else int(text, 8))
        if token.kind == "name":
            lowered = token.text.lower()
            if lowered in PSR_BITS:
                return _Expr(1 << PSR_BITS[lowered])
            if self.try_register(token.text) is not None:
                raise self.error(f"register {token.text} is not allowed here", token)
            return _Expr(0, token.text)
        raise self.error(f"unexpected {token.text!r}", token)

    def local_reference(self, text: str, token: _Token) -> str:
        number, direction = text[:-1], text[-1]
        instance = self.local_labels.get(number, 0)
        if direction == "b":
            if instance == 0:
                raise self.error(f"no local label {number} before this point", token)
            return f"{number}\x02{instance}"
        return f"{number}\x02{instance + 1}"


# ---------------------------------------------------------------------------------------------------
# Assembler: GAS's template choice (tc-ia64.c best_template, tuned for Itanium 2)

# Instruction types and units in GAS's numbering.
_TYPE_NUMBERS: Final = {"": 0, "A": 1, "I": 2, "M": 3, "B": 4, "F": 5, "X": 6, "D": 7}
_UNIT_LETTERS: Final = ("", "I", "M", "B", "F", "L", "X")
_GAS_TEMPLATES: Final = tuple(
    tuple(TEMPLATES[2 * t].units or ("", "", "")) for t in range(16)
)  # 4-bit template index -> units ("" for reserved)


def _fits(units: tuple[str, ...], type_: int, slot: int) -> bool:
    unit = units[slot]
    if type_ == 7:  # nop, break, hint: any unit
        return True
    if type_ == 1:
        return unit in ("I", "M")
    return unit == {2: "I", 3: "M", 4: "B", 5: "F", 6: "L"}.get(type_)


def _extra_goodness(units: tuple[str, ...], slot: int) -> int:
    return 2 if units[slot] in ("M", "I") else 0


def _best_templates() -> dict[tuple[int, int, int], int]:
    best: dict[tuple[int, int, int], int] = {}
    for i in range(8):
        for j in range(8):
            for k in range(8):
                top, choice = 0, 0
                for t, units in enumerate(_GAS_TEMPLATES):
                    goodness = 0
                    if _fits(units, i, 0):
                        if _fits(units, j, 1):
                            if (t == 2 and j == 6) or _fits(units, k, 2):
                                goodness = 9
                            else:
                                goodness = 6 + _extra_goodness(units, 2)
                        elif _fits(units, j, 2):
                            goodness = 6 + _extra_goodness(units, 1)
                        else:
                            goodness = 3 + _extra_goodness(units, 1) + _extra_goodness(units, 2)
                    elif _fits(units, i, 1):
                        if (t == 2 and i == 6) or _fits(units, j, 2):
                            goodness = 6
                        else:
                            goodness = 3 + _extra_goodness(units, 2)
                    elif _fits(units, i, 2):
                        goodness = 3 + _extra_goodness(units, 1)
                    if goodness > top:
                        top, choice = goodness, t
                best[(i, j, k)] = choice
    return best


_BEST_TEMPLATE: Final = _best_templates()
# GAS's nop table: what an empty slot of each unit holds (an empty MLX is L = 0 and nop.x).
_NOP_BITS: Final = {"M": 0x0008000000, "I": 0x0008000000, "F": 0x0008000000, "B": 0x4000000000} | {
    "L": 0,
    "X": 0x0008000000,
    "": 0,
}


@attrs.define
class _Slot:
    """One queued instruction (GAS's md.slot)."""

    insn: Instruction  # canonical, or the bare nop/break/hint for type D
    type: str  # A I M B F X, or D for an unsuffixed nop/break/hint
    flags: int
    line: int
    column: int
    fixups: list[tuple[int, _Expr]] = attrs.Factory(list)
    end_of_group: bool = False
    manual_on: bool = False
    manual_off: bool = False
    user_template: int = -1
    labels: list[str] = attrs.Factory(list)
    tags: list[str] = attrs.Factory(list)


@attrs.define
class _Bundle:
    template: int  # 0..31
    slots: list[int | tuple[_Slot, str] | None]  # nop bits, (queued slot, unit), None after an L+X


# ---------------------------------------------------------------------------------------------------
# Assembler: instruction resolution (pseudo-ops to canonical forms)

_CMP_RELATIONS: Final = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "ltu", "leu", "gtu", "geu"})
_BRANCH = re.compile(r"(brl?)(?:\.(cond|call|ret))?(?:\.(sptk|spnt|dptk|dpnt))?(?:\.(few|many))?(\.clr)?")


class _Resolver:
    """Turns a parsed statement into a canonical instruction for the bundler."""

    def __init__(self, statement: _Statement, local_labels: dict[str, int]) -> None:
        self.statement = statement
        self.local_labels = local_labels

    def error(self, message: str, column: int | None = None) -> AsmError:
        return AsmError(message, self.statement.line, column or self.statement.column)

    def resolve(self) -> _Slot:
        st = self.statement
        match = re.match(r"\S+", st.text)
        assert match is not None
        mnemonic = match.group(0).lower()
        tokens = _tokenize(st.text[match.end() :], st.line, st.column + match.end())
        parser = _OperandParser(tokens, st.line, self.local_labels)
        outputs: list[tuple[ParsedOperand, _Token]] = []
        inputs: list[tuple[ParsedOperand, _Token]] = []
        current = inputs
        while parser.peek() is not None:
            current.append(parser.operand())
            token = parser.peek()
            if token is None:
                break
            if token.text == "=" and current is inputs and not outputs:
                parser.take()
                outputs, inputs = inputs, []
                current = inputs
            elif token.text == ",":
                parser.take()
                if parser.peek() is None:
                    raise self.error("missing operand after ','", token.column)
            else:
                raise self.error(f"unexpected {token.text!r}", token.column)
        return self.build(mnemonic, outputs, inputs)

    def build(
        self,
        mnemonic: str,
        outputs: list[tuple[ParsedOperand, _Token]],
        inputs: list[tuple[ParsedOperand, _Token]],
    ) -> _Slot:
        st = self.statement
        qp = st.qp
        if mnemonic == "hint":
            raise self.error("a unit-less hint is not supported; write hint.i, hint.f or hint.x")
        if mnemonic in ("nop", "break"):
            if outputs or len(inputs) != 1 or not isinstance(inputs[0][0], _Expr) or inputs[0][0].symbol:
                raise self.error(f"{mnemonic} takes one constant operand")
            value = inputs[0][0].value
            if not 0 <= value < 1 << 21:
                raise self.error(f"immediate {value} is out of range 0..{(1 << 21) - 1}", inputs[0][1].column)
            return _Slot(Instruction(mnemonic, (Imm(value),), qp), "D", 0, st.line, st.column)
        mnemonic, outputs, inputs = self.pseudo(mnemonic, outputs, inputs)
        operands: list[Operand] = []
        fixups: list[tuple[int, _Expr]] = []
        for index, (operand, token) in enumerate(outputs + inputs):
            if isinstance(operand, _Expr):
                if operand.symbol is not None:
                    fixups.append((index, operand))
                    operands.append(Target(0))
                    continue
                operands.append(Imm(operand.value))
            else:
                operands.append(operand)
            del token
        kinds = tuple(o.kind for o in operands)
        if mnemonic == "mov" and "ar" in kinds[:2]:  # unit-less mov to or from ar48..ar63, ar112..ar127
            forms = FORMS_BY_SIGNATURE.get(("mov.m", kinds), [])
            insn = Instruction("mov", tuple(operands), qp)
            try:
                encode_form(forms[0], Instruction("mov.m", insn.operands, qp))
            except (IndexError, OperandError) as error:
                raise self.error(f"mov: {error or 'unsupported operands'}") from None
            return _Slot(insn, "D", 0, st.line, st.column)
        forms = [f for f in FORMS_BY_SIGNATURE.get((mnemonic, kinds), []) if f.outputs == len(outputs)]
        if not forms:
            return self.unknown(mnemonic, outputs, inputs)
        insn = Instruction(mnemonic, tuple(operands), qp)
        errors: list[str] = []
        for form in forms:
            try:
                word, lword = encode_form(form, insn)
            except OperandError as error:
                errors.append(str(error))
                continue
            canonical = _canonical(form, word, lword, insn)
            return _Slot(canonical, form.type, form.flags, st.line, st.column, fixups)
        raise self.error(f"{mnemonic}: {errors[0]}")

    def unknown(
        self,
        mnemonic: str,
        outputs: list[tuple[ParsedOperand, _Token]],
        inputs: list[tuple[ParsedOperand, _Token]],
    ) -> _Slot:
        known = sorted({m for m, _ in FORMS_BY_SIGNATURE if m == mnemonic})
        if not known:
            raise self.error(f"unknown instruction {mnemonic!r}")
        shapes = []
        for (m, kinds), forms in sorted(FORMS_BY_SIGNATURE.items()):
            if m == mnemonic:
                outs = forms[0].outputs
                shapes.append(",".join(kinds[:outs]) + ("=" if outs else "") + ",".join(kinds[outs:]))
        given = [o.kind if not isinstance(o, _Expr) else ("target" if o.symbol else "imm") for o, _ in outputs + inputs]
        text = ",".join(given[: len(outputs)]) + ("=" if outputs else "") + ",".join(given[len(outputs) :])
        raise self.error(f"{mnemonic} does not take operands ({text}); expected one of: {'; '.join(shapes[:8])}")

    def pseudo(
        self,
        mnemonic: str,
        outputs: list[tuple[ParsedOperand, _Token]],
        inputs: list[tuple[ParsedOperand, _Token]],
    ) -> tuple[str, list[tuple[ParsedOperand, _Token]], list[tuple[ParsedOperand, _Token]]]:
        kinds = [o.kind if not isinstance(o, _Expr) else "imm" for o, _ in outputs + inputs]
        if mnemonic == "mov" and len(kinds) >= 2:
            if "ar" in kinds[:2]:
                # GAS: ar0..ar47 exist only on the M side, ar64..ar111 only on the I side; the others
                # stay a unit-less "mov" that the bundler gives the unit of the slot it lands in.
                ar = next(o for o, _ in outputs + inputs if isinstance(o, Reg) and o.file == "ar")
                if ar.num < 48:
                    return "mov.m", outputs, inputs
                if 64 <= ar.num < 112:
                    return "mov.i", outputs, inputs
                return "mov", outputs, inputs
            if kinds == ["r", "imm"]:
                expr = inputs[0][0]
                assert isinstance(expr, _Expr)
                if expr.symbol is None and expr.value >= 1 << 63:
                    inputs = [(_Expr(expr.value - (1 << 64)), inputs[0][1])]
            return mnemonic, outputs, inputs
        if mnemonic in ("add", "adds", "addl") and kinds[1:2] == ["imm"] and len(kinds) == 3:
            base = inputs[1][0]
            if mnemonic == "add":
                mnemonic = "addl" if isinstance(base, Reg) and base.file == "r" and base.num < 4 else "adds"
            return mnemonic, outputs, inputs
        if mnemonic.startswith(("cmp.", "cmp4.")):
            return self.compare(mnemonic, outputs, inputs)
        if mnemonic.startswith("tbit."):
            parts = mnemonic.split(".")
            if len(parts) >= 2 and parts[1] == "nz" and len(outputs) == 2:
                parts[1] = "z"
                return ".".join(parts), [outputs[1], outputs[0]], inputs
            return mnemonic, outputs, inputs
        if mnemonic.startswith(("br", "brl")) and _BRANCH.fullmatch(mnemonic):
            return self.branch(mnemonic, outputs, inputs), outputs, inputs
        if mnemonic == "mov" and kinds == ["pr", "r"]:
            raise self.error("mov pr = r2 needs a mask operand: mov pr = r2, mask17")
        return mnemonic, outputs, inputs

    def compare(
        self,
        mnemonic: str,
        outputs: list[tuple[ParsedOperand, _Token]],
        inputs: list[tuple[ParsedOperand, _Token]],
    ) -> tuple[str, list[tuple[ParsedOperand, _Token]], list[tuple[ParsedOperand, _Token]]]:
        parts = mnemonic.split(".")
        if len(parts) not in (2, 3) or parts[1] not in _CMP_RELATIONS or parts[2:] not in ([], ["unc"]):
            return mnemonic, outputs, inputs
        if len(outputs) != 2 or len(inputs) != 2:
            return mnemonic, outputs, inputs
        base, rel, unc = parts[0], parts[1], "".join("." + p for p in parts[2:])
        unsigned = rel.endswith("u") and rel != "u"
        stem = rel[:2]
        less = "ltu" if unsigned else "lt"
        p1, p2 = outputs
        a, b = inputs
        swap_p, swap_ab, minus_one = False, False, False
        if stem in ("eq", "ne"):
            target, swap_p = "eq", stem == "ne"
        elif isinstance(a[0], _Expr):  # immediate form: imm OP r3
            target = less
            swap_p = stem in ("ge", "gt")
            minus_one = stem in ("le", "gt")
        else:
            target = less
            swap_p = stem in ("ge", "le")
            swap_ab = stem in ("gt", "le")
        if swap_p:
            p1, p2 = p2, p1
        if swap_ab:
            a, b = b, a
        if minus_one:
            expr = a[0]
            assert isinstance(expr, _Expr)
            a = (_Expr(expr.value - 1, expr.symbol), a[1])
        return f"{base}.{target}{unc}", [p1, p2], [a, b]

    def branch(self, mnemonic: str, outputs: list[tuple[ParsedOperand, _Token]], inputs: list) -> str:
        match = _BRANCH.fullmatch(mnemonic)
        assert match is not None
        base, kind, hint, ph, clr = match.groups()
        clr = clr or ""
        if kind is None and hint is None and ph is not None:
            kind, hint = "cond", "sptk"  # br.few / br.many
        if kind is None:
            kind = "cond"
        if hint is None:
            raise self.error(f"{mnemonic}: a branch needs a whether hint (.sptk, .spnt, .dptk or .dpnt)")
        ph = ph or "few"
        if kind == "cond" and hint == "sptk" and self.statement.qp == 0:
            short = f"{base}.{ph}{clr}"
            if (short, tuple(_kind(o) for o, _ in outputs + inputs)) in FORMS_BY_SIGNATURE:
                return short
        return f"{base}.{kind}.{hint}.{ph}{clr}"


def _kind(operand: ParsedOperand) -> str:
    if isinstance(operand, _Expr):
        return "target" if operand.symbol is not None else "imm"
    return operand.kind


def _canonical(form: Form, word: int, lword: int, insn: Instruction) -> Instruction:
    """The instruction the decoder produces for these bits (pseudo-ops resolved the objdump way)."""
    from pvgen.ia64.decoder import decode_slot  # the decoder's tables import nothing from here

    unit = {"A": "I", "X": "X"}.get(form.type, form.type)
    decoded = decode_slot(unit, word, lword)
    return decoded if isinstance(decoded, Instruction) else insn


# ---------------------------------------------------------------------------------------------------
# Assembler: GAS's bundling (tc-ia64.c md_assemble / emit_one_bundle, -xnone)


class _Assembler:
    def __init__(self, address: int, symbols: Mapping[str, int]) -> None:
        self.address = address
        self.external = dict(symbols)
        self.queue: deque[_Slot] = deque()
        self.bundles: list[_Bundle] = []
        self.labels: dict[str, int] = {}  # name -> address
        self.local_labels: dict[str, int] = {}  # number -> instances defined so far
        self.pending_labels: list[str] = []
        self.pending_tags: list[str] = []
        self.pending_template = -1
        self.pending_manual_on = False
        self.manual = False
        self.last_statement: _Statement | None = None
        self.conditions: list[tuple[bool, bool, _Statement]] = []  # (active, seen .else, opener)

    # -- statements --------------------------------------------------------------------------------

    def run(self, source: str, end_stop: bool) -> None:
        for statement in _split_statements(source):
            self.last_statement = statement
            if statement.kind == "directive" and statement.text.split(None, 1)[0].lower() in _CONDITIONALS:
                self.conditional(statement)
            elif not self.conditions or self.conditions[-1][0]:
                self.statement(statement)
        if self.conditions:
            opener = self.conditions[-1][2]
            raise AsmError("missing .endif for this conditional", opener.line, opener.column)
        if self.manual:
            line = self.last_statement.line if self.last_statement else 1
            raise AsmError("missing '}' at end of text", line, 1)
        self.flush(stop=end_stop)
        end = self.address + 16 * len(self.bundles)
        for name in self.pending_labels + self.pending_tags:
            self.labels[name] = end

    def statement(self, st: _Statement) -> None:
        if st.kind == "stop":
            if self.queue:
                self.queue[-1].end_of_group = True
        elif st.kind == "open":
            if self.manual:
                raise AsmError("found '{' when manual bundling is already turned on", st.line, st.column)
            self.pending_manual_on = True
            self.manual = True
        elif st.kind == "close":
            if not self.manual:
                raise AsmError("found '}' when manual bundling is off", st.line, st.column)
            if self.queue:
                self.queue[-1].manual_off = True
            self.manual = False
        elif st.kind in ("label", "tag"):
            name = st.text
            if name.isdigit():  # a local label (or tag): `99:` ... `99b` / `99f`
                self.local_labels[name] = self.local_labels.get(name, 0) + 1
                name = f"{name}\x02{self.local_labels[name]}"
            elif name in self.labels or name in self.pending_labels or name in self.pending_tags:
                raise AsmError(f"symbol {name!r} is already defined", st.line, st.column)
            (self.pending_labels if st.kind == "label" else self.pending_tags).append(name)
        elif st.kind == "directive":
            self.directive(st)
        else:
            slot = _Resolver(st, self.local_labels).resolve()
            slot.labels, self.pending_labels = self.pending_labels, []
            slot.tags, self.pending_tags = self.pending_tags, []
            slot.user_template, self.pending_template = self.pending_template, -1
            slot.manual_on, self.pending_manual_on = self.pending_manual_on, False
            if slot.flags & FIRST and self.queue:
                self.queue[-1].end_of_group = True  # md_assemble: insn_group_break before a "first" insn
            if slot.flags & LAST:
                slot.end_of_group = True  # ... and after a "last" one
            self.queue.append(slot)
            if len(self.queue) >= 4:
                self.emit_one_bundle()

    def conditional(self, st: _Statement) -> None:
        """GAS's string conditionals: `.ifc a, b` / `.ifnc a, b` ... `.else` ... `.endif`."""
        name, _, argument = st.text.partition(" ")
        name = name.lower()
        outer = not self.conditions or self.conditions[-1][0]
        if name in (".ifc", ".ifnc"):
            parts = _split_strings(argument)
            if parts is None:
                raise AsmError(f"{name} takes two comma-separated strings", st.line, st.column)
            equal = parts[0] == parts[1]
            self.conditions.append((outer and equal == (name == ".ifc"), False, st))
        elif not self.conditions:
            raise AsmError(f"{name} without a matching .ifc", st.line, st.column)
        elif name == ".else":
            active, seen_else, opener = self.conditions.pop()
            if seen_else:
                raise AsmError("duplicate .else", st.line, st.column)
            parent = not self.conditions or self.conditions[-1][0]
            self.conditions.append((parent and not active, True, opener))
        else:
            self.conditions.pop()

    def directive(self, st: _Statement) -> None:
        name = st.text.split(None, 1)[0].lower()
        if name == ".error":
            message = st.text[len(name) :].strip()
            if len(message) >= 2 and message[0] == message[-1] == '"':
                message = message[1:-1]
            raise AsmError(f".error: {message}", st.line, st.column)
        if name == ".warning":
            return
        if name in _TEMPLATE_DIRECTIVES:
            self.pending_template = _TEMPLATE_DIRECTIVES[name]
        elif name in _IGNORED_DIRECTIVES:
            pass  # dependency-violation hints: they change nothing in the bytes under -xnone
        elif name == ".align":
            argument = st.text[len(name) :].strip()
            if not argument.isdigit() or int(argument) not in (1, 2, 4, 8, 16):
                raise AsmError(".align takes 1, 2, 4, 8 or 16 here (bundles are 16-byte aligned)", st.line, st.column)
            self.flush(stop=True)
        else:
            known = sorted([*_TEMPLATE_DIRECTIVES, *_IGNORED_DIRECTIVES, *_CONDITIONALS, ".align", ".error"])
            raise AsmError(f"unsupported directive {name!r}; expected one of: {', '.join(known)}", st.line, st.column)

    def flush(self, stop: bool) -> None:
        if stop and self.queue:
            self.queue[-1].end_of_group = True
        while self.queue:
            self.emit_one_bundle()

    # -- bundling ----------------------------------------------------------------------------------

    def emit_one_bundle(self) -> None:
        queue = self.queue
        first = queue[0]
        manual_bundling = 0
        if first.user_template >= 0:
            user_template = template = first.user_template
        else:
            user_template = -1
            types = [0, 0, 0]
            for i in range(min(3, len(queue))):
                if queue[i].labels and i != 0:
                    break
                types[i] = _TYPE_NUMBERS[queue[i].type]
            template = _BEST_TEMPLATE[(types[0], types[1], types[2])]
        units = _GAS_TEMPLATES[template]
        slots: list[int | tuple[_Slot, str] | None] = [_NOP_BITS[u] for u in units]
        address = self.address + 16 * len(self.bundles)
        end_of_group = False
        last_slot = -1
        i = 0
        while i < 3 and queue:
            slot = queue[0]
            manual_off = slot.manual_off
            if slot.manual_on:
                if slot is first:
                    manual_bundling = 1
                else:
                    break
            if slot is not first and slot.user_template >= 0:
                break
            if slot.flags & LAST:
                required_template = template
                if slot.type == "M":
                    required_slot, required_template = 0, 5
                else:
                    required_slot = 2
                if manual_bundling and (
                    i > required_slot
                    or (required_slot == 2 and not manual_off)
                    or (user_template >= 0 and (template ^ required_template) > 1)
                ):
                    raise AsmError(f"{slot.insn.mnemonic} must be last in instruction group", slot.line, slot.column)
                if required_slot < i:
                    break
                i = required_slot
                if required_template != template:
                    for j in range(i, 3):
                        slots[j] = _NOP_BITS[_GAS_TEMPLATES[required_template][j]]
                    slot.end_of_group = False
                template = required_template
                units = _GAS_TEMPLATES[template]
            if slot is not first and slot.labels:
                if manual_bundling:
                    raise AsmError("label must be first in a bundle", slot.line, slot.column)
                break
            if end_of_group:
                original = template
                if i == 1 and (user_template == 4 or (user_template < 0 and units[0] == "M")):
                    template, end_of_group = 5, False
                elif (
                    i == 2
                    and (user_template == 0 or (user_template < 0 and units[1] == "I"))
                    and not slot.flags & FIRST
                ):
                    template, end_of_group = 1, False
                elif i == 1 and user_template == 0 and not slot.flags & FIRST:
                    i += 1  # use the next slot
                    continue
                elif slot is not first:
                    break
                if template != original:
                    units = _GAS_TEMPLATES[template]
                    for j in range(i, 3):
                        slots[j] = _NOP_BITS[units[j]]
            required_unit = units[i]
            if slot.type == "D":
                insn_unit = required_unit
                if slot.insn.mnemonic == "mov":
                    insn_unit = "I" if required_unit == "I" or (required_unit == "F" and template == 6) else "M"
            else:
                insn_unit = {"A": required_unit if required_unit in ("I", "M") else "", "X": "L"}.get(
                    slot.type, slot.type
                )
            if insn_unit != required_unit:
                i += 1
                continue
            if slot.type == "D":
                suffix = "x" if required_unit == "L" else required_unit.lower()
                slot.insn = Instruction(f"{slot.insn.mnemonic}.{suffix}", slot.insn.operands, slot.insn.qp)
                slot.type = "X" if required_unit == "L" else required_unit
            for name in slot.labels:
                self.labels[name] = address
            for name in slot.tags:
                self.labels[name] = address + i
            slots[i] = (slot, required_unit)
            end_of_group = slot.end_of_group
            if required_unit == "L":
                slots[2] = None
                i += 1
            queue.popleft()
            last_slot = i
            if manual_off:
                manual_bundling = 0
                break
            i += 1
        if queue and last_slot < 0:
            bad = queue[0]
            raise AsmError(
                f"{bad.insn.mnemonic} does not fit into the {''.join(_GAS_TEMPLATES[template])} template",
                bad.line,
                bad.column,
            )
        if manual_bundling > 0:
            bad = queue[0] if queue else first
            where = "bundle" if not queue or last_slot >= 2 else "the remaining slots of the bundle"
            message = f"{bad.insn.mnemonic} does not fit into {where}" if queue else "missing '}' for this bundle"
            raise AsmError(message, bad.line, bad.column)
        self.bundles.append(_Bundle(template << 1 | int(end_of_group), slots))

    # -- output ------------------------------------------------------------------------------------

    def finish(self) -> Assembly:
        from pvgen.ia64.decoder import decode_word

        words: list[int] = []
        relocations: list[Relocation] = []
        for index, bundle in enumerate(self.bundles):
            address = self.address + 16 * index
            raw = [0, 0, 0]
            for number, item in enumerate(bundle.slots):
                if item is None:
                    continue
                if isinstance(item, int):
                    raw[number] = item
                    continue
                slot, unit = item
                insn = self.resolve_fixups(slot, address, number, relocations)
                try:
                    bits, lbits = encode_slot(insn, "X" if unit == "L" else unit)
                except EncodeError as error:
                    raise AsmError(str(error), slot.line, slot.column) from None
                if unit == "L":
                    raw[1], raw[2] = lbits, bits
                else:
                    raw[number] = bits
            words.append(pack_int(bundle.template, *raw))
        code = b"".join(w.to_bytes(16, "little") for w in words)
        decoded = tuple(decode_word(w) for w in words)
        symbols = {k: v for k, v in self.labels.items() if "\x02" not in k}
        return Assembly(code, decoded, symbols, tuple(relocations))

    def resolve_fixups(self, slot: _Slot, address: int, number: int, relocations: list[Relocation]) -> Instruction:
        if not slot.fixups:
            return slot.insn
        operands = list(slot.insn.operands)
        for index, expr in slot.fixups:
            assert expr.symbol is not None
            target = self.labels.get(expr.symbol, self.external.get(expr.symbol))
            if target is None:
                if "\x02" in expr.symbol:
                    number_text = expr.symbol.split("\x02")[0]
                    raise AsmError(f"local label {number_text}f is never defined", slot.line, slot.column)
                relocations.append(Relocation(address, number, expr.symbol, expr.value))
                continue
            operands[index] = Target(target + expr.value - address)
        return Instruction(slot.insn.mnemonic, tuple(operands), slot.insn.qp)


def _split_strings(argument: str) -> tuple[str, str] | None:
    """The two operands of .ifc: comma-separated, blanks trimmed, optionally in single quotes."""
    if argument.count(",") != 1 and not argument.strip().startswith("'"):
        return None
    match = re.fullmatch(r"\s*('[^']*'|[^,]*?)\s*,\s*('[^']*'|[^,]*?)\s*", argument)
    if match is None:
        return None
    first, second = (g[1:-1] if g.startswith("'") else g for g in match.groups())
    return first, second


def assemble(
    source: str,
    *,
    address: int = 0,
    symbols: Mapping[str, int] | None = None,
    end_stop: bool = True,
) -> Assembly:
    """Assembles IA-64 GAS-syntax text into bundles at `address`.

    `symbols` gives addresses for names the text uses but does not define; other undefined names
    become relocations with a zero field, as in GAS's object file. `end_stop` ends the last
    instruction group at the end of the text, as the end of a file (or `.align`) does for GAS; pass
    False for the bytes GAS produces when a label follows the text instead. Raises AsmError.
    """
    assembler = _Assembler(address, symbols or {})
    assembler.run(source, end_stop)
    return assembler.finish()
