"""Template assembly: asm implementations to verified bytes, one assembler run per arch, cached by text."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from pvgen import ir
from pvgen.diagnostics import Diagnostics, Note
from pvgen.source import SourceSpan

CACHE_FORMAT = 1
# What to install when an assembler is missing (Debian package names).
PACKAGES = {"as": "binutils", "ia64-linux-gnu-as": "binutils-ia64-linux-gnu"}
_SECTION = ".pvgen.t"
IDENTITY = "(identity)"  # owner name of an arch's identity template
_X86_SIZE_SUFFIXES = ("b", "w", "l", "q")
# GNU as pseudo-ops that objdump prints under their real names.
_IA64_ALIASES = {"shl": "dep", "shr": "extr", "mov": "mov", "movl": "movl"}
_IA64_NOP = re.compile(r"^nop(\.[mifbx])?$")
# IA64 relocations the patcher knows how to fix: an IP-relative brl (paravirt_patch_reloc_brl).
_IA64_RELOCATABLE = {"R_IA64_PCREL60B": "brl"}


@attrs.frozen
class Request:
    """One asm implementation to assemble: an op (or variant) under one hypervisor."""

    arch: str
    hypervisor: str
    owner: str
    text: str
    clobbers: tuple[str, ...]
    span: SourceSpan
    constants: tuple[ir.Constant, ...]
    out_of_line: bool


@attrs.frozen
class Assembled:
    """What the assembler and decoder make of one text: cached across builds."""

    code: bytes
    instructions: tuple[str, ...]
    written: tuple[str, ...]
    relocations: tuple[ir.Relocation, ...]
    problems: tuple[str, ...]  # decode problems found once (undecodable bytes, stray PC-relative use)
    # (offset, length, legacy prefixes) of each instruction that may take more redundant prefixes:
    # none carries a segment override, and the template has no relative branch to shift.
    prefixable: tuple[tuple[int, int, int], ...] = ()


def requests(spec: ir.Spec) -> list[Request]:
    """Every asm implementation of every op and variant, per hypervisor, in a fixed order."""
    arches = {a.name: a for a in spec.arches}
    hypervisors = {h.name: h for h in spec.hypervisors}
    found: list[Request] = []
    for arch in spec.arches:
        if arch.identity is not None:
            found.append(
                Request(arch.name, ir.NATIVE, IDENTITY, arch.identity, arch.returns, arch.span, arch.constants, False)
            )
    for op in spec.ops():
        owners = [(op.qualname, op.impls, op.clobbers)]
        owners += [(f"{op.qualname}[{v.name}]", v.impls, v.clobbers) for v in op.variants]
        for owner, impls, clobbers in owners:
            for impl in impls:
                if impl.kind != ir.IMPL_ASM or impl.text is None:
                    continue
                constants = arches[op.arch].constants + hypervisors[impl.hypervisor].constants
                found.append(
                    Request(
                        op.arch, impl.hypervisor, owner, impl.text, clobbers, impl.span, constants, impl.out_of_line
                    )
                )
    return found


class TemplateCache:
    """Assembled bytes keyed by arch, assembler command and text, kept in a committed JSON file.

    A text that was assembled once is never assembled again, so a machine without the IA64
    cross binutils can still build an unchanged spec.
    """

    def __init__(self, entries: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        self.entries = entries or {}
        self.used: set[tuple[str, str, str]] = set()

    @classmethod
    def load(cls, path: Path) -> TemplateCache:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(document, dict) or document.get("format") != CACHE_FORMAT:
            return cls()
        return cls(document.get("templates", {}))

    def get(self, arch: str, assembler: str, text: str) -> Assembled | None:
        entry = self.entries.get(f"{arch} {assembler}", {}).get(text)
        try:
            assembled = Assembled(
                bytes.fromhex(entry["hex"]),
                tuple(entry["instructions"]),
                tuple(entry["written"]),
                tuple(ir.Relocation(r["offset"], r["kind"], r["symbol"]) for r in entry["relocations"]),
                tuple(entry["problems"]),
                tuple((int(offset), int(size), int(prefixes)) for offset, size, prefixes in entry["prefixable"]),
            )
        except (KeyError, TypeError, ValueError):
            # Never seen, cached before pvgen recorded where prefixes may go, or an entry edited
            # by hand: a miss, so the text is assembled again rather than trusted.
            return None
        self.used.add((arch, assembler, text))
        return assembled

    def put(self, arch: str, assembler: str, text: str, assembled: Assembled) -> None:
        self.entries.setdefault(f"{arch} {assembler}", {})[text] = {
            "hex": assembled.code.hex(),
            "instructions": list(assembled.instructions),
            "written": list(assembled.written),
            "relocations": [attrs.asdict(r) for r in assembled.relocations],
            "problems": list(assembled.problems),
            "prefixable": [list(p) for p in assembled.prefixable],
        }
        self.used.add((arch, assembler, text))

    def to_json(self) -> str:
        """Only the entries this build used, sorted: the file changes only when the templates do."""
        kept: dict[str, dict[str, Any]] = {}
        for arch, assembler, text in sorted(self.used):
            key = f"{arch} {assembler}"
            kept.setdefault(key, {})[text] = self.entries[key][text]
        return json.dumps({"format": CACHE_FORMAT, "templates": kept}, indent=1, sort_keys=True) + "\n"


class Assembler:
    """Runs one assembler over many templates and decodes what it produced."""

    def __init__(self, arch: ir.Arch) -> None:
        self.arch = arch
        self.command = arch.assembler.split()
        self.prefix = self.command[0][: -len("as")] if self.command[0].endswith("as") else ""

    def missing_tool(self) -> str | None:
        for tool in (self.command[0], self.prefix + "objdump"):
            if shutil.which(tool) is None:
                package = PACKAGES.get(self.command[0], "binutils")
                return f"'{tool}' is not installed; install the Debian package {package}"
        return None

    def source(self, texts: list[tuple[str, tuple[ir.Constant, ...]]]) -> tuple[str, list[int]]:
        lines: list[str] = []
        starts: list[int] = []
        for index, (text, constants) in enumerate(texts):
            lines.append(f'.section {_SECTION}{index},"ax",@progbits')
            lines += [f".set {c.name}, {c.value:#x}" for c in constants]
            starts.append(len(lines) + 1)
            lines += text.split("\n")
        return "\n".join(lines) + "\n", starts

    def run(self, texts: list[tuple[str, tuple[ir.Constant, ...]]]) -> tuple[list[Assembled | str], str | None]:
        """Assembles every text in one run. Per text: the result, or the assembler's complaint."""
        source, starts = self.source(texts)
        with tempfile.TemporaryDirectory(prefix="pvgen-as-") as scratch:
            work = Path(scratch)
            (work / "t.s").write_text(source)
            result = subprocess.run(
                [*self.command, "-o", str(work / "t.o"), str(work / "t.s")], capture_output=True, text=True
            )
            if result.returncode != 0:
                return self._complaints(result.stderr, starts, len(texts)), None
            sections, relocations = _read_object(work / "t.o", len(texts))
            listing = None
            if self.arch.isa != "x86_64":
                dump = subprocess.run(
                    [self.prefix + "objdump", "-d", str(work / "t.o")], capture_output=True, text=True, check=False
                )
                listing = _ia64_listing(dump.stdout)
        out: list[Assembled | str] = []
        for index in range(len(texts)):
            code = sections.get(index, b"")
            relocs = relocations.get(index, [])
            if self.arch.isa == "x86_64":
                out.append(_decode_x86(code, relocs, self.arch))
            else:
                out.append(_decode_ia64(code, relocs, (listing or {}).get(index, []), self.arch))
        return out, _version(self.command[0])

    @staticmethod
    def _complaints(stderr: str, starts: list[int], count: int) -> list[Assembled | str]:
        complaints: dict[int, list[str]] = {}
        for match in re.finditer(r"^[^:\n]*:(\d+): (?:Error|Warning): (.*)$", stderr, re.M):
            line = int(match.group(1))
            index = max((i for i, start in enumerate(starts) if start <= line), default=0)
            complaints.setdefault(index, []).append(match.group(2).strip())
        if not complaints:
            complaints[0] = [stderr.strip() or "the assembler failed"]
        return ["; ".join(complaints[i]) if i in complaints else "" for i in range(count)]


