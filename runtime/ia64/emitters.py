"""Python source for each IA-64 instruction format: the semantics the translator emits.

One emitter per SDM instruction format (`Form.fmt`) writes the lines of one instruction into the
block being built, through a `Context` (the instruction, its index, address, slot, indentation
and the block writer). Registers are read as `g[n]` (r0 as the constant 0), predicates as `p[n]`;
results are masked to 64 bits; anything privileged or stateful calls a `Cpu` method, which checks
privilege and raises the architectural fault. In the NaT-aware flavour (`Context.nat`) emitters
also propagate, consume and clear NaT bits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pvgen.runtime.ia64.state import AR_EC, AR_UNAT, MASK64, PLAIN_ARS, SIGN64

from pvgen.ia64.insn import Imm, Indirect, Instruction, Target

if TYPE_CHECKING:
    from pvgen.runtime.ia64.translate import BlockWriter, Item

BREAKS: Final = frozenset({"break.m", "break.i", "break.b", "break.f", "break.x"})
_SIZES: Final = {"1": (0, 0, 0xFF), "2": (1, 1, 0xFFFF), "4": (2, 2, 0xFFFFFFFF), "8": (3, 3, MASK64)}


def _gr(n: int) -> str:
    return "0" if n == 0 else f"g[{n}]"


class Context:
    """What an emitter needs: the writer, the instruction, its index, address, slot and depth."""

    __slots__ = ("address", "depth", "index", "insn", "item", "slot", "writer")

    def __init__(self, writer: BlockWriter, index: int, item: Item, depth: int) -> None:
        self.writer = writer
        self.index = index
        self.item = item
        insn = item.insn
        assert isinstance(insn, Instruction)
        self.insn = insn
        self.address = item.address
        self.slot = item.slot
        self.depth = depth

    @property
    def nat(self) -> bool:
        return self.writer.nat

    def put(self, text: str, extra: int = 0) -> None:
        self.writer.put(self.depth + extra, text)

    def faultable(self) -> None:
        self.put(f"k = {self.index}")

    def exit(self, target: str, extra: int = 0) -> None:
        self.writer.exit_lines(target, self.depth + extra)

    def ops(self) -> tuple[Any, ...]:
        return self.insn.operands

    def set_gr(
        self, number: int, expression: str, *, nat: str | None = "clear", sources: list[int] | None = None
    ) -> None:
        """g[number] = expression; in the NaT-aware flavour also the destination's NaT bit.

        nat: "clear" (result is a value), "prop" (OR of the sources' NaT bits), None (caller does it).
        """
        if number == 0:
            self.faultable()
            self.put('raise illegal("r0 is read-only")')
            return
        if self.nat and nat == "prop":
            mask = _nat_mask(sources or [])
            if mask:
                self.put(f"nt = cpu.nat & {mask:#x}")
                self.put(f"g[{number}] = {expression}")
                self.put(
                    f"cpu.nat = cpu.nat & {~(1 << number) & ((1 << 128) - 1):#x} | ({1 << number:#x} if nt else 0)"
                )
                return
        self.put(f"g[{number}] = {expression}")
        if self.nat and nat is not None:
            self.put(f"cpu.nat &= {~(1 << number) & ((1 << 128) - 1):#x}")

    def consume(self, registers: list[int]) -> None:
        """NaT consumption check of source registers (NaT-aware flavour only)."""
        mask = _nat_mask(registers)
        if self.nat and mask:
            self.faultable()
            self.put(f"if cpu.nat & {mask:#x}:")
            self.put("raise natc()", 1)


def _nat_mask(registers: list[int]) -> int:
    mask = 0
    for number in registers:
        if number:
            mask |= 1 << number
    return mask


# ---------------------------------------------------------------------------------------------------
# Emitters, one per instruction format (SDM format names, as `Form.fmt`).


def _a1(c: Context) -> None:
    r1, r2, r3 = (o.num for o in c.ops()[:3])
    a, b_ = _gr(r2), _gr(r3)
    expressions = {
        "add": f"({a} + {b_}) & {MASK64}",
        "sub": f"({a} - {b_}) & {MASK64}",
        "addp4": f"(({a} + {b_}) & 0xFFFFFFFF) | ((({b_}) >> 30 & 3) << 61)",
        "and": f"{a} & {b_}",
        "andcm": f"{a} & ~{b_} & {MASK64}",
        "or": f"{a} | {b_}",
        "xor": f"{a} ^ {b_}",
    }
    expression = expressions[c.insn.mnemonic]
    if len(c.ops()) == 4:  # add r1 = r2, r3, 1 / sub r1 = r2, r3, 1
        expression = f"({a} + {b_} + 1) & {MASK64}" if c.insn.mnemonic == "add" else f"({a} - {b_} - 1) & {MASK64}"
    c.set_gr(r1, expression, nat="prop", sources=[r2, r3])


def _a3(c: Context) -> None:
    r1, imm, r3 = c.ops()
    value = imm.value & MASK64
    b_ = _gr(r3.num)
    expressions = {
        "sub": f"({value} - {b_}) & {MASK64}",
        "and": f"{value} & {b_}",
        "andcm": f"{value} & ~{b_} & {MASK64}",
        "or": f"{value} | {b_}",
        "xor": f"{value} ^ {b_}",
    }
    c.set_gr(r1.num, expressions[c.insn.mnemonic], nat="prop", sources=[r3.num])


def _a4(c: Context) -> None:
    ops = c.ops()
    if c.insn.mnemonic == "mov":
        r1, r3 = ops
        c.set_gr(r1.num, _gr(r3.num), nat="prop", sources=[r3.num])
        return
    r1, imm, r3 = ops
    c.set_gr(r1.num, f"({_gr(r3.num)} + {imm.value}) & {MASK64}", nat="prop", sources=[r3.num])


def _a5(c: Context) -> None:
    ops = c.ops()
    if c.insn.mnemonic == "mov":
        r1, imm = ops
        c.set_gr(r1.num, str(imm.value & MASK64))
        return
    r1, imm, r3 = ops
    c.set_gr(r1.num, f"({_gr(r3.num)} + {imm.value}) & {MASK64}", nat="prop", sources=[r3.num])


def _relation(mnemonic: str, left: str, right: str) -> str:
    parts = mnemonic.split(".")
    size4 = parts[0] == "cmp4"
    relation = parts[1]
    if size4:
        left, right = f"({left} & 0xFFFFFFFF)", f"({right} & 0xFFFFFFFF)"
        sign = 0x80000000
    else:
        sign = SIGN64
    if relation == "eq":
        return f"{left} == {right}"
    if relation == "ltu":
        return f"{left} < {right}"
    return f"({left} ^ {sign:#x}) < ({right} ^ {sign:#x})"


def _predicates(c: Context, relation: str, sources: list[int]) -> None:
    p1, p2 = c.ops()[0].num, c.ops()[1].num
    unc = c.insn.mnemonic.endswith(".unc") and c.insn.qp != 0
    extra = 0
    if unc:
        c.put(f"if p[{c.insn.qp}]:")
        extra = 1
    mask = _nat_mask(sources)
    if c.nat and mask:
        c.put(f"if cpu.nat & {mask:#x}:", extra)
        for number in (p1, p2):
            if number:
                c.put(f"p[{number}] = False", extra + 1)
        c.put("else:", extra)
        extra += 1
    c.put(f"t = {relation}", extra)
    if p1:
        c.put(f"p[{p1}] = t", extra)
    if p2:
        c.put(f"p[{p2}] = not t", extra)
    if unc:
        c.put("else:")
        targets = [n for n in (p1, p2) if n]
        c.put(" = ".join(f"p[{n}]" for n in targets) + " = False" if targets else "pass", 1)


def _a6(c: Context) -> None:
    _p1, _p2, r2, r3 = c.ops()
    _predicates(c, _relation(c.insn.mnemonic, _gr(r2.num), _gr(r3.num)), [r2.num, r3.num])


def _a8(c: Context) -> None:
    _p1, _p2, imm, r3 = c.ops()
    _predicates(c, _relation(c.insn.mnemonic, str(imm.value & MASK64), _gr(r3.num)), [r3.num])


def _i16(c: Context) -> None:
    _p1, _p2, r3, pos = c.ops()
    _predicates(c, f"not ({_gr(r3.num)} >> {pos.value} & 1)", [r3.num])


def _i11(c: Context) -> None:
    ops = c.ops()
    r1, r3 = ops[0].num, ops[1].num
    src = _gr(r3)
    signed = f"(({src} ^ {SIGN64}) - {SIGN64})"
    mnemonic = c.insn.mnemonic
    if mnemonic in ("shr.u", "shr"):
        count = ops[2].value
        expression = f"{src} >> {count}" if mnemonic == "shr.u" else f"({signed} >> {count}) & {MASK64}"
    else:
        pos, length = ops[2].value, ops[3].value
        mask = (1 << length) - 1
        if mnemonic == "extr.u":
            expression = f"({src} >> {pos}) & {mask:#x}"
        else:
            bit = 1 << (length - 1)
            expression = f"(((({signed} >> {pos}) & {mask:#x}) ^ {bit:#x}) - {bit:#x}) & {MASK64}"
    c.set_gr(r1, expression, nat="prop", sources=[r3])


def _i12(c: Context) -> None:
    ops = c.ops()
    r1, r2 = ops[0].num, ops[1].num
    if c.insn.mnemonic == "shl":
        expression = f"({_gr(r2)} << {ops[2].value}) & {MASK64}"
    else:
        pos, length = ops[2].value, ops[3].value
        expression = f"(({_gr(r2)} & {(1 << length) - 1:#x}) << {pos}) & {MASK64}"
    c.set_gr(r1, expression, nat="prop", sources=[r2])


def _i15(c: Context) -> None:
    r1, r2, r3, pos, length = c.ops()
    field = ((1 << length.value) - 1) << pos.value
    keep = ~field & MASK64
    expression = f"({_gr(r3.num)} & {keep:#x}) | (({_gr(r2.num)} << {pos.value}) & {field & MASK64:#x})"
    c.set_gr(r1.num, expression, nat="prop", sources=[r2.num, r3.num])


def _i5(c: Context) -> None:  # shr.u / shr r1 = r3, r2
    r1, r3, r2 = (o.num for o in c.ops())
    c.put(f"t = {_gr(r2)}")
    if c.insn.mnemonic == "shr.u":
        expression = f"{_gr(r3)} >> t if t < 64 else 0"
    else:
        expression = f"((({_gr(r3)} ^ {SIGN64}) - {SIGN64}) >> min(t, 63)) & {MASK64}"
    c.set_gr(r1, expression, nat="prop", sources=[r2, r3])


def _i7(c: Context) -> None:  # shl r1 = r2, r3
    r1, r2, r3 = (o.num for o in c.ops())
    c.put(f"t = {_gr(r3)}")
    c.set_gr(r1, f"({_gr(r2)} << t) & {MASK64} if t < 64 else 0", nat="prop", sources=[r2, r3])


def _i21(c: Context) -> None:  # mov b1 = r2
    b1, r2 = c.ops()
    c.consume([r2.num])
    c.put(f"b[{b1.num}] = {_gr(r2.num)}")


def _i22(c: Context) -> None:  # mov r1 = b2
    r1, b2 = c.ops()
    c.set_gr(r1.num, f"b[{b2.num}]")


def _i25(c: Context) -> None:  # mov r1 = ip / mov r1 = pr
    r1, special = c.ops()
    if special.name == "ip":
        c.set_gr(r1.num, str(c.address))
    else:
        c.set_gr(r1.num, "cpu.read_pr()")


def _i23(c: Context) -> None:  # mov pr = r2, mask
    _pr, r2, mask = c.ops()
    c.consume([r2.num])
    c.put(f"cpu.write_pr({_gr(r2.num)}, {mask.value & MASK64:#x})")


def _ar_write(c: Context, number: int, value: str) -> None:
    if number in PLAIN_ARS:
        c.put(f"ar[{number}] = {value}")
    elif number == AR_EC:
        c.put(f"ar[{number}] = {value} & 63")
    else:
        c.faultable()
        c.put(f"cpu.mov_to_ar({number}, {value})")


def _mov_to_ar(c: Context) -> None:  # M29 M30 I26 I27
    target, source = c.ops()
    if isinstance(source, Imm):
        _ar_write(c, target.num, str(source.value & MASK64))
        return
    c.consume([source.num])
    _ar_write(c, target.num, _gr(source.num))


def _mov_from_ar(c: Context) -> None:  # M31 I28
    r1, source = c.ops()
    number = source.num
    if number in PLAIN_ARS or number < 8 or number == AR_EC:
        c.set_gr(r1.num, f"ar[{number}]")
    else:
        c.faultable()
        c.set_gr(r1.num, f"cpu.mov_from_ar({number})")


def _break(c: Context) -> None:
    (imm,) = c.ops()
    c.faultable()
    c.exit(f"brk({imm.value}, {c.address}, {c.slot})")


def _m44(c: Context) -> None:  # sum rum ssm rsm
    (imm,) = c.ops()
    c.faultable()
    c.put(f"cpu.{c.insn.mnemonic}({imm.value})")


def _m24(c: Context) -> None:  # invala mf mf.a srlz.d srlz.i sync.i: ordering only in a sequential model
    c.put("pass")


def _m25(c: Context) -> None:  # loadrs flushrs: the register stack engine is not modelled
    c.put("pass")


def _m28(c: Context) -> None:  # fc fc.i ptc.e
    (r3,) = c.ops()
    c.consume([r3.num])
    c.faultable()
    method = {"fc": "fc", "fc.i": "fc", "ptc.e": "ptc_e"}[c.insn.mnemonic]
    c.put(f"cpu.{method}({_gr(r3.num)})")


def _m32(c: Context) -> None:  # mov cr = r2
    cr, r2 = c.ops()
    c.consume([r2.num])
    c.faultable()
    c.put(f"cpu.mov_to_cr({cr.num}, {_gr(r2.num)})")


def _m33(c: Context) -> None:  # mov r1 = cr
    r1, cr = c.ops()
    c.faultable()
    c.set_gr(r1.num, f"cpu.mov_from_cr({cr.num})")


def _m35(c: Context) -> None:  # mov psr.l = r2 / mov psr.um = r2
    special, r2 = c.ops()
    c.consume([r2.num])
    c.faultable()
    method = "mov_psr_l" if special.name == "psr.l" else "mov_psr_um"
    c.put(f"cpu.{method}({_gr(r2.num)})")


def _m36(c: Context) -> None:  # mov r1 = psr / psr.um
    r1, special = c.ops()
    c.faultable()
    c.set_gr(r1.num, "cpu.read_psr()" if special.name == "psr" else "cpu.psr & 0x3E")


def _m41(c: Context) -> None:  # itc.d / itc.i r2
    (r2,) = c.ops()
    c.consume([r2.num])
    c.faultable()
    c.put(f'cpu.itc("{c.insn.mnemonic[-1]}", {_gr(r2.num)})')


def _m42(c: Context) -> None:  # mov ind[r3] = r2 / itr.d dtr[r3] = r2
    target, r2 = c.ops()
    assert isinstance(target, Indirect)
    c.consume([target.index, r2.num])
    c.faultable()
    if c.insn.mnemonic.startswith("itr."):
        c.put(f'cpu.itr("{c.insn.mnemonic[-1]}", {_gr(target.index)}, {_gr(r2.num)})')
    else:
        c.put(f'cpu.mov_to_ind("{target.file}", {_gr(target.index)}, {_gr(r2.num)})')


def _m43(c: Context) -> None:  # mov r1 = ind[r3]
    r1, source = c.ops()
    c.consume([source.index])
    c.faultable()
    c.set_gr(r1.num, f'cpu.mov_from_ind("{source.file}", {_gr(source.index)})')


def _m45(c: Context) -> None:  # ptc.l / ptc.g / ptc.ga r3, r2
    r3, r2 = c.ops()
    c.consume([r3.num, r2.num])
    c.faultable()
    c.put(f"cpu.ptc({_gr(r3.num)}, {_gr(r2.num)})")


def _m46(c: Context) -> None:  # thash ttag tpa tak r1 = r3
    r1, r3 = c.ops()
    mnemonic = c.insn.mnemonic
    if mnemonic in ("tpa", "tak"):
        c.consume([r3.num])
    c.faultable()
    c.set_gr(r1.num, f"cpu.{mnemonic}({_gr(r3.num)})", nat="prop", sources=[r3.num])


def _access(mnemonic: str) -> tuple[str, int, int, int]:
    """(base mnemonic, view index, shift, value mask) of a load/store/cmpxchg mnemonic."""
    size = next(ch for ch in mnemonic if ch.isdigit())
    index, shift, mask = _SIZES[size]
    return size, index, shift, mask


def _load(c: Context) -> None:  # M1 M2 M3
    ops = c.ops()
    r1, mem = ops[0].num, ops[1].base
    mnemonic = c.insn.mnemonic
    size, view, shift, _mask = _access(mnemonic)
    parts = mnemonic.split(".")
    speculative = len(parts) > 1 and parts[1] in ("s", "sa")
    c.consume([mem] + ([ops[2].num] if c.insn.form.fmt == "M2" else []))
    c.faultable()
    c.put(f"a = {_gr(mem)}")
    if speculative:
        c.put(f"v = cpu.ld_s(a, {size}, {r1})")
    else:
        c.put("pg = RM.get(a >> 12)")
        aligned = f" or a & {int(size) - 1}" if size != "1" else ""
        c.put(f"if pg is None{aligned}:")
        c.put(f"v = ld(a, {size})", 1)
        c.put("else:")
        offset = "(a & 4095)" + (f" >> {shift}" if shift else "")
        c.put(f"v = pg[{view}][{offset}]", 1)
    fill = mnemonic.startswith("ld8.fill")
    if r1 == 0:
        c.put('raise illegal("r0 is read-only")')
        return
    c.put(f"g[{r1}] = v")
    _post_increment(c, mem, ops)
    if fill:
        c.put(f"t = ar[{AR_UNAT}] >> ((a >> 3) & 63) & 1")
        if c.nat:
            c.put(f"cpu.nat = cpu.nat & {~(1 << r1) & ((1 << 128) - 1):#x} | (t << {r1})")
        else:
            c.put("if t:")
            c.put(f"cpu.set_nat({r1})", 1)
            c.exit(str(c.item.next_key), 1)
    elif c.nat and not speculative:
        c.put(f"cpu.nat &= {~(1 << r1) & ((1 << 128) - 1):#x}")


def _post_increment(c: Context, base: int, ops: tuple[Any, ...]) -> None:
    fmt = c.insn.form.fmt
    if fmt in ("M3", "M5"):
        c.put(f"g[{base}] = (g[{base}] + {ops[2].value}) & {MASK64}")
    elif fmt == "M2":
        c.put(f"g[{base}] = (g[{base}] + {_gr(ops[2].num)}) & {MASK64}")


def _store(c: Context) -> None:  # M4 M5
    ops = c.ops()
    mem, r2 = ops[0].base, ops[1].num
    mnemonic = c.insn.mnemonic
    size, view, shift, mask = _access(mnemonic)
    spill = mnemonic.startswith("st8.spill")
    c.consume([mem] if spill else [mem, r2])
    c.faultable()
    value = _gr(r2)
    if size != "8" and r2:
        value = f"{value} & {mask:#x}"
    c.put(f"a = {_gr(mem)}")
    c.put("pg = WM.get(a >> 12)")
    aligned = f" or a & {int(size) - 1}" if size != "1" else ""
    c.put(f"if pg is None{aligned}:")
    c.put(f"st(a, {size}, {value})", 1)
    c.put("else:")
    offset = "(a & 4095)" + (f" >> {shift}" if shift else "")
    c.put(f"pg[{view}][{offset}] = {value}", 1)
    if spill:
        c.put("t = (a >> 3) & 63")
        if c.nat and r2:
            c.put(f"ar[{AR_UNAT}] = ar[{AR_UNAT}] & ~(1 << t) | ((cpu.nat >> {r2} & 1) << t)")
        else:
            c.put(f"ar[{AR_UNAT}] &= ~(1 << t)")
    _post_increment(c, mem, ops)


def _m16(c: Context) -> None:  # cmpxchg
    r1, mem, r2, _ccv = c.ops()
    size, *_ = _access(c.insn.mnemonic)
    c.consume([mem.base, r2.num])
    c.faultable()
    c.set_gr(r1.num, f"cpu.cmpxchg({_gr(mem.base)}, {size}, {_gr(r2.num)})")


def _target(c: Context) -> str:
    target = next(o for o in c.ops() if isinstance(o, Target))
    return str((c.address + target.offset) & MASK64)


def _b1(c: Context) -> None:  # br.cond / br.few / br.many to a target; brl.cond (X3)
    c.exit(_target(c))


def _b3(c: Context) -> None:  # br.call b1 = target; brl.call (X4)
    b1 = c.ops()[0].num
    c.put(f"b[{b1}] = {c.address + 16}")
    c.put("cpu.br_call()")
    c.exit(_target(c))


def _b4(c: Context) -> None:  # br.cond / br.ret b2
    (b2,) = c.ops()
    if c.insn.mnemonic.startswith("br.ret"):
        c.faultable()
        c.exit(f"cpu.br_ret(b[{b2.num}] & -16)")
    else:
        c.exit(f"b[{b2.num}] & -16")


def _b5(c: Context) -> None:  # br.call b1 = b2
    b1, b2 = c.ops()
    c.put(f"t = b[{b2.num}] & -16")
    c.put(f"b[{b1.num}] = {c.address + 16}")
    c.put("cpu.br_call()")
    c.exit("t")


def _b8(c: Context) -> None:  # cover clrrrb rfi bsw epc
    mnemonic = c.insn.mnemonic
    c.faultable()
    if mnemonic == "rfi":
        c.exit("cpu.rfi()")
    elif mnemonic in ("bsw.0", "bsw.1"):
        c.put(f"cpu.bsw({mnemonic[-1]})")
        c.exit(str(c.item.next_key))
    elif mnemonic == "cover":
        c.put("cpu.cover()")
    elif mnemonic.startswith("clrrrb"):
        c.put("cpu.clrrrb()")
    else:
        c.put('raise illegal("epc outside an execute-promote page")')


def _x2(c: Context) -> None:  # movl
    r1, imm = c.ops()
    c.set_gr(r1.num, str(imm.value & MASK64))


def _nop_or_break(c: Context) -> None:
    if c.insn.mnemonic in BREAKS:
        _break(c)
    else:
        c.put("pass")


EMITTERS: Final[dict[str, Callable[[Context], None]]] = {
    "A1": _a1,
    "A3": _a3,
    "A4": _a4,
    "A5": _a5,
    "A6": _a6,
    "A8": _a8,
    "I5": _i5,
    "I7": _i7,
    "I11": _i11,
    "I12": _i12,
    "I15": _i15,
    "I16": _i16,
    "I18": _nop_or_break,
    "I19": _nop_or_break,
    "I21": _i21,
    "I22": _i22,
    "I23": _i23,
    "I25": _i25,
    "I26": _mov_to_ar,
    "I27": _mov_to_ar,
    "I28": _mov_from_ar,
    "M1": _load,
    "M2": _load,
    "M3": _load,
    "M4": _store,
    "M5": _store,
    "M16": _m16,
    "M24": _m24,
    "M25": _m25,
    "M28": _m28,
    "M29": _mov_to_ar,
    "M30": _mov_to_ar,
    "M31": _mov_from_ar,
    "M32": _m32,
    "M33": _m33,
    "M35": _m35,
    "M36": _m36,
    "M37": _nop_or_break,
    "M41": _m41,
    "M42": _m42,
    "M43": _m43,
    "M44": _m44,
    "M45": _m45,
    "M46": _m46,
    "M48": _nop_or_break,
    "B1": _b1,
    "B3": _b3,
    "B4": _b4,
    "B5": _b5,
    "B8": _b8,
    "B9": _nop_or_break,
    "F15": _nop_or_break,
    "F16": _nop_or_break,
    "X1": _nop_or_break,
    "X2": _x2,
    "X3": _b1,
    "X4": _b3,
    "X5": _nop_or_break,
}
