"""Lazy RFLAGS: the last flag-setting operation and its operands, materialised on demand.

At run time the arithmetic flags are a 5-tuple `(kind, result, a, b, x)`: `kind` is
`op << 2 | size index`, `result`, `a` and `b` are the masked result and operands, and
`x` is the extra input of the operation (carry in for adc/sbb, the preserved CF for
inc/dec, the overflow bit for multiplications). `kind == MAT` means `result` already
holds the six flag bits. Only CF PF AF ZF SF OF live here; IF, DF, IOPL and the other
system bits are kept apart as a plain integer.

At translation time `Lazy` is the same record as Python expressions, so a `jcc` in the
block that set the flags compiles to one comparison (`cmp rax, rbx; jl` becomes
`(rax ^ SIGN) < (rbx ^ SIGN)`) and nothing is stored unless the flags leave the block.
"""

from __future__ import annotations

import re

import attrs

CF = 0x001
PF = 0x004
AF = 0x010
ZF = 0x040
SF = 0x080
TF = 0x100
IF = 0x200
DF = 0x400
OF = 0x800
IOPL = 0x3000
NT = 0x4000
RF = 0x10000
VM = 0x20000
AC = 0x40000
VIF = 0x80000
VIP = 0x100000
ID = 0x200000
ARITH = CF | PF | AF | ZF | SF | OF
RESERVED_ONE = 0x002
# Bits popf may change at CPL 0 in 64-bit mode (VM, VIF, VIP are kept, RF is cleared).
POPF_CPL0 = ARITH | TF | IF | DF | IOPL | NT | AC | ID

ADD, SUB, ADC, SBB, LOGIC, INC, DEC, SHL, SHR, SAR, MUL = range(11)
MAT = 15 << 2
OP_NAMES = ("ADD", "SUB", "ADC", "SBB", "LOGIC", "INC", "DEC", "SHL", "SHR", "SAR", "MUL")

BITS = (8, 16, 32, 64)
MASKS = (0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF)
SIGNS = (0x80, 0x8000, 0x8000_0000, 0x8000_0000_0000_0000)
SIZE_INDEX = {1: 0, 2: 1, 4: 2, 8: 3}

PARITY = tuple(PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256))

CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
# Spellings capstone and GNU as use for the same condition.
CONDITION_ALIASES = {
    "c": "b",
    "nae": "b",
    "nb": "ae",
    "nc": "ae",
    "z": "e",
    "nz": "ne",
    "na": "be",
    "nbe": "a",
    "pe": "p",
    "po": "np",
    "nge": "l",
    "nl": "ge",
    "ng": "le",
    "nle": "g",
}


def kind(op: int, size: int) -> int:
    """The kind code of `op` on an operand of `size` bytes."""
    return op << 2 | SIZE_INDEX[size]


def materialise(k: int, r: int, a: int, b: int, x: int) -> int:
    """The six arithmetic flag bits of a lazy record."""
    if k == MAT:
        return r
    op = k >> 2
    si = k & 3
    sign = SIGNS[si]
    flags = PARITY[r & 0xFF] | (ZF if r == 0 else 0) | (SF if r & sign else 0)
    if op == SUB:
        flags |= (CF if a < b else 0) | ((a ^ b ^ r) & AF) | (OF if (a ^ b) & (a ^ r) & sign else 0)
    elif op == ADD:
        flags |= (CF if r < a else 0) | ((a ^ b ^ r) & AF) | (OF if (a ^ r) & (b ^ r) & sign else 0)
    elif op == LOGIC:
        pass
    elif op == INC:
        flags |= x | (AF if r & 0xF == 0 else 0) | (OF if r == sign else 0)
    elif op == DEC:
        flags |= x | (AF if r & 0xF == 0xF else 0) | (OF if r == sign - 1 else 0)
    elif op == ADC:
        carry = r < a or (x and r == a)
        flags |= (CF if carry else 0) | ((a ^ b ^ r) & AF) | (OF if (a ^ r) & (b ^ r) & sign else 0)
    elif op == SBB:
        flags |= (CF if a < b + x else 0) | ((a ^ b ^ r) & AF) | (OF if (a ^ b) & (a ^ r) & sign else 0)
    elif op == SHL:
        cf = (a >> (BITS[si] - b)) & 1 if b <= BITS[si] else 0
        flags |= cf | (OF if bool(r & sign) != bool(cf) else 0)
    elif op == SHR:
        flags |= ((a >> (b - 1)) & 1) | (OF if b == 1 and a & sign else 0)
    elif op == SAR:
        signed = a - ((a & sign) << 1)
        flags |= (signed >> (b - 1)) & 1
    elif op == MUL:
        flags |= CF | OF if x else 0
    return flags