def _version(tool: str) -> str | None:
    try:
        first = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return None
    return first[0] if first else None


def _read_object(path: Path, count: int) -> tuple[dict[int, bytes], dict[int, list[tuple[int, str, str]]]]:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    sections: dict[int, bytes] = {}
    relocations: dict[int, list[tuple[int, str, str]]] = {}
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        symbols = elf.get_section_by_name(".symtab")
        for section in elf.iter_sections():
            name = section.name
            if name.startswith(_SECTION):
                sections[int(name[len(_SECTION) :])] = section.data()
            elif isinstance(section, RelocationSection):
                target = name.split(_SECTION, 1)
                if len(target) != 2 or not target[1].isdigit():
                    continue
                entries = []
                for relocation in section.iter_relocations():
                    symbol = symbols.get_symbol(relocation["r_info_sym"]) if symbols else None
                    kind = _relocation_name(elf, relocation["r_info_type"])
                    entries.append((relocation["r_offset"], kind, symbol.name if symbol else "?"))
                relocations[int(target[1])] = entries
    del count
    return sections, relocations


def _relocation_name(elf: Any, number: int) -> str:
    if elf["e_machine"] == "EM_IA_64":
        names = {0x48: "R_IA64_PCREL60B", 0x49: "R_IA64_PCREL21B", 0x4A: "R_IA64_PCREL21M", 0x4B: "R_IA64_PCREL21F"}
        return names.get(number, f"R_IA64_{number:#x}")
    from elftools.elf.enums import ENUM_RELOC_TYPE_x64

    names = {value: key for key, value in ENUM_RELOC_TYPE_x64.items()}
    return names.get(number, f"R_X86_64_{number}")


