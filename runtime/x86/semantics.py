"""Instruction semantics: what each modelled instruction emits into a trace.

An emitter reads operands through the builder (`b.get`, `b.load`), binds results to
locals, queues register writes and at most one store (`b.set`) and sets the lazy
flags (`b.set_flags`). It returns None to fall through, or a control record for the
trace builder: ("jump", target, pushed_return) for a direct transfer it may follow,
("cond", condition, target) for a conditional branch, ("ret", value) for a return,
("end",) when it has emitted the exit itself. Anything else raises #UD.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pvgen.runtime.x86.decode import Imm, Insn, Mem, Reg, SysReg
from pvgen.runtime.x86.faults import InvalidOpcode
from pvgen.runtime.x86.flags import (
    ADC,
    ADD,
    ARITH,
    DEC,
    INC,
    LOGIC,
    MASKS,
    MAT,
    MUL,
    POPF_CPL0,
    RF,
    SAR,
    SBB,
    SHL,
    SHR,
    SIGNS,
    SIZE_INDEX,
    SUB,
    VM,
    Lazy,
    kind,
    normalise_condition,
)
from pvgen.runtime.x86.sensitive import INLINE, SensitiveInsn, classify
from pvgen.runtime.x86.translate import Builder, address_expr, sign_extend_expr

M64 = MASKS[3]
RAX, RCX, RDX, RSP, RBP = 0, 1, 2, 4, 5

BRANCHES = frozenset(
    {"jmp", "call", "ret", "jrcxz", "jecxz", "loop", "loope", "loopne"}
    | {f"j{cc}" for cc in ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")}
)
STRINGS = frozenset(f"{op}{w}" for op in ("movs", "stos", "lods", "cmps", "scas") for w in "bwdq")
MULDIV = frozenset({"mul", "imul", "div", "idiv"})
NOPS = frozenset({"nop", "endbr64", "endbr32", "pause", "mfence", "lfence", "sfence", "prefetcht0", "prefetcht1"})
LOCKABLE = frozenset(
    {"add", "adc", "and", "btc", "btr", "bts", "cmpxchg", "dec", "inc", "neg", "not", "or", "sbb", "sub", "xor"}
    | {"xadd", "xchg"}
)


def _mask(size: int) -> int:
    return MASKS[SIZE_INDEX[size]]


def _ud(insn: Insn, why: str = "") -> InvalidOpcode:
    return InvalidOpcode(insn.address, detail=f"{insn.text}: {why or 'not modelled'}")


class Semantics:
    """The table of emitters, keyed by capstone's instruction name."""

    def __init__(self) -> None:
        self.table: dict[str, Callable[[Builder, Insn], Any]] = {}
        for name in ("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp", "test"):
            self.table[name] = self._alu
        for name in ("inc", "dec", "neg", "not"):
            self.table[name] = self._unary
        for name in ("shl", "sal", "shr", "sar"):
            self.table[name] = self._shift
        for name in ("rol", "ror", "rcl", "rcr"):
            self.table[name] = self._rotate
        for name in ("shld", "shrd"):
            self.table[name] = self._double_shift
        for name in ("mov", "movabs"):
            self.table[name] = self._mov
        for name in ("bt", "bts", "btr", "btc"):
            self.table[name] = self._bit_test
        for name in ("bsf", "bsr", "tzcnt", "lzcnt", "popcnt"):
            self.table[name] = self._bit_scan
        for name in ("cbw", "cwde", "cdqe", "cwd", "cdq", "cqo"):
            self.table[name] = self._convert
        for name in ("clc", "stc", "cmc", "cld", "std", "lahf", "sahf"):
            self.table[name] = self._flag_op
        for name in NOPS:
            self.table[name] = self._nop
        for name in STRINGS:
            self.table[name] = self._string
        for name in ("jrcxz", "jecxz", "loop", "loope", "loopne"):
            self.table[name] = self._counter_branch
        self.table.update(
            movzx=self._movzx,
            movsx=self._movsx,
            movsxd=self._movsx,
            lea=self._lea,
            xchg=self._xchg,
            bswap=self._bswap,
            imul=self._imul,
            mul=self._mul,
            div=self._div,
            idiv=self._div,
            cmpxchg=self._cmpxchg,
            xadd=self._xadd,
            push=self._push,
            pop=self._pop,
            leave=self._leave,
            call=self._call,
            jmp=self._jmp,
            ret=self._ret,
        )

    def klass(self, insn: Insn) -> str:
        """The cost-model class of an instruction."""
        name = insn.name
        if classify(insn) is not None:
            return "system"
        if name in BRANCHES or name.startswith("j"):
            return "branch"
        if name in STRINGS:
            return "string"
        if name in MULDIV:
            return "muldiv"
        if name in ("push", "pop", "leave") or (
            name not in ("lea",) and name not in NOPS and any(isinstance(op, Mem) for op in insn.operands)
        ):
            return "mem"
        return "alu"

    def emit(self, b: Builder, insn: Insn) -> Any:
        kind_name = classify(insn)
        if kind_name is not None:
            return self._sensitive(b, insn, kind_name)
        if insn.lock and (insn.name not in LOCKABLE or not any(isinstance(op, Mem) for op in insn.operands)):
            raise _ud(insn, "lock prefix")
        name = insn.name
        if name.startswith("j") and name not in ("jmp", "jrcxz", "jecxz"):
            return self._jcc(b, insn)
        if name.startswith("cmov"):
            return self._cmov(b, insn)
        if name.startswith("set"):
            return self._setcc(b, insn)
        emitter = self.table.get(name)
        if emitter is None:
            raise _ud(insn)
        return emitter(b, insn)

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def _operands(insn: Insn, count: int) -> tuple[Any, ...]:
        ops = insn.operands
        if len(ops) != count or any(isinstance(op, SysReg) for op in ops):
            raise _ud(insn, "operand form")
        return ops

    @staticmethod
    def _dest_value(b: Builder, dst: Reg | Mem) -> tuple[str, str | None]:
        """(value, address) of a read-modify-write destination."""
        if isinstance(dst, Mem):
            address = b.address(dst)
            return b.load(dst, address), address
        if not isinstance(dst, Reg):
            raise InvalidOpcode(b.insn.address if b.insn else 0, detail="immediate destination")
        return b.get(dst), None

    @staticmethod
    def _condition(b: Builder, insn: Insn, prefix: str) -> str:
        cc = normalise_condition(insn.name[len(prefix) :])
        try:
            return b.current_flags().condition(cc)
        except KeyError:
            raise _ud(insn, "condition") from None

    # -- integer ALU ---------------------------------------------------------------------

    def _alu(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        size = dst.size
        if size not in SIZE_INDEX or isinstance(dst, Imm):
            raise _ud(insn, "operand size")
        mask = _mask(size)
        name = insn.name
        k = kind
        if name in ("cmp", "test"):
            a = b.get(dst) if not isinstance(dst, Mem) else b.load(dst)
            v = b.get(src, size)
            if name == "cmp":
                b.set_flags(Lazy(k(SUB, size), None, b.let(a) if isinstance(dst, Mem) else a, v))
            elif isinstance(src, Reg) and src == dst:
                b.set_flags(Lazy(k(LOGIC, size), a))  # test %reg, %reg
            else:
                b.set_flags(Lazy(k(LOGIC, size), f"({a} & {v})"))
            return
        a, address = self._dest_value(b, dst)
        v = b.get(src, size)
        same = isinstance(src, Reg) and src == dst
        if name == "add":
            t = b.let(f"({a} + {v}) & {mask}")
            b.set_flags(Lazy(k(ADD, size), t, None, v))
        elif name == "sub":
            t = "0" if same else b.let(f"({a} - {v}) & {mask}")
            b.set_flags(Lazy(k(SUB, size), t, None if not same else "0", v if not same else "0"))
        elif name in ("and", "or", "xor"):
            op = {"and": "&", "or": "|", "xor": "^"}[name]
            t = "0" if same and name == "xor" else b.let(f"{a} {op} {v}")
            b.set_flags(Lazy(k(LOGIC, size), t))
        else:  # adc, sbb
            carry = b.let(b.current_flags().carry())
            if name == "adc":
                t = b.let(f"({a} + {v} + {carry}) & {mask}")
                b.set_flags(Lazy(k(ADC, size), t, a, v, carry))
            else:
                t = b.let(f"({a} - {v} - {carry}) & {mask}")
                b.set_flags(Lazy(k(SBB, size), t, a, v, carry))
        b.set(dst, t, address)

    def _unary(self, b: Builder, insn: Insn) -> None:
        (dst,) = self._operands(insn, 1)
        size = dst.size
        if size not in SIZE_INDEX:
            raise _ud(insn, "operand size")
        mask = _mask(size)
        a, address = self._dest_value(b, dst)
        name = insn.name
        if name == "not":
            b.set(dst, b.let(f"{a} ^ {mask}"), address)
            return
        if name == "neg":
            t = b.let(f"-{a} & {mask}")
            b.set_flags(Lazy(kind(SUB, size), t, "0", a if isinstance(dst, Reg) and dst.size == 8 else b.let(a)))
        else:
            carry = b.current_flags().carry()
            t = b.let(f"({a} {'+' if name == 'inc' else '-'} 1) & {mask}")
            b.set_flags(Lazy(kind(INC if name == "inc" else DEC, size), t, None, None, carry))
        b.set(dst, t, address)

    def _shift(self, b: Builder, insn: Insn) -> None:
        dst, count = self._operands(insn, 2)
        size = dst.size
        if size not in SIZE_INDEX:
            raise _ud(insn, "operand size")
        mask, sign = _mask(size), SIGNS[SIZE_INDEX[size]]
        cmask = 63 if size == 8 else 31
        name = "shl" if insn.name == "sal" else insn.name
        op = {"shl": SHL, "shr": SHR, "sar": SAR}[name]
        a, address = self._dest_value(b, dst)
        if isinstance(count, Imm):
            n = count.value & cmask
            if n == 0:
                # Flags are untouched, but a 32-bit register is still written (zero-extended).
                if isinstance(dst, Reg) and size == 4:
                    b.set(dst, a)
                return
            c = str(n)
        elif isinstance(count, Reg) and count.index == RCX and count.size == 1 and not count.high:
            c = b.let(f"{b.reg(RCX)} & {cmask}")
        else:
            raise _ud(insn, "shift count")
        a = b.let(a)
        if op == SHL:
            t = b.let(f"({a} << {c}) & {mask}")
        elif op == SHR:
            t = b.let(f"{a} >> {c}")
        else:
            t = b.let(f"((({a} ^ {sign}) - {sign}) >> {c}) & {mask}")
        record = f"({kind(op, size)}, {t}, {a}, {c}, 0)"
        if isinstance(count, Imm):
            b.set_flags(Lazy(kind(op, size), t, a, c))
        else:
            q = b.tmp("q")
            previous = b.current_flags().record()
            b.emit(f"{q}k, {q}r, {q}a, {q}b, {q}x = {record} if {c} else {previous}")
            b.set_flags(Lazy(None, f"{q}r", f"{q}a", f"{q}b", f"{q}x", f"{q}k"))
        b.set(dst, t, address)

    def _count(self, b: Builder, insn: Insn, count: Any, size: int) -> str:
        cmask = 63 if size == 8 else 31
        if isinstance(count, Imm):
            return str(count.value & cmask)
        if isinstance(count, Reg) and count.index == RCX and count.size == 1 and not count.high:
            return b.let(f"{b.reg(RCX)} & {cmask}")
        raise _ud(insn, "shift count")

    def _rotate(self, b: Builder, insn: Insn) -> None:
        dst, count = self._operands(insn, 2)
        size = dst.size
        if size not in SIZE_INDEX:
            raise _ud(insn, "operand size")
        a, address = self._dest_value(b, dst)
        n = self._count(b, insn, count, size)
        t = b.tmp()
        f = b.tmp("f")
        b.emit(f"{t}, {f} = ROTATE({insn.name!r}, {size}, {a}, {n}, {b.current_flags().materialised()})")
        b.set_flags(Lazy(MAT, f))
        b.set(dst, t, address)

    def _double_shift(self, b: Builder, insn: Insn) -> None:
        dst, src, count = self._operands(insn, 3)
        size = dst.size
        if size not in (2, 4, 8) or not isinstance(src, Reg):
            raise _ud(insn, "operand form")
        a, address = self._dest_value(b, dst)
        n = self._count(b, insn, count, size)
        t = b.tmp()
        f = b.tmp("f")
        flags = b.current_flags().materialised()
        b.emit(f"{t}, {f} = DOUBLE_SHIFT({insn.name!r}, {size}, {a}, {b.get(src)}, {n}, {flags})")
        b.set_flags(Lazy(MAT, f))
        b.set(dst, t, address)

    # -- multiply and divide -------------------------------------------------------------

    def _imul(self, b: Builder, insn: Insn) -> None:
        ops = insn.operands
        if len(ops) == 1:
            self._mul(b, insn, signed=True)
            return
        if len(ops) == 2:
            dst, src = ops
            x, y = b.get(dst), b.get(src, dst.size)
        elif len(ops) == 3:
            dst, src, imm = ops
            x, y = b.get(src), b.get(imm, dst.size)
        else:
            raise _ud(insn, "operand form")
        if not isinstance(dst, Reg) or dst.size not in (2, 4, 8):
            raise _ud(insn, "operand form")
        size = dst.size
        mask, sign = _mask(size), SIGNS[SIZE_INDEX[size]]
        p = b.let(f"{sign_extend_expr(x, size)} * {sign_extend_expr(y, size)}")
        t = b.let(f"{p} & {mask}")
        o = b.let(f"0 if -{sign} <= {p} < {sign} else 1")
        b.set_flags(Lazy(kind(MUL, size), t, None, None, o))
        b.set(dst, t)

    def _mul(self, b: Builder, insn: Insn, signed: bool = False) -> None:
        (src,) = self._operands(insn, 1)
        size = src.size
        if size not in SIZE_INDEX:
            raise _ud(insn, "operand size")
        mask, sign, bits = _mask(size), SIGNS[SIZE_INDEX[size]], 8 * size
        acc = b.get(Reg(RAX, size))
        v = b.get(src)
        if signed:
            p = b.let(f"{sign_extend_expr(acc, size)} * {sign_extend_expr(v, size)}")
            o = b.let(f"0 if -{sign} <= {p} < {sign} else 1")
        else:
            p = b.let(f"{acc} * {v}")
            o = b.let(f"0 if {p} <= {mask} else 1")
        lo = b.let(f"{p} & {mask}")
        hi = b.let(f"({p} >> {bits}) & {mask}")
        if size == 1:
            b.set(Reg(RAX, 2), f"({hi} << 8) | {lo}")
        else:
            b.set(Reg(RAX, size), lo)
            b.set(Reg(RDX, size), hi)
        b.set_flags(Lazy(kind(MUL, size), lo, None, None, o))

    def _div(self, b: Builder, insn: Insn) -> None:
        (src,) = self._operands(insn, 1)
        size = src.size
        if size not in SIZE_INDEX:
            raise _ud(insn, "operand size")
        bits = 8 * size
        d = b.get(src)
        if size == 1:
            n = b.get(Reg(RAX, 2))
        else:
            n = b.let(f"({b.get(Reg(RDX, size))} << {bits}) | {b.get(Reg(RAX, size))}")
        helper = "DIVS" if insn.name == "idiv" else "DIVU"
        qr = b.tmp("qr")
        b.emit(f"{qr} = {helper}({n}, {d}, {size})")
        b.emit(f"if {qr} is None: FAULT(0, {b.fault_args()})")
        if size == 1:
            b.set(Reg(RAX, 2), f"({qr}[1] << 8) | {qr}[0]")
        else:
            b.set(Reg(RAX, size), f"{qr}[0]")
            b.set(Reg(RDX, size), f"{qr}[1]")

    # -- moves -----------------------------------------------------------------------------

    def _mov(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        if isinstance(dst, Reg) and isinstance(src, Mem) and dst.size in (4, 8) and src.size == dst.size:
            name = b.reg(dst.index)
            flags = b.flags
            if flags is not None and name in flags.names():
                snap = b.tmp("s")
                b.emit(f"{snap} = {name}")
                b.flags = flags.replace_name(name, snap)
            b.written.add(dst.index)
            b.load(src, into=name)
            return
        if isinstance(dst, Imm):
            raise _ud(insn, "operand form")
        b.set(dst, b.get(src, dst.size))

    def _movzx(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        if not isinstance(dst, Reg):
            raise _ud(insn, "operand form")
        b.set(dst, b.get(src))

    def _movsx(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        if not isinstance(dst, Reg) or src.size not in SIZE_INDEX:
            raise _ud(insn, "operand form")
        v = b.get(src)
        if src.size >= dst.size:
            b.set(dst, v if src.size == dst.size else f"{v} & {_mask(dst.size)}")
            return
        b.set(dst, f"{sign_extend_expr(v, src.size)} & {_mask(dst.size)}")

    def _lea(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        if not isinstance(dst, Reg) or not isinstance(src, Mem) or dst.size not in (2, 4, 8):
            raise _ud(insn, "operand form")
        flat = Mem(src.base, src.index, src.scale, src.disp, None, src.size, src.addr32)
        b.set(dst, b.let(f"({address_expr(flat, b.reg)}) & {_mask(dst.size)}"))

    def _xchg(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        if isinstance(dst, Mem):
            dst, src = src, dst
        if not isinstance(dst, Reg):
            raise _ud(insn, "operand form")
        if isinstance(src, Mem):
            address = b.address(src)
            m = b.load(src, address)
            b.set(src, b.get(dst), address)
            b.set(dst, m)
            return
        x, y = b.get(dst), b.get(src)
        b.set(dst, y)
        b.set(src, x)

    def _bswap(self, b: Builder, insn: Insn) -> None:
        (dst,) = self._operands(insn, 1)
        if not isinstance(dst, Reg) or dst.size not in (4, 8):
            raise _ud(insn, "operand form")
        v = b.get(dst)
        b.set(dst, b.let(f"int.from_bytes({v}.to_bytes({dst.size}, 'little'), 'big')"))

    def _convert(self, b: Builder, insn: Insn) -> None:
        name = insn.name
        if name in ("cbw", "cwde", "cdqe"):
            size = {"cbw": 2, "cwde": 4, "cdqe": 8}[name]
            v = b.get(Reg(RAX, size // 2))
            b.set(Reg(RAX, size), f"{sign_extend_expr(v, size // 2)} & {_mask(size)}")
            return
        size = {"cwd": 2, "cdq": 4, "cqo": 8}[name]
        v = b.get(Reg(RAX, size))
        b.set(Reg(RDX, size), f"({_mask(size)} if {v} >= {SIGNS[SIZE_INDEX[size]]} else 0)")

    def _cmov(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        if not isinstance(dst, Reg):
            raise _ud(insn, "operand form")
        v = b.get(src)
        cond = self._condition(b, insn, "cmov")
        b.set(dst, f"({v} if {cond} else {b.get(dst)})")

    def _setcc(self, b: Builder, insn: Insn) -> None:
        (dst,) = self._operands(insn, 1)
        if dst.size != 1:
            raise _ud(insn, "operand form")
        cond = self._condition(b, insn, "set")
        b.set(dst, f"(1 if {cond} else 0)")

    def _cmpxchg(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        size = dst.size
        if not isinstance(src, Reg) or size not in SIZE_INDEX:
            raise _ud(insn, "operand form")
        acc = b.let(b.get(Reg(RAX, size)))
        d, address = self._dest_value(b, dst)
        d = b.let(d)
        s = b.get(src)
        eq = b.let(f"{acc} == {d}")
        if isinstance(dst, Mem):
            b.set(dst, b.let(f"{s} if {eq} else {d}"), address)
        if size == 4:
            b.set(Reg(RAX, 8), f"({b.reg(RAX)} if {eq} else {d})")
        else:
            b.set(Reg(RAX, size), f"({acc} if {eq} else {d})")
        if isinstance(dst, Reg):
            if size == 4:
                b.set(Reg(dst.index, 8), f"({s} if {eq} else {b.reg(dst.index)})")
            else:
                b.set(dst, f"({s} if {eq} else {d})")
        b.set_flags(Lazy(kind(SUB, size), None, acc, d))

    def _xadd(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        size = dst.size
        if not isinstance(src, Reg) or size not in SIZE_INDEX:
            raise _ud(insn, "operand form")
        d, address = self._dest_value(b, dst)
        d = b.let(d)
        s = b.let(b.get(src))
        t = b.let(f"({d} + {s}) & {_mask(size)}")
        b.set(src, d)
        b.set(dst, t, address)
        b.set_flags(Lazy(kind(ADD, size), t, d, s))

    # -- bits -------------------------------------------------------------------------------

    def _bit_test(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        size = dst.size
        if size not in (2, 4, 8):
            raise _ud(insn, "operand size")
        bits = 8 * size
        address = None
        if isinstance(src, Imm):
            n = str(src.value & (bits - 1))
        elif isinstance(src, Reg):
            offset = b.get(src)
            if isinstance(dst, Mem):
                signed = b.let(sign_extend_expr(offset, size))
                base = b.address(dst)
                address = b.let(f"{base} + ({signed} >> {bits.bit_length() - 1}) * {size}")
            n = b.let(f"{offset} & {bits - 1}")
        else:
            raise _ud(insn, "operand form")
        if isinstance(dst, Mem):
            if address is None:
                address = b.address(dst)
            v = b.load(dst, address)
        else:
            v = b.get(dst)
        c = b.let(f"({v} >> {n}) & 1")
        previous = b.current_flags().materialised()
        b.set_flags(Lazy(MAT, f"({previous} & -2 | {c})"))
        mask = _mask(size)
        if insn.name == "bts":
            b.set(dst, b.let(f"{v} | (1 << {n})"), address)
        elif insn.name == "btr":
            b.set(dst, b.let(f"{v} & ({mask} ^ (1 << {n}))"), address)
        elif insn.name == "btc":
            b.set(dst, b.let(f"{v} ^ (1 << {n})"), address)

    def _bit_scan(self, b: Builder, insn: Insn) -> None:
        dst, src = self._operands(insn, 2)
        size = dst.size
        if not isinstance(dst, Reg) or size not in (2, 4, 8):
            raise _ud(insn, "operand form")
        bits = 8 * size
        v = b.let(b.get(src))
        old = b.reg(dst.index) if size != 2 else b.get(dst)
        wide = Reg(dst.index, 8) if size != 2 else dst
        name = insn.name
        if name == "bsf":
            b.set(wide, f"(({v} & -{v}).bit_length() - 1 if {v} else {old})")
            b.set_flags(Lazy(MAT, f"(0 if {v} else 64)"))
        elif name == "bsr":
            b.set(wide, f"({v}.bit_length() - 1 if {v} else {old})")
            b.set_flags(Lazy(MAT, f"(0 if {v} else 64)"))
        elif name == "tzcnt":
            r = b.let(f"(({v} & -{v}).bit_length() - 1 if {v} else {bits})")
            b.set(dst, r)
            b.set_flags(Lazy(MAT, f"((0 if {v} else 1) | (64 if {r} == 0 else 0))"))
        elif name == "lzcnt":
            r = b.let(f"{bits} - {v}.bit_length()")
            b.set(dst, r)
            b.set_flags(Lazy(MAT, f"((0 if {v} else 1) | (64 if {r} == 0 else 0))"))
        else:  # popcnt
            b.set(dst, f"{v}.bit_count()")
            b.set_flags(Lazy(MAT, f"(0 if {v} else 64)"))

    def _flag_op(self, b: Builder, insn: Insn) -> None:
        name = insn.name
        if name in ("cld", "std"):
            b.emit("S[17] &= -1025" if name == "cld" else "S[17] |= 1024")
            return
        current = b.current_flags().materialised()
        if name == "lahf":
            b.set(Reg(RAX, 1, True), f"({current} & 213) | 2")
            return
        if name == "sahf":
            ah = b.get(Reg(RAX, 1, True))
            b.set_flags(Lazy(MAT, b.let(f"({current} & 2048) | ({ah} & 213)")))
            return
        expr = {"clc": f"{current} & -2", "stc": f"{current} | 1", "cmc": f"{current} ^ 1"}[name]
        b.set_flags(Lazy(MAT, b.let(expr)))

    def _nop(self, b: Builder, insn: Insn) -> None:
        return None

    # -- stack ------------------------------------------------------------------------------

    def _push(self, b: Builder, insn: Insn) -> None:
        (src,) = self._operands(insn, 1)
        size = 2 if src.size == 2 else 8
        value = b.get(src, size)
        if isinstance(src, Mem) and src.size not in (2, 8):
            raise _ud(insn, "operand size")
        rsp = b.reg(RSP)
        address = b.let(f"{rsp} - {size}", "a")
        b.set(Mem(RSP, None, 1, 0, None, size), value, address)
        b.set(Reg(RSP, 8), f"{address} & {M64}")

    def _pop(self, b: Builder, insn: Insn) -> None:
        (dst,) = self._operands(insn, 1)
        size = dst.size
        if size not in (2, 8):
            raise _ud(insn, "operand size")
        rsp = b.reg(RSP)
        value = b.load(Mem(RSP, None, 1, 0, None, size), rsp)
        if isinstance(dst, Mem):
            address = b.address(dst, adjust_rsp=size)
            b.set(dst, value, address)
            b.set(Reg(RSP, 8), f"({rsp} + {size}) & {M64}")
            return
        b.set(Reg(RSP, 8), f"({rsp} + {size}) & {M64}")
        b.set(dst, value)

    def _leave(self, b: Builder, insn: Insn) -> None:
        rbp = b.reg(RBP)
        value = b.load(Mem(RBP, None, 1, 0, None, 8), rbp)
        b.set(Reg(RSP, 8), f"({rbp} + 8) & {M64}")
        b.set(Reg(RBP, 8), value)

    # -- control flow -------------------------------------------------------------------------

    def _push_return(self, b: Builder, insn: Insn) -> None:
        rsp = b.reg(RSP)
        address = b.let(f"{rsp} - 8", "a")
        b.set(Mem(RSP, None, 1, 0, None, 8), str(insn.next), address)
        b.set(Reg(RSP, 8), f"{address} & {M64}")

    def _call(self, b: Builder, insn: Insn) -> Any:
        (target,) = self._operands(insn, 1)
        if isinstance(target, Imm):
            self._push_return(b, insn)
            b.next_expr = str(target.value)
            return ("jump", target.value, insn.next)
        if target.size != 8:
            raise _ud(insn, "operand size")
        dest = b.let(b.get(target))
        self._push_return(b, insn)
        b.next_expr = dest
        b.finish()
        b.exit(dest, b.pos + 1)
        return ("end",)

    def _jmp(self, b: Builder, insn: Insn) -> Any:
        (target,) = self._operands(insn, 1)
        if isinstance(target, Imm):
            return ("jump", target.value, None)
        if target.size != 8:
            raise _ud(insn, "operand size")
        dest = b.let(b.get(target))
        b.exit(dest, b.pos + 1)
        return ("end",)

    def _ret(self, b: Builder, insn: Insn) -> Any:
        extra = 0
        if insn.operands:
            (imm,) = insn.operands
            if not isinstance(imm, Imm):
                raise _ud(insn, "operand form")
            extra = imm.value & 0xFFFF
        rsp = b.reg(RSP)
        value = b.load(Mem(RSP, None, 1, 0, None, 8), rsp)
        b.set(Reg(RSP, 8), f"({rsp} + {8 + extra}) & {M64}")
        b.finish()
        return ("ret", value)

    def _jcc(self, b: Builder, insn: Insn) -> Any:
        (target,) = self._operands(insn, 1)
        if not isinstance(target, Imm):
            raise _ud(insn, "operand form")
        cond = self._condition(b, insn, "j")
        return ("cond", b.let(cond, "c") if "MAT" in cond else cond, target.value)

    def _counter_branch(self, b: Builder, insn: Insn) -> Any:
        (target,) = self._operands(insn, 1)
        if not isinstance(target, Imm):
            raise _ud(insn, "operand form")
        rcx = b.reg(RCX)
        name = insn.name
        if name == "jrcxz":
            return ("cond", f"({rcx} == 0)", target.value)
        if name == "jecxz":
            return ("cond", f"(({rcx} & 4294967295) == 0)", target.value)
        zf = ""
        if name in ("loope", "loopne"):
            flags = b.current_flags()
            zf = b.let(flags.condition("e" if name == "loope" else "ne"), "c")
        b.set(Reg(RCX, 8), f"({rcx} - 1) & {M64}")
        b.finish()
        cond = f"({rcx} != 0)" if not zf else f"({rcx} != 0 and {zf})"
        return ("cond", cond, target.value)

    # -- helpers that end the trace ---------------------------------------------------------

    def _string(self, b: Builder, insn: Insn) -> Any:
        b.ref()
        b.finish()
        b.helper_exit("STRING", b.pos + 1)
        return ("end",)

    def _sensitive(self, b: Builder, insn: Insn, kind_name: str) -> Any:
        intercepted = kind_name in b.mode.intercepts
        if kind_name in INLINE and not intercepted:
            return self._inline_sensitive(b, insn, kind_name)
        return self._system_exit(b, insn, kind_name)

    def _system_exit(self, b: Builder, insn: Insn, kind_name: str) -> Any:
        """Ends the trace at a sensitive instruction that runs through the system path."""
        intercepted = kind_name in b.mode.intercepts
        b.ref()
        ref = b.refs[b.pos]
        ref.sensitive = SensitiveInsn(kind_name, insn)
        ref.intercepted = intercepted
        b.finish()
        b.helper_exit("SYSTEM", b.pos + 1)
        return ("end",)

    def _inline_sensitive(self, b: Builder, insn: Insn, kind_name: str) -> Any:
        cpl = b.mode.cpl
        if kind_name == "swapgs":
            if cpl > 0:  # privileged: the system path raises the #GP with the instruction
                return self._system_exit(b, insn, kind_name)
            b.emit("SWAPGS()")
            return None
        if kind_name == "mov_cr_read":
            creg = insn.operands[1]
            destination = insn.operands[0]
            number = getattr(creg, "number", None)
            if cpl > 0 or number not in (0, 2, 3, 4, 8) or not isinstance(destination, Reg):
                return self._system_exit(b, insn, kind_name)
            b.set(Reg(destination.index, 8), f"CONTROL({number})")
            return None
        if kind_name == "mov_seg_read":
            destination = insn.operands[0]
            if not isinstance(destination, Reg) or destination.size not in (4, 8):
                return self._system_exit(b, insn, kind_name)
            b.set(Reg(destination.index, 8), f"SELECTOR({_segment_number(insn.operands[1])})")
            return None
        if kind_name in ("cli", "sti"):
            if cpl > 0:
                b.emit(f"if (S[17] >> 12) & 3 < {cpl}: FAULT(13, {b.fault_args()})")
            b.emit("S[17] &= -513" if kind_name == "cli" else "S[17] |= 512")
            return
        if kind_name == "pushf":
            value = b.let(f"{b.current_flags().materialised()} | S[17]")
            rsp = b.reg(RSP)
            address = b.let(f"{rsp} - 8", "a")
            b.set(Mem(RSP, None, 1, 0, None, 8), value, address)
            b.set(Reg(RSP, 8), f"{address} & {M64}")
            return
        rsp = b.reg(RSP)
        value = b.load(Mem(RSP, None, 1, 0, None, 8), rsp)
        if cpl == 0:
            # Every bit popf may change at CPL 0, inline: keep VM/VIF/VIP, clear RF.
            keep = ~POPF_CPL0 & ~ARITH & ~(RF | VM) & 0x3F_FFFF
            b.emit(f"S[17] = (S[17] & {keep}) | ({value} & {POPF_CPL0 & ~ARITH}) | 2")
            b.set_flags(Lazy(MAT, f"({value} & {ARITH})"))
        else:
            f = b.tmp("f")
            b.emit(f"{f} = POPF({value})")
            b.set_flags(Lazy(MAT, f))
        b.set(Reg(RSP, 8), f"({rsp} + 8) & {M64}")


def _segment_number(operand: Any) -> int:
    """es cs ss ds fs gs = 0..5, the index into cpu.selectors."""
    return int(operand.number)
