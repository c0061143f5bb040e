"""Translation: a trace of decoded instructions becomes one Python function, compiled once.

A trace starts at a block entry and follows fall-through of conditional branches
(a taken branch is a side exit), direct `jmp`, direct `call` (the return address is
pushed and the callee translated inline) and a `ret` that matches an inlined call
(guarded: a different return address is an exit). A branch back to the entry makes
the function a `while True` loop that runs until an exit or the instruction budget.
Registers live in locals for the whole trace and go back to the state list `S` only
at exits, before a slow-path helper that may fault, or after a store that hit
translated code. Flags are `Lazy` expressions (see flags.py).

The generated function is `blk(S, left) -> (next_rip, instructions_retired)`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from pvgen.runtime.x86.decode import GPR64, Decoder, Imm, Insn, Mem, Reg
from pvgen.runtime.x86.faults import ArchFault, InvalidOpcode, PageFault
from pvgen.runtime.x86.flags import MASKS, SIGNS, SIZE_INDEX, Lazy
from pvgen.runtime.x86.memory import M64, PF_FETCH

if TYPE_CHECKING:
    from pvgen.runtime.x86.memory import Memory

MAX_TRACE = 64
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_CANONICAL_NAME = re.compile(r"\bf[krabx]\b")
_LOOP_FLAGS = "%LOOPFLAGS%"
CANONICAL = Lazy(None, "fr", "fa", "fb", "fx", "fk")
FLAGS_SLOT = 16
SYSFLAGS_SLOT = 17
GS_SLOT = 18
FS_SLOT = 19

# Instruction classes counted for cost models.
CLASSES = ("alu", "mem", "branch", "muldiv", "string", "system")


@attrs.define(eq=False)
class InsnRef:
    """One instruction of a trace, as the slow-path helpers see it."""

    position: int
    insn: Insn
    block: Block | None = None
    exit: int = -1  # the exit a terminating helper accounts on success
    intercepted: bool = False
    sensitive: Any = None  # a SensitiveInsn for system instructions

    @property
    def rip(self) -> int:
        return self.insn.address


@attrs.define(eq=False)
class Block:
    """A translated trace: its function, the code ranges it came from, its counters."""

    entry: int
    fn: Callable[[list[Any], int], tuple[int, int]]
    insns: list[Insn]
    classes: list[str]
    ranges: list[tuple[int, int]]
    exit_positions: list[int]  # instructions retired when leaving by exit j
    hits: list[int]
    wregs: tuple[int, ...]
    loop: bool
    source: str
    cache: dict[int, Any] | None = None
    memory: Memory | None = None
    valid: bool = True
    on_invalidate: Callable[[Block], None] | None = None

    def overlaps(self, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in self.ranges)

    def invalidate(self) -> None:
        if not self.valid:
            return
        self.valid = False
        if self.cache is not None and self.cache.get(self.entry) is self.fn:
            del self.cache[self.entry]
        if self.memory is not None:
            self.memory.unwatch_code(self, self.ranges)
        if self.on_invalidate is not None:
            self.on_invalidate(self)

    def prefix_counts(self, positions: int) -> Counter[str]:
        return Counter(self.classes[:positions])

    def counts(self) -> Counter[str]:
        """Instructions retired per class through this block's exits (loop iterations included)."""
        total: Counter[str] = Counter()
        for j, hits in enumerate(self.hits):
            if hits:
                for cls, n in self.prefix_counts(self.exit_positions[j]).items():
                    total[cls] += n * hits
        return total

    def retired(self) -> int:
        return sum(h * p for h, p in zip(self.hits, self.exit_positions, strict=True))


