"""Boot-time pv_ops for x86-64 images: read the site records, fill the table, patch every site.

This is apply_paravirt made explicit. The op table (`pv_ops` in guest memory) is filled
from the generated Python layer; each `.pvgen.sites` record is checked against the bytes
it describes and then rewritten. A site is the 6-byte `ff 15 rel32` indirect call through
the op's slot (`ff 25` for a jump-type op); an asm macro's site also covers, as Linux's
PARA_SITE does, the registers pushed before the call, a `mov %rax, reg` of the result and
the pops after it. The rewrite: the inline template over the whole site when it writes only
registers the caller's clobbers allow (else in place of the call, the saves kept), a direct
`e8`/`e9 rel32` call or jump (the saves kept, but for the return register when the target
preserves the others), NOPs for an op that does nothing, or left as the indirect call. The
rest of the site is padded: with the arch's redundant pad prefix on the patched
instructions where the build recorded room for it (a `cs call` for a direct call), then
with the fewest NOPs for what prefixes cannot absorb.
"""

from __future__ import annotations

import functools
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
from pvgen.runtime.x86.sitefold import FOLD_SECTION, SITES_SECTION, FoldError, FoldRoom, Neighbour
from pvgen.runtime.x86.sitefold import decode as decode_folds

from pvgen.assemble import legacy_prefix_count, prefix_room

TABLE_SYMBOL = "pv_ops"
RECORD = struct.Struct("<QBBH4x")  # instr address, op index, site length, clobbers; 16 bytes
UD2 = b"\x0f\x0b"  # what a site of an op with no implementation becomes (Linux: ud2a, then BUG)
CALL_SIZE = 6  # ff 15 rel32 / ff 25 rel32
GPR64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


class BootError(Exception):
    """The image cannot be booted as asked: a bad site, a missing symbol, a refused mask."""


@attrs.frozen
class SiteRecord:
    address: int
    index: int
    length: int
    clobbers: int


@attrs.frozen
class SiteShape:
    """The parts of a site: pushes, the indirect call, an optional result move, pops."""

    saves: tuple[int, ...]  # register numbers pushed before the call, in order
    call: int  # offset of the indirect call in the site
    move: bytes  # `mov %rax, reg` after the call (a macro with an output), or b""

    @property
    def restores(self) -> int:
        """Offset of the first pop."""
        return self.call + CALL_SIZE + len(self.move)


def _push(register: int) -> bytes:
    return (b"\x41" if register >= 8 else b"") + bytes([0x50 + (register & 7)])


def _pop(register: int) -> bytes:
    return (b"\x41" if register >= 8 else b"") + bytes([0x58 + (register & 7)])


def _stack_ops(data: bytes, base: int) -> tuple[list[int], int]:
    """The registers of the push (`base` 0x50) or pop (0x58) instructions at the start of `data`."""
    registers, position = [], 0
    while position < len(data):
        if base <= data[position] < base + 8:
            registers.append(data[position] - base)
            position += 1
        elif data[position] == 0x41 and position + 1 < len(data) and base <= data[position + 1] < base + 8:
            registers.append(8 + data[position + 1] - base)
            position += 2
        else:
            break
    return registers, position


def parse_site(data: bytes, opcode: bytes, slot: int, address: int) -> SiteShape | None:
    """The shape of a site's bytes, or None unless they are pushes, `opcode` rel32 to `slot`,
    an optional `mov %rax, reg`, and the pops of the pushed registers in reverse order."""
    saves, call = _stack_ops(data, 0x50)
    expected = opcode + struct.pack("<i", slot - (address + call + CALL_SIZE))
    if data[call : call + CALL_SIZE] != expected:
        return None
    rest = data[call + CALL_SIZE :]
    move = b""
    if len(rest) >= 3 and rest[0] in (0x48, 0x49) and rest[1] == 0x89 and rest[2] & 0xF8 == 0xC0:
        move = rest[:3]  # REX.W(.B) 89 /r, reg field %rax, register destination
        rest = rest[3:]
    pops, end = _stack_ops(rest, 0x58)
    if end != len(rest) or pops != saves[::-1] or 4 in saves:
        return None
    return SiteShape(tuple(saves), call, move)


def _register_bits(layer: ModuleType, registers: Sequence[int]) -> int | None:
    """The clobber bits of registers (None if one has no bit, so cannot be allowed)."""
    bits = 0
    for register in registers:
        bit = layer.CLOBBER_BITS.get(GPR64[register])
        if bit is None:
            return None
        bits |= 1 << bit
    return bits