def condition(cc: str, flags: int) -> bool:
    """Whether condition `cc` holds for materialised flag bits."""
    return _CONDITION_FUNCS[cc](flags)


def carry(k: int, r: int, a: int, b: int, x: int) -> int:
    """CF (0 or 1) of a lazy record."""
    return materialise(k, r, a, b, x) & CF


# Bit tests on a materialised value `f`, used when the kind is not known statically.
_BIT_TESTS = {
    "o": "{f} & 2048",
    "no": "not {f} & 2048",
    "b": "{f} & 1",
    "ae": "not {f} & 1",
    "e": "{f} & 64",
    "ne": "not {f} & 64",
    "be": "{f} & 65",
    "a": "not {f} & 65",
    "s": "{f} & 128",
    "ns": "not {f} & 128",
    "p": "{f} & 4",
    "np": "not {f} & 4",
    "l": "({f} >> 7 ^ {f} >> 11) & 1",
    "ge": "not ({f} >> 7 ^ {f} >> 11) & 1",
    "le": "{f} & 64 or ({f} >> 7 ^ {f} >> 11) & 1",
    "g": "not ({f} & 64 or ({f} >> 7 ^ {f} >> 11) & 1)",
}

_CONDITION_FUNCS = {cc: eval(f"lambda f: bool({test.format(f='f')})") for cc, test in _BIT_TESTS.items()}

_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