class Builder:
    """Emits the Python source of one trace."""

    def __init__(self, entry: int, loop_at: int | None, mode: Mode) -> None:
        self.entry = entry
        self.loop_at = loop_at  # position of the branch that loops back, when a loop
        self.mode = mode
        self.loop = loop_at is not None
        self.lines: list[tuple[int, str]] = []
        self.depth = 2 if self.loop else 1
        self.flags: Lazy | None = CANONICAL if self.loop else None
        self.flag_load = self.loop
        self.used: set[int] = set()
        self.written: set[int] = set()
        self.exit_positions: list[int] = [0] if self.loop else []
        self.refs: dict[int, InsnRef] = {}
        self.n_tmp = 0
        self.pos = 0
        self.insn: Insn | None = None
        self.loop_k = 0
        self.back_edge: int | None = None  # first branch to the entry seen
        self._writes: list[tuple[Reg, str]] = []
        self._store: tuple[str, int, str] | None = None
        self._new_flags: Lazy | None = None
        self._flags_set = False
        self.next_expr = "0"
        self.ended = False

    # -- bookkeeping ---------------------------------------------------------------

    def checkpoint(self) -> tuple[Any, ...]:
        return (
            len(self.lines),
            self.flags,
            self.flag_load,
            set(self.used),
            set(self.written),
            list(self.exit_positions),
            dict(self.refs),
            self.n_tmp,
            self.depth,
        )

    def restore(self, state: tuple[Any, ...]) -> None:
        (
            n,
            self.flags,
            self.flag_load,
            self.used,
            self.written,
            self.exit_positions,
            self.refs,
            self.n_tmp,
            self.depth,
        ) = state
        del self.lines[n:]
        self._writes, self._store, self._new_flags, self._flags_set = [], None, None, False

    def begin(self, insn: Insn, pos: int) -> None:
        self.insn = insn
        self.pos = pos
        self.next_expr = str(insn.next)
        self._writes, self._store, self._new_flags, self._flags_set = [], None, None, False

    def emit(self, text: str) -> None:
        self.lines.append((self.depth, text))

    def tmp(self, prefix: str = "t") -> str:
        self.n_tmp += 1
        return f"{prefix}{self.n_tmp}"

    def let(self, expr: str, prefix: str = "t") -> str:
        """Binds `expr` to a fresh local (unless it already is a name or a constant)."""
        if expr.isidentifier() or expr.lstrip("-").isdigit():
            return expr
        name = self.tmp(prefix)
        self.emit(f"{name} = {expr}")
        return name

    def bind(self, expr: str) -> str:
        """Binds `expr` to a fresh local, even a plain name (a value to keep across writes)."""
        name = self.tmp()
        self.emit(f"{name} = {expr}")
        return name

    def ref(self) -> str:
        assert self.insn is not None
        if self.pos not in self.refs:
            self.refs[self.pos] = InsnRef(self.pos, self.insn)
        return f"I{self.pos}"

    def it(self) -> str:
        return "it" if self.loop else "0"

    def flag_record(self) -> str:
        return "None" if self.flags is None else self.flags.record()

    def current_flags(self) -> Lazy:
        """The flags before the current instruction, for reading."""
        if self.flags is None:
            self.flag_load = True
            return CANONICAL
        return self.flags

    def fault_args(self) -> str:
        return f"{self.ref()}, %REGT%, {self.flag_record()}, {self.it()}"

    # -- registers -------------------------------------------------------------------

    def reg(self, index: int) -> str:
        self.used.add(index)
        return GPR64[index]

    def get(self, op: Reg | Imm | Mem, size: int | None = None) -> str:
        """The zero-extended value of an operand, as an expression of the pre-state."""
        if isinstance(op, Imm):
            return str(op.value & MASKS[SIZE_INDEX.get(size or op.size, 3)])
        if isinstance(op, Reg):
            name = self.reg(op.index)
            if op.high:
                return f"(({name} >> 8) & 255)"
            if op.size == 8:
                return name
            return f"({name} & {MASKS[SIZE_INDEX[op.size]]})"
        return self.load(op)

    def set(self, op: Reg | Mem, expr: str, address: str | None = None) -> None:
        """Queues a write of `expr` (already masked to the operand size)."""
        if isinstance(op, Reg):
            self.used.add(op.index)
            self.written.add(op.index)
            self._writes.append((op, expr))
        else:
            if self._store is not None:
                raise InvalidOpcode(self.insn.address if self.insn else 0, detail="two stores in one instruction")
            self._store = (address if address is not None else self.address(op), op.size, expr)

    def set_flags(self, lazy: Lazy) -> None:
        self._new_flags = lazy
        self._flags_set = True

    # -- memory ----------------------------------------------------------------------

    def address(self, mem: Mem, adjust_rsp: int = 0) -> str:
        """Emits the effective address of `mem` (not masked: the fast path rejects overflow)."""
        expr = address_expr(mem, self.reg, adjust_rsp)
        return self.let(expr, "a")

    def load(self, mem: Mem, address: str | None = None, into: str | None = None) -> str:
        size = mem.size
        if size not in SIZE_INDEX:
            raise InvalidOpcode(self.insn.address if self.insn else 0, detail=f"{size}-byte memory operand")
        a = address if address is not None else self.address(mem)
        target = into or self.tmp("m")
        self.emit("try:")
        self.emit(f"    {target} = {self._fast(a, size, 'R')}")
        self.emit("except LookupError:")
        self.emit(f"    {target} = RD({a}, {size}, {self.fault_args()})")
        return target

    @staticmethod
    def _fast(a: str, size: int, table: str) -> str:
        si = SIZE_INDEX[size]
        if a.isdigit():  # an absolute address: fold the key and the index
            value = int(a)
            return f"{table}{size}[{value & (-4096 | (size - 1))}][{(value & 4095) >> si}]"
        if size == 1:
            return f"{table}1[{a} & -4096][{a} & 4095]"
        return f"{table}{size}[{a} & {-4096 | (size - 1)}][({a} & 4095) >> {si}]"

    # -- finishing an instruction ----------------------------------------------------

    def finish(self) -> None:
        """Emits the queued store, register writes and flag update of the instruction."""
        new_flags = self._new_flags if self._flags_set else self.flags
        wlines: list[str] = []
        writes = self._writes
        if len(writes) > 1:
            # Bind a value that reads a register another write of this instruction changes.
            targets = {GPR64[op.index] for op, _ in writes}
            writes = [
                (op, self.bind(expr) if targets & set(_IDENTIFIER.findall(expr)) else expr) for op, expr in writes
            ]
        for op, expr in writes:
            name = GPR64[op.index]
            if new_flags is not None and name in new_flags.names():
                snap = self.tmp("s")
                wlines.append(f"{snap} = {name}")
                new_flags = new_flags.replace_name(name, snap)
            if op.size == 8:
                wlines.append(f"{name} = {expr}")
            elif op.size == 4:
                wlines.append(f"{name} = {expr}")
            elif op.size == 2:
                wlines.append(f"{name} = ({name} & 18446744073709486080) | {expr}")
            elif op.high:
                wlines.append(f"{name} = ({name} & 18446744073709486335) | ({expr}) << 8")
            else:
                wlines.append(f"{name} = ({name} & 18446744073709551360) | {expr}")
        # A single full-width write of a temp bound just before: assign the register directly.
        if (
            self._store is None
            and len(writes) == 1
            and writes[0][0].size in (4, 8)
            and self.lines
            and self.lines[-1][0] == self.depth
            and self.lines[-1][1].startswith(f"{writes[0][1]} = ")
            and writes[0][1].startswith("t")
            and wlines[-1] == f"{GPR64[writes[0][0].index]} = {writes[0][1]}"
        ):
            temp = writes[0][1]
            expr = self.lines.pop()[1][len(temp) + 3 :]
            name = GPR64[writes[0][0].index]
            wlines[-1] = f"{name} = {expr}"
            if new_flags is not None:
                new_flags = new_flags.replace_name(temp, name)
        if self._store is not None:
            a, size, value = self._store
            self.emit("try:")
            self.emit(f"    {self._fast(a, size, 'W')} = {value}")
            self.emit("except LookupError:")
            self.emit(f"    if WR({a}, {value}, {size}, {self.fault_args()}):")
            saved_depth, saved_flags = self.depth, self.flags
            self.depth += 2
            for line in wlines:
                self.emit(line)
            self.flags = new_flags
            self.exit(self.next_expr, self.pos + 1)
            self.depth, self.flags = saved_depth, saved_flags
        for line in wlines:
            self.emit(line)
        self.flags = new_flags
        self._writes, self._store, self._new_flags, self._flags_set = [], None, None, False

    # -- leaving -------------------------------------------------------------------

    def exit(self, target: str, positions: int) -> None:
        """Emits a return to `target` after `positions` instructions of this path."""
        self.emit("%REGS%")
        if self.flags is not None:
            self.emit(f"S[16] = {self.flags.record()}")
        j = len(self.exit_positions)
        self.exit_positions.append(positions)
        self.emit(f"X[{j}] += 1")
        if self.loop:
            self.emit("X[0] += it")
            self.emit(f"return ({target}, it * %K% + {positions})")
        else:
            self.emit(f"return ({target}, {positions})")

    def helper_exit(self, helper: str, positions: int) -> None:
        """Ends the trace with a helper that runs the instruction on the committed state."""
        self.emit("%REGS%")
        if self.flags is not None:
            self.emit(f"S[16] = {self.flags.record()}")
        j = len(self.exit_positions)
        self.exit_positions.append(positions)
        self.refs[self.pos].exit = j
        total = f"it * %K% + {positions}" if self.loop else str(positions)
        self.emit(f"return {helper}({self.ref()}, {total}, {self.it()})")

    def loop_back(self) -> None:
        record = self.current_flags().record()
        if self.flags is not CANONICAL:
            # Dropped again in source() when nothing in the loop reads the carried flags.
            self.emit(f"{_LOOP_FLAGS}fk, fr, fa, fb, fx = {record}")
        self.emit("it += 1")
        self.emit("if it >= lim:")
        self.depth += 1
        self.emit("%REGS%")
        self.emit(f"S[16] = {record}")
        self.emit("X[0] += it")
        self.emit(f"return ({self.entry}, it * %K%)")
        self.depth -= 1
        self.emit("continue")
        self.loop_k = self.pos + 1
        self.exit_positions[0] = self.loop_k

    # -- assembling ------------------------------------------------------------------

    def source(self) -> tuple[str, tuple[int, ...]]:
        wregs = tuple(sorted(self.written))
        commit = [f"S[{i}] = {GPR64[i]}" for i in wregs]
        regt = "(" + "".join(f"{GPR64[i]}, " for i in wregs) + ")"
        k = str(self.loop_k or 1)
        carried = any(_CANONICAL_NAME.search(text) for _, text in self.lines if not text.startswith(_LOOP_FLAGS))
        out = ["def blk(S, left):"]
        for i in sorted(self.used):
            out.append(f"    {GPR64[i]} = S[{i}]")
        if self.flag_load and (carried or not self.loop):
            out.append("    fk, fr, fa, fb, fx = S[16]")
        if self.loop:
            out.append("    it = 0")
            out.append(f"    lim = left // {k}")
            out.append("    while True:")
        for depth, text in self.lines:
            pad = "    " * depth
            if text == "%REGS%":
                out.extend(pad + c for c in commit)
                continue
            if text.startswith(_LOOP_FLAGS):
                if not carried:
                    continue
                text = text[len(_LOOP_FLAGS) :]
            out.append(pad + text.replace("%REGT%", regt).replace("%K%", k))
        return "\n".join(out) + "\n", wregs