def template_writes(code: bytes) -> tuple[int, ...] | None:
    """The general registers an inline template writes (%rsp aside: templates keep the stack
    balanced), or None if it cannot be decoded."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    written: set[int] = set()
    size = 0
    for insn in md.disasm(code, 0):
        size += insn.size
        for reg in insn.regs_access()[1]:
            name = insn.reg_name(reg)
            number = _GPR_NUMBERS.get(name)
            if number is not None and number != 4:
                written.add(number)
    return tuple(sorted(written)) if size == len(code) else None


def _gpr_numbers() -> dict[str, int]:
    names = {name: number for number, name in enumerate(GPR64)}
    for number, stem in enumerate(("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")):
        names["e" + stem] = names[stem] = number
    for number, name in enumerate(("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil")):
        names[name] = number
    for number, name in enumerate(("ah", "ch", "dh", "bh")):
        names[name] = number
    for number in range(8, 16):
        names[f"r{number}d"] = names[f"r{number}w"] = names[f"r{number}b"] = number
    return names


_GPR_NUMBERS = _gpr_numbers()


@attrs.frozen
class PatchReport:
    """What boot did to the image: per-kind site counts and the op each slot points at."""

    sites: int
    by_kind: dict[str, int]
    by_op: dict[str, dict[str, int]]  # "group.op" -> kind -> count
    table: dict[str, str]  # "group.op" -> symbol in its slot ("" for none)
    folded: dict[int, Folded] = attrs.field(factory=dict)  # by site address


@attrs.frozen
class Folded:
    """A site whose padding went into its neighbours as pad prefixes."""

    start: int  # the first instruction of the rewritten run: it executes exactly when the site
    # would (the site's own address may now be inside an instruction)
    end: int  # the end of the rewritten run (the end of the last neighbour that moved)
    body: bytes  # what the site patched to, before padding (empty for an op that is nothing)
    pad: int  # the padding bytes the neighbours took


def _section_data(path: str | Path, name: str) -> bytes:
    """The bytes of one section of an ELF image (none if it has no such section)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with Path(path).open("rb") as stream:
            section = ELFFile(stream).get_section_by_name(name)
            return section.data() if section is not None else b""
    except (ELFError, OSError, struct.error, ValueError) as error:
        raise BootError(f"{path}: cannot read the ELF image: {error}") from None


def read_sites(path: str | Path) -> list[SiteRecord]:
    """The records of the image's `.pvgen.sites` section (none if it has no such section)."""
    data = _section_data(path, SITES_SECTION)
    if len(data) % RECORD.size:
        size = RECORD.size
        raise BootError(f"{path}: {SITES_SECTION} is {len(data)} bytes, not a whole number of {size}-byte records")
    return [SiteRecord(*RECORD.unpack_from(data, offset)) for offset in range(0, len(data), RECORD.size)]


def nop_fill(nops: Sequence[bytes], length: int) -> bytes:
    """The fewest NOP instructions that fill `length` bytes, longest forms first."""
    by_size = sorted(nops, key=len, reverse=True)
    out = b""
    while len(out) < length:
        room = length - len(out)
        out += next(n for n in by_size if len(n) <= room)
    return out


@attrs.frozen
class Padder:
    """Pads patched code to a site's length: the arch's redundant prefix first, on instructions
    with room for it, then NOPs for what prefixes cannot absorb. A padded instruction does what
    it did (a CS override is ignored in 64-bit mode) and the NOP it saves no longer executes."""

    nops: tuple[bytes, ...]
    prefix: bytes | None
    limit: int

    @classmethod
    def of(cls, layer: ModuleType) -> Padder:
        return cls(tuple(layer.NOPS), layer.PAD_PREFIX, layer.PAD_PREFIX_LIMIT)

    def pad(self, pieces: Sequence[tuple[bytes, Sequence[tuple[int, int]]]], length: int) -> bytes:
        """`pieces` (code, [(offset, room)]) joined and padded to `length` bytes, prefixes placed
        greedily from the first instruction with room."""
        code, spare = self.fit(pieces, length)
        return code + self.nops_for(spare)

    def fit(self, pieces: Sequence[tuple[bytes, Sequence[tuple[int, int]]]], length: int) -> tuple[bytes, int]:
        """`pieces` joined with as many pad prefixes as they take towards `length` bytes, and
        the bytes still missing (for NOPs, or for folding into the site's neighbours)."""
        spare = length - sum(len(code) for code, _ in pieces)
        out = bytearray()
        for code, rooms in pieces:
            start = 0
            for offset, room in rooms:
                take = min(room, spare) if self.prefix else 0
                out += code[start:offset] + self.prefix * take if take else code[start:offset]
                spare -= take
                start = offset
            out += code[start:]
        return bytes(out), spare

    def nops_for(self, length: int) -> bytes:
        """The fewest NOP instructions that fill `length` bytes: the longest NOP form takes pad
        prefixes too (as Linux's and gas's NOPs past eight bytes are prefixed forms)."""
        return _nops_for(self, length)

    def _fill(self, length: int) -> bytes:
        if not self.prefix or not self.limit or not self.nops:
            return nop_fill(self.nops, length)
        longest = max(self.nops, key=len)
        own = legacy_prefix_count(longest)  # a 66-prefixed form uses up room
        reach = len(longest) + max(0, self.limit - own)
        out = b""
        while len(out) < length:
            take = min(reach, length - len(out))
            extra = take - len(longest)
            out += self.prefix * extra + longest if extra > 0 else nop_fill(self.nops, take)
        return out

    def whole(self, code: bytes) -> tuple[bytes, tuple[tuple[int, int], ...]]:
        """A single instruction built here (a push, pop or result move) as a piece with full room."""
        return code, ((0, self.limit),) if self.prefix and self.limit else ()


