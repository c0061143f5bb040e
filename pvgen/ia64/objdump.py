"""Formats IA-64 code the way `ia64-linux-gnu-objdump -D -b binary -m ia64` prints it, for diffing.

objdump disassembles one slot per line: the bundle's bytes are shown six per line (slot 0 at +0,
slot 1 at +6, slot 2 at +0xc with the last four bytes), the first line of a bundle carries the
template in brackets, each line the predicate as "(pNN) " or six spaces, and ";;" follows the
instruction a stop comes after. In an MLX bundle the X instruction is printed at +6 and its ten
bytes run onto a continuation line. Branch targets are absolute addresses ("0x70"); an unknown slot
is "data8 0x..." with the raw 41 bits. Runs of zero bytes are elided as objdump does ("\t...").
"""

from __future__ import annotations

from pvgen.ia64.bundle import TEMPLATES
from pvgen.ia64.decoder import BundleLengthError, decode_word
from pvgen.ia64.insn import NO_PRED, AnyInstruction, Instruction, form_of, format_instruction

_BYTES_PER_LINE = 6
_SKIP_ZEROES = 16  # objdump sets skip_zeroes to 16 for ia64
_SKIP_ZEROES_AT_END = 3


def _address_width(end: int) -> int:
    """How many hex digits objdump keeps of a 16-digit address (leading zeros dropped in fours)."""
    digits = f"{end:016x}"
    zeros = len(digits) - len(digits.lstrip("0"))
    if zeros == 16:
        zeros = 15
    skip = (zeros - 1) & -4 if zeros else 0
    return 16 - skip


def _slot_text(word: int, slot_number: int, address: int) -> tuple[str, int]:
    """The text objdump prints for the slot at `address` in bundle `word`, and how many bytes it covers."""
    template, instructions = decode_word(word)
    info = TEMPLATES[template]
    prefix = f"[{info.name}] " if slot_number == 0 else "      "
    length = _BYTES_PER_LINE
    index = slot_number
    if info.units is not None and info.units[1] == "L" and slot_number >= 1:
        # objdump prints the X instruction at slot 1 and covers the rest of the bundle with it.
        length += _BYTES_PER_LINE
        slot_number, index = 2, 1
    if slot_number == 2:
        length += 16 - 3 * _BYTES_PER_LINE
    insn: AnyInstruction = instructions[index]
    if not isinstance(insn, Instruction):
        return prefix + "      " + str(insn), length
    form = form_of(insn)
    no_pred = form is not None and form.flags & NO_PRED
    predicate = "      " if no_pred or insn.qp == 0 else f"(p{insn.qp:02d}) "
    stop = ";;" if slot_number in info.stops else ""
    return prefix + predicate + format_instruction(insn, word_address(address)) + stop, length


def word_address(address: int) -> int:
    return address & ~0xF


def format_lines(data: bytes, address: int = 0) -> list[str]:
    """The disassembly lines (without objdump's header) for `data` loaded at `address`."""
    if len(data) % 16:
        raise BundleLengthError(len(data))
    width = _address_width(address + len(data))
    lines: list[str] = []
    offset, size = 0, len(data)
    while offset < size:
        zero_end = offset
        while zero_end < size and data[zero_end] == 0:
            zero_end += 1
        run = zero_end - offset
        if run >= _SKIP_ZEROES or (zero_end == size and 0 < run < _SKIP_ZEROES_AT_END):
            if zero_end != size:
                zero_end = offset + (run & ~3)
            lines.append("\t...")
            offset = zero_end
            continue
        bundle_start = offset & ~0xF
        word = int.from_bytes(data[bundle_start : bundle_start + 16], "little")
        text, length = _slot_text(word, (offset & 0xF) // _BYTES_PER_LINE, address + offset)
        length = min(length, size - offset)
        chunk = data[offset : offset + length]
        first = chunk[:_BYTES_PER_LINE]
        hexes = "".join(f"{b:02x} " for b in first)
        lines.append(f"{_address(address + offset, width)}:\t{hexes:<{3 * _BYTES_PER_LINE}}\t{text}")
        for more in range(_BYTES_PER_LINE, length, _BYTES_PER_LINE):
            rest = "".join(f"{b:02x} " for b in chunk[more : more + _BYTES_PER_LINE])
            lines.append(f"{_address(address + offset + more, width)}:\t{rest}")
        offset += length
    return lines


def _address(value: int, width: int) -> str:
    return f"{value:{width}x}"


def format_objdump(data: bytes, address: int = 0, *, name: str | None = None) -> str:
    """The whole objdump listing; with `name`, objdump's header for a file of that name comes first."""
    body = "".join(line + "\n" for line in format_lines(data, address))
    if name is None:
        return body
    header = f"\n{name}:     file format binary\n\n\nDisassembly of section .data:\n\n{address:016x} <.data>:\n"
    return header + body


def format_instruction_line(insn: AnyInstruction, address: int = 0) -> str:
    """One instruction as objdump shows it after the predicate column: "(p06) ld8 r8=[r9]"."""
    if not isinstance(insn, Instruction):
        return str(insn)
    predicate = f"(p{insn.qp:02d}) " if insn.qp else ""
    return predicate + format_instruction(insn, address)


__all__ = ["form_of", "format_instruction_line", "format_lines", "format_objdump"]
