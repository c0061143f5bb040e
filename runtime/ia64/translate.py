"""Translation of IA-64 code into Python functions, one per block of instruction groups.

A block starts at an instruction (bundle address | slot) and runs through the following
instructions in order (stops end instruction groups; a correct program has no dependency inside a
group, so executing a group's instructions in slot order gives its architectural result) until an
unconditional control transfer or `MAX_BUNDLES` bundles. Conditional branches and breaks become
side exits. The block's Python source is built from the decoded instructions, compiled once and
cached by address; every exit bumps its own counter, and each exit knows how many instructions of
each class it retired, so the per-class counts cost one list increment per block run.

Two flavours are generated from the same emitters: the fast one assumes no general register holds
a NaT (true almost always), the NaT-aware one also propagates NaT bits, consumes them (NaT
Consumption fault) and clears them. A fast block that creates a NaT (ld8.fill of a set UNAT bit)
leaves right after it, and the run loop continues in the NaT-aware flavour while any NaT is set.

Faults are raised as `Interruption`s; the block records where (`k`, the index of the instruction
that can fault, is set before each such instruction) so the fault carries IIP, slot and the
decoded instruction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pvgen.runtime.ia64.emitters import BREAKS, EMITTERS, Context
from pvgen.runtime.ia64.faults import Interruption, MachineCheck, illegal_operation, nat_consumption
from pvgen.runtime.ia64.state import MASK64

from pvgen.ia64.bundle import TEMPLATES
from pvgen.ia64.insn import AnyInstruction, UnknownInstruction

if TYPE_CHECKING:
    from pvgen.runtime.ia64.cpu import Cpu

#: Instruction classes for the counters and the cost model (cost.CLASS_CYCLES has one figure each).
CLASSES: Final = (
    "nop",
    "alu",
    "compare",
    "load",
    "store",
    "atomic",
    "branch",
    "ar",
    "system",
    "serialize",
    "rfi",
    "break",
)
CLASS_INDEX: Final = {name: i for i, name in enumerate(CLASSES)}
MAX_BUNDLES: Final = 24

_NOPS: Final = frozenset({"nop.m", "nop.i", "nop.b", "nop.f", "nop.x", "hint.m", "hint.i", "hint.f", "hint.x"})
_SERIALIZE: Final = frozenset({"srlz.d", "srlz.i", "sync.i", "mf", "mf.a", "invala"})
_BRANCH_FORMATS: Final = frozenset({"B1", "B3", "B4", "B5", "X3", "X4"})
_AR_FORMATS: Final = frozenset({"M29", "M30", "M31", "I26", "I27", "I28"})
_SIZES: Final = {"1": (0, 0, 0xFF), "2": (1, 1, 0xFFFF), "4": (2, 2, 0xFFFFFFFF), "8": (3, 3, MASK64)}


def classify(insn: AnyInstruction) -> str:
    """The class of an instruction for counting and cost."""
    if isinstance(insn, UnknownInstruction) or insn.form is None:
        return "system"
    mnemonic, fmt = insn.mnemonic, insn.form.fmt
    if mnemonic in _NOPS:
        return "nop"
    if mnemonic in BREAKS:
        return "break"
    if fmt in ("A6", "A8", "I16"):
        return "compare"
    if fmt in ("M1", "M2", "M3"):
        return "load"
    if fmt in ("M4", "M5"):
        return "store"
    if fmt == "M16":
        return "atomic"
    if fmt in _BRANCH_FORMATS:
        return "branch"
    if mnemonic == "rfi":
        return "rfi"
    if mnemonic in _SERIALIZE:
        return "serialize"
    if fmt in _AR_FORMATS:
        return "ar"
    if fmt[0] in "AIX":
        return "alu"
    return "system"


def _ends_block(insn: AnyInstruction) -> bool:
    """An unconditional control transfer (or an instruction that always faults) ends a block."""
    if isinstance(insn, UnknownInstruction) or insn.form is None:
        return True
    if insn.mnemonic in ("rfi", "bsw.0", "bsw.1", "epc"):
        return True
    return insn.qp == 0 and (insn.form.fmt in _BRANCH_FORMATS or insn.mnemonic in BREAKS)


class Block:
    """One translated block: the function, its exit counters and per-exit class counts."""

    __slots__ = ("ex", "exits", "fn", "items", "key", "nat_aware", "pages", "prefix")

    def __init__(self, key: int, nat_aware: bool) -> None:
        self.key = key
        self.nat_aware = nat_aware
        self.fn: Callable[[], int] = _unset
        self.ex: list[int] = []
        self.exits: list[tuple[int, ...]] = []
        self.prefix: list[tuple[int, ...]] = []
        self.items: list[Item] = []
        self.pages: set[int] = set()


def _unset() -> int:
    raise AssertionError("block function not built")


class Item:
    __slots__ = ("address", "cls", "insn", "last_slot", "slot")

    def __init__(self, address: int, slot: int, insn: AnyInstruction, last_slot: bool) -> None:
        self.address = address
        self.slot = slot
        self.insn = insn
        self.last_slot = last_slot
        self.cls = CLASS_INDEX[classify(insn)]

    @property
    def next_key(self) -> int:
        return self.address + 16 if self.last_slot else self.address | (self.slot + 1)


class Translator:
    """Builds `Block`s for a CPU: decodes through the CPU's bundle cache, emits, compiles."""

    def __init__(self, cpu: Cpu) -> None:
        self.cpu = cpu
        self.compiled = 0

    # -- collection -------------------------------------------------------------------------------

    def _collect(self, key: int) -> tuple[list[Item], int | None]:
        """The instructions of the block at `key` and the fall-through key (None: no fall-through)."""
        cpu = self.cpu
        address, slot = key & ~15, key & 15
        items: list[Item] = []
        for _ in range(MAX_BUNDLES):
            try:
                template, insns = cpu.fetch(address)
            except MachineCheck:
                if not items:
                    raise
                return items, address
            info = TEMPLATES[template]
            if info.units is None:
                items.append(Item(address, slot, insns[0], True))
                return items, None
            slots = (0, 1) if len(insns) == 2 else (0, 1, 2)
            for number, insn in zip(slots, insns, strict=True):
                if number < slot:
                    continue
                item = Item(address, number, insn, number == slots[-1])
                items.append(item)
                if _ends_block(insn):
                    return items, None
            address += 16
            slot = 0
        return items, address

    # -- building ---------------------------------------------------------------------------------

    def build(self, key: int, nat_aware: bool) -> Block:
        cpu = self.cpu
        block = Block(key, nat_aware)
        try:
            items, fall = self._collect(key)
        except MachineCheck as fault:
            fault.locate(key & ~15, key & 15, None)

            def fetch_fault() -> int:
                raise MachineCheck(key & ~15, "instruction fetch from missing memory")

            block.fn = fetch_fault
            return block
        block.items = items
        block.pages = {item.address >> 12 for item in items}
        writer = BlockWriter(block, nat_aware)
        for index, item in enumerate(items):
            writer.item(index, item)
        if fall is not None:
            writer.exit_lines(str(fall), 2)
        source = writer.source()
        namespace: dict[str, Any] = {}
        exec(compile(source, f"<ia64 block {key:#x}>", "exec"), namespace)
        block.fn = namespace["make"](**cpu.block_environment(block))
        self.compiled += 1
        return block