class _Folder:
    """Moves a site's leftover padding into its neighbours as pad prefixes (see sitefold.py):
    the instruction before an empty site grows forward over it, the ones after the site slide
    back. A neighbour serves one site at most, and a PC-relative one must keep its end."""

    def __init__(self, padder: Padder, rooms: Mapping[int, FoldRoom], read: Any) -> None:
        self.padder = padder
        self.rooms = rooms
        self.read = read
        self.claimed: set[int] = set()

    def _room(self, neighbour: Neighbour) -> int:
        return prefix_room(self.padder.limit, neighbour.length, neighbour.prefixes)

    def _bytes(self, site: SiteRecord, neighbour: Neighbour) -> bytes:
        """A neighbour's instruction, refused if it is not what the build recorded."""
        code = self.read(neighbour.address, neighbour.length)
        if legacy_prefix_count(code) != neighbour.prefixes or legacy_prefix_count(code) == len(code):
            raise BootError(
                f"site at {site.address:#x}: the {FOLD_SECTION} record of the instruction at "
                f"{neighbour.address:#x} does not match its bytes {code.hex(' ')} (the image changed after the "
                "fold pass)"
            )
        return code

    def fold(self, site: SiteRecord, body: bytes, spare: int) -> tuple[int, bytes] | None:
        """(where the rewritten run starts, its bytes) with `spare` bytes of padding folded away,
        or None when the neighbours cannot take all of it (the site keeps its NOPs)."""
        room = self.rooms.get(site.address)
        prefix = self.padder.prefix
        if room is None or not prefix:
            return None
        start, out, used, remaining = site.address, bytearray(body), [], spare
        before = room.before
        if not body and before is not None and before.address not in self.claimed:
            take = min(self._room(before), remaining)
            if take:
                start, out = before.address, bytearray(prefix * take + self._bytes(site, before))
                used.append(before.address)
                remaining -= take
        for neighbour in room.after:
            if not remaining:
                break
            take = min(self._room(neighbour), remaining)
            if neighbour.address in self.claimed or (neighbour.pc_relative and take != remaining):
                return None
            out += prefix * take + self._bytes(site, neighbour)
            used.append(neighbour.address)
            remaining -= take
        if remaining:
            return None
        self.claimed.update(used)
        return start, bytes(out)


def read_folds(path: str | Path) -> dict[int, FoldRoom]:
    """The fold rooms of the image's `.pvgen.fold` section, by site (none if it has no such section)."""
    try:
        return decode_folds(_section_data(path, FOLD_SECTION))
    except FoldError as error:
        raise BootError(f"{path}: {error}") from None


def _move_from_rax(register: int) -> bytes:
    """`mov %rax, reg` as the site records it (REX.W(.B) 89 /r)."""
    return bytes([0x49 if register >= 8 else 0x48, 0x89, 0xC0 | (register & 7)])


def _identity_undone(layer: ModuleType, code: bytes, site: SiteRecord, shape: SiteShape) -> bool:
    """Whether an identity template (`mov %rdi, %rax`) at a site that moves the result back into
    the argument register (`mov %rax, %rdi`) is nothing at all: every register ends as it was
    but %rax, which the site must then list as clobbered."""
    if code != layer.IDENTITY_TEMPLATE or shape.saves or not layer.ARG_REGISTERS:
        return False
    returns = layer.RETURN_REGISTERS[0]
    if returns != "rax" or not site.clobbers >> layer.CLOBBER_BITS[returns] & 1:
        return False
    return shape.move == _move_from_rax(GPR64.index(layer.ARG_REGISTERS[0]))