_X86_WIDE = {}
for _wide in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp"):
    for _form in (f"r{_wide}", f"e{_wide}", _wide):
        _X86_WIDE[_form] = f"r{_wide}"
for _low, _wide in (
    ("al", "rax"),
    ("ah", "rax"),
    ("bl", "rbx"),
    ("bh", "rbx"),
    ("cl", "rcx"),
    ("ch", "rcx"),
    ("dl", "rdx"),
    ("dh", "rdx"),
    ("sil", "rsi"),
    ("dil", "rdi"),
    ("bpl", "rbp"),
    ("spl", "rsp"),
):
    _X86_WIDE[_low] = _wide
for _n in range(8, 16):
    for _suffix in ("", "d", "w", "b"):
        _X86_WIDE[f"r{_n}{_suffix}"] = f"r{_n}"


def _decode_x86(code: bytes, relocs: list[tuple[int, str, str]], arch: ir.Arch) -> Assembled:
    import capstone
    from capstone import x86_const

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.syntax = capstone.CS_OPT_SYNTAX_ATT
    md.detail = True
    instructions: list[str] = []
    written: set[str] = set()
    problems: list[str] = []
    prefixable: list[tuple[int, int, int]] = []
    relative_branch = False
    decoded = 0
    for insn in md.disasm(code, 0):
        decoded = insn.address + insn.size
        raw = bytes(insn.bytes)
        if takes_pad_prefix(raw):
            prefixable.append((insn.address, insn.size, legacy_prefix_count(raw)))
        instructions.append(f"{insn.mnemonic} {insn.op_str}".strip())
        _, writes = insn.regs_access()
        for reg in writes:
            name = _X86_WIDE.get(insn.reg_name(reg))
            if name is not None and name in arch.registers and name not in ("rsp",):
                written.add(name)
        for operand in insn.operands:
            if operand.type == x86_const.X86_OP_MEM and operand.mem.base == x86_const.X86_REG_RIP:
                problems.append(f"'{instructions[-1]}' is RIP-relative, and the patcher does not relocate it")
        if insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_CALL):
            target = insn.operands[0] if insn.operands else None
            if target is not None and target.type == x86_const.X86_OP_IMM:
                relative_branch = True  # a prefix between it and its target would move the target
                if not 0 <= target.imm <= len(code):
                    problems.append(
                        f"'{instructions[-1]}' branches outside the template, and the patcher does not relocate it"
                    )
    if decoded != len(code):
        problems.append(f"bytes {code[decoded:].hex()} at offset {decoded} do not decode")
    for offset, kind, symbol in relocs:
        problems.append(_unrelocated(symbol, kind, offset))
    return _assembled(arch, code, instructions, written, [], problems, () if relative_branch else prefixable)


