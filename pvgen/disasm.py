"""Disassembly text for `pvgen disasm --arch {x86_64,ia64}`: one instruction per line with address and bytes.

x86_64 goes through capstone in AT&T syntax; ia64 through `pvgen.ia64.objdump`, which prints what
`ia64-linux-gnu-objdump -D -b binary -m ia64` prints for the same bytes.
"""

from __future__ import annotations

ARCHES = ("ia64", "x86_64")


def _x86_64(data: bytes, address: int) -> str:
    import capstone  # type: ignore[import-untyped]

    engine = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    engine.syntax = capstone.CS_OPT_SYNTAX_ATT
    engine.skipdata = True  # undecodable bytes become ".byte" lines instead of ending the listing
    width = max(4, len(f"{address + len(data):x}"))
    lines = []
    for insn in engine.disasm(data, address):
        raw = " ".join(f"{b:02x}" for b in insn.bytes)
        text = f"{insn.mnemonic} {insn.op_str}".rstrip()
        lines.append(f"{insn.address:{width}x}:\t{raw:<21}\t{text}")
    return "".join(line + "\n" for line in lines)


def disasm_command(data: bytes, arch: str, address: int = 0) -> str:
    """The listing `pvgen disasm --arch ARCH` prints for `data` loaded at `address`.

    Raises ValueError for an unknown arch, and for ia64 input that is not a whole number of bundles
    (`pvgen.ia64.decoder.BundleLengthError`, which carries the offset of the partial bundle).
    """
    if arch == "x86_64":
        return _x86_64(data, address)
    if arch == "ia64":
        from pvgen.ia64.objdump import format_objdump

        return format_objdump(data, address)
    raise ValueError(f"unknown arch {arch!r}; expected one of: {', '.join(ARCHES)}")