def implementation_symbol(layer: ModuleType, op: Any, hypervisor: str, masked: frozenset[str]) -> str:
    """The function a hypervisor's table slot holds for an op."""
    impl = layer.effective_impl(op, hypervisor, masked)
    owner = "native" if op.group in masked else hypervisor
    if impl.kind == "nop":
        return "pvgen_ret0" if op.returns_value else "pvgen_nop"
    if impl.kind == "identity":
        return "pvgen_ident_64"
    return str(layer.out_of_line_symbol(op, owner, impl))


def fill_table(
    layer: ModuleType, hypervisor: str, masked: frozenset[str], symbols: Mapping[str, int], write_u64: Any
) -> dict[str, str]:
    """Writes every slot of `pv_ops`; a symbol the image lacks leaves the slot NULL (its sites become ud2)."""
    base = symbols.get(TABLE_SYMBOL)
    if base is None:
        raise BootError(f"the image has no '{TABLE_SYMBOL}' table")
    table = {}
    for op in layer.OPS:
        if op.index < 0:
            continue
        name = implementation_symbol(layer, op, hypervisor, masked)
        address = symbols.get(name, 0)
        write_u64(base + op.index * layer.POINTER_SIZE, address)
        table[f"{op.group}.{op.name}"] = name if address else ""
    return table


def patch_sites(
    layer: ModuleType,
    hypervisor: str,
    masked: frozenset[str],
    sites: Sequence[SiteRecord],
    symbols: Mapping[str, int],
    read: Any,
    write: Any,
    table: Mapping[str, str],
    folds: Mapping[int, FoldRoom] | None = None,
) -> PatchReport:
    """Rewrites every site; refuses (BootError) a site whose bytes are not the expected indirect call.
    With `folds` (the image's `.pvgen.fold` records), padding that prefixes on the site's own
    instructions cannot take goes to the neighbours the build recorded, not to a NOP."""
    base = symbols.get(TABLE_SYMBOL)
    if base is None and sites:
        raise BootError(f"the image has sites but no '{TABLE_SYMBOL}' table")
    by_kind: Counter[str] = Counter()
    by_op: dict[str, Counter[str]] = {}
    folds_done: dict[int, Folded] = {}
    decisions: dict[int, tuple[bytes, tuple[tuple[int, int], ...]] | tuple[str, str]] = {}
    padder = Padder.of(layer)
    # Padded inline and NOP forms depend only on the op, the site's length, clobbers and shape.
    filled: dict[tuple[int, int, int, SiteShape], tuple[bytes, int]] = {}
    folder = _Folder(padder, folds or {}, read)
    for site in sites:
        op = layer.OPS_BY_INDEX.get(site.index)
        if op is None:
            raise BootError(f"site at {site.address:#x} names op index {site.index}, which the table does not have")
        qualname = f"{op.group}.{op.name}"
        current = read(site.address, site.length)
        opcode = b"\xff\x25" if op.transfer == "jump" else b"\xff\x15"
        slot = base + op.index * layer.POINTER_SIZE  # type: ignore[operator]
        shape = parse_site(current, opcode, slot, site.address)
        if shape is None:
            expected = opcode + struct.pack("<i", slot - (site.address + CALL_SIZE))
            raise BootError(
                f"site at {site.address:#x} for {qualname} is not the expected indirect call: found "
                f"{current.hex(' ')}, expected {expected.hex(' ')} (after any pushes, rel32 from its end; "
                "then the pops in reverse)"
            )
        decision = decisions.get(site.index)
        if decision is None:
            decision = _decide(layer, op, hypervisor, masked, CALL_SIZE, table.get(qualname, ""))
            decisions[site.index] = decision
        if isinstance(decision[0], bytes):
            code, pad = decision
            kind = "inline" if code and code != UD2 else ("bug" if code == UD2 else "nop")
            key = (site.index, site.length, site.clobbers, shape)
            fitted = filled.get(key)
            if fitted is None:
                if kind == "inline" and _identity_undone(layer, code, site, shape):
                    pieces: list[Piece] = []  # the move back into the argument register undoes the op
                elif kind == "inline" and not _inline_covers_site(layer, code, site, shape):
                    pieces = _around(padder, shape, (code, pad), shape.saves)
                else:
                    pieces = [(code, pad)]
                fitted = filled[key] = padder.fit(pieces, site.length)
            body, spare = fitted
        else:
            kind, symbol = decision
            if kind == "indirect":
                by_kind[kind] += 1
                by_op.setdefault(qualname, Counter())[kind] += 1
                continue
            target = symbols.get(symbol)
            if target is None:
                raise BootError(f"site at {site.address:#x} for {qualname} calls '{symbol}', which the image lacks")
            saves = shape.saves
            impl = layer.effective_impl(op, hypervisor, masked)
            if impl.kind == "call" and impl.preserves_registers and symbol == impl.symbol:
                returns = {GPR64.index(r) for r in layer.RETURN_REGISTERS}
                saves = tuple(r for r in saves if r in returns)  # the target keeps every other register
            # The call takes its own pad prefixes (a `cs call`, as Linux's retpoline sites are
            # built) before anything after it, so its end, and with it rel32, is known here.
            call = sum(len(_push(r)) for r in saves)
            rest = 5 + len(shape.move) + sum(len(_pop(r)) for r in saves)
            prefixes = min(padder.limit, site.length - call - rest) if padder.prefix else 0
            delta = target - (site.address + call + prefixes + 5)
            if not -(1 << 31) <= delta < (1 << 31):
                raise BootError(f"site at {site.address:#x}: '{symbol}' at {target:#x} is out of rel32 range")
            opcode = b"\xe9" if kind == "jump" else b"\xe8"
            branch = (padder.prefix or b"") * prefixes + opcode + struct.pack("<i", delta)
            if saves or shape.move:
                body, spare = padder.fit(_around(padder, shape, (branch, ()), saves, pad_saves=False), site.length)
            else:  # the common C site: the call alone
                body, spare = branch, site.length - len(branch)
        folded = folder.fold(site, body, spare) if spare else None
        if folded is None:
            write(site.address, body + padder.nops_for(spare))
        else:
            start, window = folded
            write(start, window)
            folds_done[site.address] = Folded(start, start + len(window), body, spare)
        by_kind[kind] += 1
        by_op.setdefault(qualname, Counter())[kind] += 1
    return PatchReport(
        sites=len(sites),
        by_kind=dict(sorted(by_kind.items())),
        by_op={name: dict(sorted(kinds.items())) for name, kinds in sorted(by_op.items())},
        table=dict(table),
        folded=folds_done,
    )