class BlockWriter:
    """Emits the Python source of one block."""

    def __init__(self, block: Block, nat_aware: bool) -> None:
        self.block = block
        self.nat = nat_aware
        self.lines: list[str] = []
        self.counts = [0] * len(CLASSES)

    def source(self) -> str:
        head = [
            "def make(g, p, b, ar, cpu, RM, WM, ld, st, brk, ex, fault, natc, illegal, Interruption):",
            "    def block(g=g, p=p, b=b, ar=ar, cpu=cpu, RM=RM, WM=WM, ld=ld, st=st, brk=brk, ex=ex):",
            "        k = 0",
            "        try:",
        ]
        tail = [
            "        except Interruption as f:",
            "            fault(f, k)",
            "            raise",
            "    return block",
        ]
        body = self.lines or ["            pass"]
        return "\n".join(head + body + tail) + "\n"

    def put(self, depth: int, text: str) -> None:
        self.lines.append("    " * (depth + 1) + text)

    def exit_lines(self, target: str, depth: int) -> None:
        number = len(self.block.exits)
        self.block.exits.append(tuple(self.counts))
        self.block.ex.append(0)
        if not target.isdigit() and "(" in target:
            # A target that may fault (rfi, br.ret, break) is computed before the exit counts it.
            self.put(depth, f"t = {target}")
            target = "t"
        self.put(depth, f"ex[{number}] += 1")
        self.put(depth, f"return {target}")

    # -- one instruction -----------------------------------------------------------------------------

    def item(self, index: int, item: Item) -> None:
        self.block.prefix.append(tuple(self.counts))
        self.counts[item.cls] += 1
        insn = item.insn
        depth = 2
        self.put(depth, f"# {item.address:#x} slot {item.slot}: {_describe(insn)}")
        if isinstance(insn, UnknownInstruction) or insn.form is None:
            self.put(depth, f"k = {index}")
            self.put(depth, 'raise illegal("unimplemented or reserved encoding")')
            return
        if insn.mnemonic in _NOPS:
            return
        emitter = EMITTERS.get(insn.form.fmt)
        if emitter is None:
            self.put(depth, f"k = {index}")
            self.put(depth, f'raise illegal("{insn.mnemonic} is not modelled")')
            return
        unc = insn.mnemonic.endswith(".unc") and insn.qp != 0
        if insn.qp and not unc:
            self.put(depth, f"if p[{insn.qp}]:")
            depth += 1
        emitter(Context(self, index, item, depth))


def _describe(insn: AnyInstruction) -> str:
    text = str(insn).replace("\\", "/")
    if insn.qp:
        text = f"(p{insn.qp}) {text}"
    return text


#: Names every generated block receives besides the CPU's state (see Cpu.block_environment).
HELPERS: Final[dict[str, Any]] = {"Interruption": Interruption, "illegal": illegal_operation, "natc": nat_consumption}