# Legacy prefix bytes (lock/rep, segment overrides, operand and address size).
LEGACY_PREFIXES = bytes.fromhex("f0 f2 f3 2e 36 3e 26 64 65 66 67")
_SEGMENT_OVERRIDES = frozenset(b"\x2e\x36\x3e\x26\x64\x65")
_VEX_ESCAPES = frozenset(b"\xc4\xc5\x62")


def legacy_prefix_count(instruction: bytes) -> int:
    """How many legacy prefix bytes an x86 instruction starts with."""
    return len(instruction) - len(instruction.lstrip(LEGACY_PREFIXES))


def takes_pad_prefix(instruction: bytes) -> bool:
    """Whether a redundant segment override may go in front of an x86 instruction: not when it
    has a segment override already (the last of two is the one that counts) nor before a
    VEX or EVEX escape (c4, c5, 62 in 64-bit mode), which must follow the legacy prefixes
    directly."""
    legacy = legacy_prefix_count(instruction)
    rest = instruction[legacy:]
    if _SEGMENT_OVERRIDES.intersection(instruction[:legacy]) or not rest:
        return False
    return rest[0] not in _VEX_ESCAPES


def _ia64_listing(text: str) -> dict[int, list[str]]:
    """Instruction text per template section from `objdump -d`."""
    listing: dict[int, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        header = re.match(rf"Disassembly of section {re.escape(_SECTION)}(\d+):", line)
        if header:
            current = listing.setdefault(int(header.group(1)), [])
            continue
        if current is None or "\t" not in line or not re.match(r"\s*[0-9a-f]+:", line):
            continue
        body = line.rsplit("\t", 1)[-1].strip()
        body = re.sub(r"^\[[A-Z]+\]\s*", "", body)
        if body and not re.fullmatch(r"([0-9a-f]{2} ?)+", body):  # the L slot's bytes on their own line
            current.append(body)
    return listing


_IA64_REGISTER = re.compile(r"\b(r\d+|p\d+|b\d+|ar\.ccv|gp|sp|tp|rp)\b")
_IA64_NAMES = {"gp": "r1", "sp": "r12", "tp": "r13", "rp": "b0"}


def _ia64_writes(insn: str) -> set[str]:
    body = re.sub(r"^\(p\d+\)\s*", "", insn).rstrip(";").strip()
    mnemonic, _, operands = body.partition(" ")
    if "=" not in operands:
        return set()
    left, right = operands.split("=", 1)
    writes = set()
    if "[" not in left:
        writes |= {_IA64_NAMES.get(r, r) for r in _IA64_REGISTER.findall(left)}
    base = re.search(r"\[(r\d+)\]", operands)
    if base and re.search(r"\],\s*-?\w+", right + "," if "[" in left else right):
        if re.search(r"\]\s*,", operands) or re.search(r",\s*-?(0x[0-9a-f]+|\d+)$", right):
            writes.add(base.group(1))
    del mnemonic
    return writes


def _decode_ia64(code: bytes, relocs: list[tuple[int, str, str]], listing: list[str], arch: ir.Arch) -> Assembled:
    problems: list[str] = []
    written: set[str] = set()
    for insn in listing:
        if "unknown" in insn.split(" ")[0]:
            problems.append(f"'{insn}' does not decode")
        written |= {r for r in _ia64_writes(insn) if r in arch.registers}
    relocations = []
    for offset, kind, symbol in relocs:
        if kind in _IA64_RELOCATABLE:
            # The tag of an MLX bundle's L slot: bundle address | 1 (paravirt_patch_reloc_brl).
            relocations.append(ir.Relocation((offset & ~0xF) | 1, _IA64_RELOCATABLE[kind], symbol))
        else:
            problems.append(_unrelocated(symbol, kind, offset))
    return _assembled(arch, code, listing, written, relocations, problems)


def _unrelocated(symbol: str, kind: str, offset: int) -> str:
    return f"it refers to '{symbol}' ({kind} at offset {offset}), which the patcher does not relocate"


def _assembled(
    arch: ir.Arch,
    code: bytes,
    instructions: Iterable[str],
    written: set[str],
    relocations: list[ir.Relocation],
    problems: list[str],
    prefixable: Iterable[tuple[int, int, int]] = (),
) -> Assembled:
    """One text's result, with written registers in the arch's order and each problem once."""
    order = {r: i for i, r in enumerate(arch.registers)}
    return Assembled(
        code,
        tuple(instructions),
        tuple(sorted(written, key=order.__getitem__)),
        tuple(relocations),
        tuple(dict.fromkeys(problems)),
        tuple(prefixable),
    )


def pad_room(arch: ir.Arch, prefixable: Iterable[tuple[int, int, int]]) -> tuple[tuple[int, int], ...]:
    """Where a patcher may insert the arch's pad prefix in a template, and how many at each place:
    up to the per-instruction limit, counting the prefixes an instruction already has, and never
    past the longest instruction the ISA decodes."""
    if arch.pad_prefix is None:
        return ()
    rooms = ((offset, prefix_room(arch.pad_prefix_limit, size, prefixes)) for offset, size, prefixes in prefixable)
    return tuple((offset, room) for offset, room in rooms if room > 0)


def prefix_room(limit: int, size: int, prefixes: int) -> int:
    """How many pad prefixes an instruction of `size` bytes with `prefixes` legacy prefixes may
    take: up to the per-instruction limit, and never past the longest instruction x86 decodes."""
    return max(0, min(limit - prefixes, ir.X86_MAX_INSTRUCTION - size))


def declared_mnemonics(arch: str, text: str) -> list[str]:
    """The instructions a template's text asks for, by mnemonic."""
    found = []
    for statement in re.split(r";|\n", text):
        statement = statement.strip()
        statement = re.sub(r"^\[\w+:\]\s*", "", statement)  # IA64 tag
        statement = re.sub(r"^\w+:\s*", "", statement)  # label
        statement = re.sub(r"^\(p\d+\)\s*", "", statement)  # qualifying predicate
        statement = statement.strip("{} \t")
        if not statement or statement.startswith((".", "//", "#")):
            continue
        found.append(statement.split()[0].lower())
    return found


def _mnemonics_match(arch: str, declared: list[str], decoded: list[str]) -> bool:
    if arch == "x86_64":
        got = [d.split()[0] for d in decoded]
        if len(got) != len(declared):
            return False
        return all(
            d == g or g in (d + s for s in _X86_SIZE_SUFFIXES) or d in (g + s for s in _X86_SIZE_SUFFIXES)
            for d, g in zip(declared, got, strict=True)
        )

    def base(word: str) -> str:
        stem = word.split(".")[0]
        return _IA64_ALIASES.get(stem, stem)

    want = [base(d) for d in declared if not _IA64_NOP.match(d)]
    got = [base(re.sub(r"^\(p\d+\)\s*", "", d).split()[0]) for d in decoded]
    got = [
        g for g, d in zip(got, decoded, strict=True) if not _IA64_NOP.match(re.sub(r"^\(p\d+\)\s*", "", d).split()[0])
    ]
    return want == got


def assemble(spec: ir.Spec, cache: TemplateCache, diagnostics: Diagnostics, verify: bool = True) -> ir.Build | None:
    """Assembles (or takes from the cache) and verifies every template; None on any error.

    `verify=False` keeps templates that fail verification (for testing the generated suites,
    which must catch the same mistakes on the machine models).
    """
    arches = {a.name: a for a in spec.arches}
    wanted = requests(spec)
    results: dict[tuple[str, str], Assembled] = {}
    versions: dict[str, str] = {}
    for arch_name in sorted({r.arch for r in wanted}):
        arch = arches[arch_name]
        texts: dict[str, tuple[ir.Constant, ...]] = {}
        first_use: dict[str, SourceSpan] = {}
        for request in wanted:
            if request.arch != arch_name:
                continue
            key_text = _keyed_text(request)
            cached = cache.get(arch_name, arch.assembler, key_text)
            if cached is not None:
                results[(arch_name, key_text)] = cached
            else:
                texts.setdefault(key_text, request.constants)
                first_use.setdefault(key_text, request.span)
        if not texts:
            continue
        assembler = Assembler(arch)
        missing = assembler.missing_tool()
        if missing:
            span = min(first_use.values())
            diagnostics.error(
                span,
                f"{len(texts)} template(s) of {arch_name} need assembling, but {missing}",
                Note(f"the assembler is declared by arch '{arch_name}'", arch.span),
            )
            continue
        order = sorted(texts)
        outcome, version = assembler.run([(text, texts[text]) for text in order])
        if version:
            versions[arch_name] = version
        for text, result in zip(order, outcome, strict=True):
            if isinstance(result, str):
                if result:
                    diagnostics.error(first_use[text], f"the assembler rejects this template: {result}")
                continue
            cache.put(arch_name, arch.assembler, text, result)
            results[(arch_name, text)] = result
    if diagnostics:
        return None
    templates = []
    unchecked = Diagnostics()
    for request in wanted:
        result = results[(request.arch, _keyed_text(request))]
        template = _verify(request, result, arches[request.arch], diagnostics if verify else unchecked)
        templates.append(template)
    if diagnostics:
        return None
    templates.sort(key=lambda t: (t.arch, t.owner, t.hypervisor))
    return ir.Build(spec, tuple(templates), tuple(sorted(versions.items())))


def _keyed_text(request: Request) -> str:
    """The cache key: the text plus the constants it is assembled with."""
    if not request.constants:
        return request.text
    prefix = "".join(f".set {c.name}, {c.value:#x}\n" for c in request.constants)
    return prefix + request.text


def _verify(request: Request, result: Assembled, arch: ir.Arch, diagnostics: Diagnostics) -> ir.Template:
    where = f"template of '{request.owner}' for {request.hypervisor}"
    for problem in result.problems:
        diagnostics.error(request.span, f"{where}: {problem}")
    declared = declared_mnemonics(arch.isa, request.text)
    if not _mnemonics_match(arch.isa, declared, list(result.instructions)):
        diagnostics.error(
            request.span,
            f"{where} decodes to [{'; '.join(result.instructions)}], not to the declared [{'; '.join(declared)}]",
        )
    fits = len(result.code) <= arch.site_size
    if not fits and not request.out_of_line:
        unit = "bundles" if arch.isa == "ia64" else "bytes"
        size = len(result.code) // 16 if arch.isa == "ia64" else len(result.code)
        limit = arch.site_size // 16 if arch.isa == "ia64" else arch.site_size
        diagnostics.error(request.span, f"{where} is {size} {unit}, but a call site holds {limit}")
    extra = [r for r in result.written if r not in request.clobbers]
    if extra:
        diagnostics.error(
            request.span,
            f"{where} writes {', '.join(extra)}, outside the op's clobbers ({', '.join(request.clobbers) or 'none'})",
        )
    return ir.Template(
        arch=request.arch,
        hypervisor=request.hypervisor,
        owner=request.owner,
        text=request.text,
        code=result.code,
        instructions=result.instructions,
        written=result.written,
        relocations=result.relocations,
        fits_site=fits,
        out_of_line=request.out_of_line,
        span=request.span,
        pad_room=pad_room(arch, result.prefixable),
    )


def all_templates(build: ir.Build) -> Iterable[ir.Template]:
    return build.templates