@functools.lru_cache(maxsize=256)
def _nops_for(padder: Padder, length: int) -> bytes:
    return padder._fill(length)


Piece = tuple[bytes, Sequence[tuple[int, int]]]


def _around(
    padder: Padder, shape: SiteShape, middle: Piece, saves: Sequence[int], pad_saves: bool = True
) -> list[Piece]:
    """A site's sequence with `middle` in place of the indirect call and only `saves` kept, as
    pieces for the padder (the pushes take no prefixes when `pad_saves` is off)."""
    pushes = [padder.whole(_push(r)) if pad_saves else (_push(r), ()) for r in saves]
    after = [padder.whole(shape.move)] if shape.move else []
    return [*pushes, middle, *after, *(padder.whole(_pop(r)) for r in reversed(saves))]


def _inline_covers_site(layer: ModuleType, code: bytes, site: SiteRecord, shape: SiteShape) -> bool:
    """Whether an inline template may replace the whole site, saves and restores included:
    it must write only registers the site may lose (its clobbers, less the saved registers,
    which the caller expects back) and leave a result where the site's move would put it."""
    if not shape.saves and not shape.move:
        return True  # the site is the call alone
    if shape.move and shape.move != b"\x48\x89\xc0":
        return False  # the result must reach another register than %rax
    written = template_writes(code)
    saved = _register_bits(layer, shape.saves)
    if written is None or saved is None:
        return False
    writes = _register_bits(layer, written)
    return writes is not None and writes & ~(site.clobbers & ~saved) == 0


def _decide(
    layer: ModuleType, op: Any, hypervisor: str, masked: frozenset[str], length: int, slot_symbol: str
) -> tuple[bytes, tuple[tuple[int, int], ...]] | tuple[str, str]:
    """The bytes to write and where they may take pad prefixes (inline, ud2 or nothing), or
    (kind, symbol) for a direct call or jump."""
    if not slot_symbol:
        return UD2, ()  # no implementation in this image: Linux patches a NULL op to ud2
    decision = layer.patch_decision(op.index, hypervisor, length, masked)
    if decision.kind in ("inline", "nop"):
        return bytes(decision.code), tuple(decision.pad)
    if decision.kind == "indirect":
        return ("indirect", "")
    return (decision.kind, slot_symbol if decision.kind in ("call", "jump") else str(decision.symbol))