@attrs.frozen
class Mode:
    """What a translation depends on besides the bytes: privilege and intercepts."""

    cpl: int
    intercepts: frozenset[str]
    generation: int


def address_expr(mem: Mem, reg: Callable[[int], str], adjust_rsp: int = 0) -> str:
    """The Python expression of an effective address; `reg` names a register's local."""
    parts: list[str] = []
    if mem.base is not None:
        base = reg(mem.base)
        parts.append(f"({base} + {adjust_rsp})" if adjust_rsp and mem.base == 4 else base)
    if mem.index is not None:
        index = reg(mem.index)
        parts.append(index if mem.scale == 1 else f"{index} * {mem.scale}")
    # Without a base register a negative displacement is a sign-extended kernel address
    # (`-0x7effdfe0(,%rax,8)`): keep it unsigned so the sum stays in [0, 2**64).
    disp = mem.disp if mem.base is not None else mem.disp & M64
    if disp or not parts:
        parts.append(str(disp))
    expr = " + ".join(parts).replace("+ -", "- ")
    if mem.addr32:
        expr = f"(({expr}) & 4294967295)"
    if mem.segment is not None:
        expr = f"S[{GS_SLOT if mem.segment == 'gs' else FS_SLOT}] + {expr}"
    return expr


def sign_extend_expr(expr: str, size: int) -> str:
    sign = SIGNS[SIZE_INDEX[size]]
    return f"(({expr} ^ {sign}) - {sign})"