@attrs.frozen
class Lazy:
    """The flags at a point of a block being translated, as Python expressions.

    `k` is the kind (an int) or None when it is only known at run time (then every field
    names a local: the flags a loop carries round, or those the block was entered with).
    `a`, `b` may be None for ADD/SUB when derivable from the others. `prev` holds the CF
    expression inc/dec preserve.
    """

    k: int | None
    r: str | None
    a: str | None = None
    b: str | None = None
    x: str = "0"
    kexpr: str = ""

    def names(self) -> set[str]:
        """Every identifier the expressions read (locals that must not change under them)."""
        text = " ".join(e for e in (self.r, self.a, self.b, self.x, self.kexpr) if e)
        return set(_NAME.findall(text))

    def replace_name(self, old: str, new: str) -> Lazy:
        pattern = re.compile(rf"\b{re.escape(old)}\b")

        def sub(e: str | None) -> str | None:
            return None if e is None else pattern.sub(new, e)

        return Lazy(self.k, sub(self.r), sub(self.a), sub(self.b), sub(self.x) or "0", sub(self.kexpr) or "")

    # Fields, filling in what is derivable.
    def _sz(self) -> tuple[int, int, int]:
        assert self.k is not None
        si = self.k & 3
        return MASKS[si], SIGNS[si], BITS[si]

    def res(self) -> str:
        if self.r is not None:
            return self.r
        mask = self._sz()[0]
        op = self.k >> 2 if self.k is not None else -1
        if op == SUB:
            return f"(({self.a} - {self.b}) & {mask})"
        raise AssertionError("result not derivable")

    def opa(self) -> str:
        if self.a is not None:
            return self.a
        mask = self._sz()[0]
        op = self.k >> 2 if self.k is not None else -1
        if op == ADD:
            return f"(({self.r} - {self.b}) & {mask})"
        if op == SUB:
            return f"(({self.r} + {self.b}) & {mask})"
        return "0"

    def opb(self) -> str:
        return self.b if self.b is not None else "0"

    def kind_expr(self) -> str:
        return str(self.k) if self.k is not None else self.kexpr

    def record(self) -> str:
        """The run-time tuple as an expression."""
        return f"({self.kind_expr()}, {self.res()}, {self.opa()}, {self.opb()}, {self.x})"

    def materialised(self) -> str:
        """An expression for the six flag bits (inline for the common kinds)."""
        if self.k == MAT:
            return f"({self.r})"
        if self.k is not None and self.k >> 2 in (ADD, SUB, LOGIC):
            _mask, sign, _bits = self._sz()
            r, a, b = self.res(), self.opa(), self.opb()
            common = f"PARITY[{r} & 255] | (64 if {r} == 0 else 0) | ({r} & {sign} and 128)"
            op = self.k >> 2
            if op == LOGIC:
                return f"({common})"
            if op == SUB:
                return (
                    f"({common} | ({a} < {b}) | (({a} ^ {b} ^ {r}) & 16)"
                    f" | (({a} ^ {b}) & ({a} ^ {r}) & {sign} and 2048))"
                )
            return (
                f"({common} | ({r} < {a}) | (({a} ^ {b} ^ {r}) & 16) | (({a} ^ {r}) & ({b} ^ {r}) & {sign} and 2048))"
            )
        return f"MAT{self.record()}"

    def carry(self) -> str:
        """An int expression (0 or 1) for CF."""
        if self.k is None:
            return f"(MAT{self.record()} & 1)"
        op = self.k >> 2
        if op == SUB:
            return f"({self.opa()} < {self.opb()})"
        if op == ADD:
            return f"({self.res()} < {self.opb()})"
        if op == LOGIC:
            return "0"
        if op in (INC, DEC):
            return f"({self.x})"
        if self.k == MAT:
            return f"({self.r} & 1)"
        return f"(MAT{self.record()} & 1)"

    def condition(self, cc: str) -> str:
        """A Python boolean expression for condition `cc`."""
        special = self._special(cc)
        if special is not None:
            return special
        return self._generic(cc)

    def _generic(self, cc: str) -> str:
        f = self.materialised()
        if cc in ("l", "ge", "le", "g"):
            return f"COND_{cc.upper()}({f})"
        return "(" + _BIT_TESTS[cc].format(f=f) + ")"

    def _special(self, cc: str) -> str | None:
        if self.k is None or self.k == MAT:
            return None
        op = self.k >> 2
        _mask, sign, _bits = self._sz()
        if op == SUB:
            a, b = self.opa(), self.opb()
            match cc:
                case "e":
                    return f"({a} == {b})" if self.r is None else f"({self.r} == 0)"
                case "ne":
                    return f"({a} != {b})" if self.r is None else f"({self.r} != 0)"
                case "b":
                    return f"({a} < {b})"
                case "ae":
                    return f"({a} >= {b})"
                case "be":
                    return f"({a} <= {b})"
                case "a":
                    return f"({a} > {b})"
                case "l":
                    return f"(({a} ^ {sign}) < ({b} ^ {sign}))"
                case "ge":
                    return f"(({a} ^ {sign}) >= ({b} ^ {sign}))"
                case "le":
                    return f"(({a} ^ {sign}) <= ({b} ^ {sign}))"
                case "g":
                    return f"(({a} ^ {sign}) > ({b} ^ {sign}))"
                case "s":
                    return f"({self.res()} >= {sign})"
                case "ns":
                    return f"({self.res()} < {sign})"
            return None
        if op in (LOGIC, ADD, INC, DEC, SHL, SHR, SAR, ADC, SBB, MUL):
            r = self.res()
            match cc:
                case "e":
                    return f"({r} == 0)"
                case "ne":
                    return f"({r} != 0)"
                case "s":
                    return f"({r} >= {sign})"
                case "ns":
                    return f"({r} < {sign})"
                case "p":
                    return f"(PARITY[{r} & 255] != 0)"
                case "np":
                    return f"(PARITY[{r} & 255] == 0)"
        if op == LOGIC:
            r = self.res()
            match cc:
                case "b" | "o":
                    return "False"
                case "ae" | "no":
                    return "True"
                case "be":
                    return f"({r} == 0)"
                case "a":
                    return f"({r} != 0)"
                case "l":
                    return f"({r} >= {sign})"
                case "ge":
                    return f"({r} < {sign})"
                case "le":
                    return f"({r} == 0 or {r} >= {sign})"
                case "g":
                    return f"(0 < {r} < {sign})"
        if op == ADD:
            match cc:
                case "b":
                    return f"({self.res()} < {self.opb()})"
                case "ae":
                    return f"({self.res()} >= {self.opb()})"
        if op in (INC, DEC):
            match cc:
                case "b":
                    return f"({self.x} != 0)"
                case "ae":
                    return f"({self.x} == 0)"
        return None


def cond_l(f: int) -> bool:
    return bool((f >> 7 ^ f >> 11) & 1)


def cond_ge(f: int) -> bool:
    return not (f >> 7 ^ f >> 11) & 1


def cond_le(f: int) -> bool:
    return bool(f & ZF) or bool((f >> 7 ^ f >> 11) & 1)


def cond_g(f: int) -> bool:
    return not (f & ZF or (f >> 7 ^ f >> 11) & 1)


def normalise_condition(cc: str) -> str:
    """The canonical name of a condition suffix (`nz` -> `ne`)."""
    return CONDITION_ALIASES.get(cc, cc)