class Translator:
    """Builds and caches `Block`s for one CPU."""

    def __init__(self, memory: Memory, namespace: dict[str, Any], semantics: Any) -> None:
        self.memory = memory
        self.namespace = namespace
        self.semantics = semantics
        self.decoder = Decoder()
        self.retired_counts: Counter[str] = Counter()
        self.retired_total = 0
        self.blocks: list[Block] = []
        self.retired_blocks: list[Block] = []
        self.translations = 0

    def decode_at(self, addr: int) -> Insn:
        code = self.memory.fetch(addr, 15, addr)
        insn = self.decoder.decode(code, addr)
        if insn is None:
            if len(code) < 15:
                # Truncated by a page that is not executable: the fetch of the rest faults.
                probe = addr + len(code)
                try:
                    self.memory.fetch(probe, 1, addr)
                except PageFault as fault:
                    raise PageFault(addr, fault.error_code | PF_FETCH, fault.address) from None
            raise InvalidOpcode(addr, detail=f"cannot decode {code[:15].hex()}")
        return insn

    def translate(self, entry: int, mode: Mode, cache: dict[int, Any]) -> Block:
        decoded: dict[int, Insn] = {}
        first = self._trace(entry, None, mode, decoded)
        if first.back_edge is not None:
            builder = self._trace(entry, first.back_edge, mode, decoded)
        else:
            builder = first
        source, wregs = builder.source()
        namespace = dict(self.namespace)
        hits = [0] * len(builder.exit_positions)
        namespace["X"] = hits
        for pos, ref in builder.refs.items():
            namespace[f"I{pos}"] = ref
        try:
            code = compile(source, f"<x86 block {entry:#x}>", "exec")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as error:  # pragma: no cover - a model bug
            raise InvalidOpcode(entry, detail=f"translation failed: {error}") from error
        exec(code, namespace)
        insns = self._trace_insns
        ranges = _merge((i.address, i.next) for i in insns)
        block = Block(
            entry=entry,
            fn=namespace["blk"],
            insns=insns,
            classes=[self.semantics.klass(i) for i in insns],
            ranges=ranges,
            exit_positions=builder.exit_positions,
            hits=hits,
            wregs=wregs,
            loop=builder.loop,
            source=source,
            cache=cache,
            memory=self.memory,
            on_invalidate=self._retire,
        )
        for ref in builder.refs.values():
            ref.block = block
        self.memory.watch_code(block, ranges)
        self.blocks.append(block)
        self.translations += 1
        return block

    def _retire(self, block: Block) -> None:
        # The block may still be running (it wrote its own code): count it when the run ends.
        self.blocks.remove(block)
        self.retired_blocks.append(block)

    def fold_retired(self) -> None:
        """Adds the counters of dropped blocks to the totals (none of them is running)."""
        for block in self.retired_blocks:
            self.retired_counts.update(block.counts())
            self.retired_total += block.retired()
        self.retired_blocks.clear()

    def _trace(self, entry: int, loop_at: int | None, mode: Mode, decoded: dict[int, Insn]) -> Builder:
        b = Builder(entry, loop_at, mode)
        insns: list[Insn] = []
        visited: set[int] = set()
        calls: list[int] = []
        addr = entry
        pos = 0
        while True:
            if pos >= MAX_TRACE:
                b.exit(str(addr), pos)
                break
            insn = decoded.get(addr)
            if insn is None:
                try:
                    insn = self.decode_at(addr)
                except ArchFault:
                    if pos == 0:
                        raise
                    b.exit(str(addr), pos)
                    break
                decoded[addr] = insn
            visited.add(addr)
            state = b.checkpoint()
            b.begin(insn, pos)
            try:
                control = self.semantics.emit(b, insn)
                b.finish()
            except InvalidOpcode:
                if pos == 0:
                    raise
                b.restore(state)
                b.exit(str(addr), pos)
                break
            insns.append(insn)
            pos += 1
            if control is None:
                addr = insn.next
                continue
            kind = control[0]
            if kind == "end":
                break
            if kind == "cond":
                _, cond, target = control
                b.emit(f"if {cond}:")
                b.depth += 1
                self._branch(b, target, pos, visited)
                b.depth -= 1
                addr = insn.next
                continue
            if kind == "jump":
                _, target, call_return = control
                if call_return is not None:
                    calls.append(call_return)
                if self._follow(b, target, pos, visited):
                    addr = target
                    continue
                break
            if kind == "ret":
                _, value = control
                if calls:
                    expected = calls.pop()
                    b.emit(f"if {value} != {expected}:")
                    b.depth += 1
                    b.exit(value, pos)
                    b.depth -= 1
                    if self._follow(b, expected, pos, visited):
                        addr = expected
                        continue
                    break
                b.exit(value, pos)
                break
            raise AssertionError(control)
        self._trace_insns = insns
        return b

    def _branch(self, b: Builder, target: int, pos: int, visited: set[int]) -> None:
        """The taken side of a conditional branch: loop back or leave."""
        if target == b.entry:
            if b.back_edge is None:
                b.back_edge = pos - 1
            if b.loop_at == pos - 1:
                b.loop_back()
                return
        b.exit(str(target), pos)

    def _follow(self, b: Builder, target: int, pos: int, visited: set[int]) -> bool:
        """An unconditional direct transfer: continue the trace there, loop back, or leave."""
        if target == b.entry:
            if b.back_edge is None:
                b.back_edge = pos - 1
            if b.loop_at == pos - 1:
                b.loop_back()
                return False
        if target in visited or pos >= MAX_TRACE:
            b.exit(str(target), pos)
            return False
        return True


def _merge(ranges: Any) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
