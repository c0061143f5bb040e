"""The asm macro backend: its headers assemble in every mode, x86 sites match the IR, IA64
instances differ as they should, pvchk rejects raw sensitive instructions, and goldens."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pvgen import ir
from pvgen.backends.asm_macros import AsmMacroBackend
from pvgen.cli import load_and_check
from tests.conftest import ROOT, check_golden

DATA = ROOT / "tests" / "data" / "asm"
GOLDEN = ROOT / "tests" / "golden" / "asm"
ENTRY_X86 = DATA / "entry_x86.S"
IVT_LIKE = DATA / "ivt_like.S"
RAW_RSM = DATA / "raw_rsm.S"

X86 = "x86_64"
IA64 = "ia64"
SITE_RECORD = 16
IA64_INSTANCES = ("native", "xen", "pvchk")
# Privileged IA64 instructions and registers as objdump prints them.
IA64_SENSITIVE = re.compile(r"\b(rfi|thash|ttag|itc\.[id]|ptc\.\w+|rsm|ssm|bsw\.[01]|cover|fc)\b|cr\.\w+|=psr\b")
IA64_HYPERPRIVOP = re.compile(r"\bbreak(\.[mib])?\s+0x([0-9a-f]+)\b")


@dataclass(frozen=True)
class Rendered:
    spec: ir.Spec
    outputs: dict[str, str]
    root: Path  # where the outputs were written


def _render(paths: list[str]) -> tuple[ir.Spec, dict[str, str]]:
    with contextlib.chdir(ROOT):  # back-references are relative to the working directory
        spec, _, diagnostics = load_and_check(paths)
    assert spec is not None, diagnostics
    outputs = AsmMacroBackend().render(ir.Build(spec, (), ()), sorted(spec.files))
    return spec, {output.path: output.text for output in outputs}


def _write(outputs: dict[str, str], root: Path) -> None:
    for path, text in outputs.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The headers of spec/, rendered fresh (not read from generated/)."""
    spec, outputs = _render(["spec"])
    root = tmp_path_factory.mktemp("generated")
    _write(outputs, root)
    return Rendered(spec, outputs, root)


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found; install the Debian package {package}")
    return path


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)


def _macros(spec: ir.Spec, arch: str) -> dict[str, ir.Macro]:
    return {m.name: m for m in spec.macros if m.arch == arch}


def _uses(source: Path, names: set[str]) -> list[tuple[str, str | None]]:
    """Macro uses in a .S file, in order: (name, argument text or None)."""
    text = re.sub(r"/\*.*?\*/", "", source.read_text(), flags=re.S)
    found = re.finditer(r"\b([A-Z][A-Z0-9_]*)\b(?:\(([^)]*)\))?", text)
    return [(m.group(1), m.group(2)) for m in found if m.group(1) in names]


# --- x86-64 ---------------------------------------------------------------------------


def _x86_object(real: Rendered, tmp_path: Path, *defines: str, source: Path = ENTRY_X86) -> Path:
    gcc = _tool("gcc", "gcc")
    _tool("as", "binutils")
    obj = tmp_path / (source.stem + "".join(defines) + ".o")
    include = real.root / "asm" / X86
    result = _run(gcc, "-c", "-x", "assembler-with-cpp", *defines, "-I", include, source, "-o", obj)
    assert result.returncode == 0, result.stderr
    return obj


def _clobber_values(arch: ir.Arch) -> dict[str, int]:
    values = {f"CLBR_{reg.upper()}": 1 << bit for reg, bit in arch.clobber_bits}
    values["CLBR_NONE"] = 0
    values["CLBR_ANY"] = sum(1 << bit for _, bit in arch.clobber_bits)
    return values


@dataclass(frozen=True)
class ExpectedSite:
    macro: str
    op: ir.Op
    clobbers: int  # the record's clobbers field
    saved: tuple[str, ...]  # registers pushed before the site, in order


def _expected_sites(spec: ir.Spec) -> list[ExpectedSite]:
    """What each paravirt site of entry_x86.S must be, from the IR alone."""
    arch = next(a for a in spec.arches if a.name == X86)
    ops = {op.qualname: op for op in spec.ops(X86)}
    macros = _macros(spec, X86)
    values = _clobber_values(arch)
    bits = dict(arch.clobber_bits)
    expected = []
    for name, argument in _uses(ENTRY_X86, set(macros)):
        macro = macros[name]
        if macro.via is None:
            continue
        op = ops[macro.via]
        kinds = [p.kind for p in macro.params]
        allowed = 0
        output = None
        if "clobbers" in kinds:
            assert argument is not None
            allowed = sum(values[word.strip()] for word in argument.split("|"))
        elif "gr" in kinds:
            assert argument is not None
            output = argument.strip().lstrip("%")
        op_bits = sum(1 << bits[r] for r in op.clobbers if r in bits)
        saved: tuple[str, ...] = ()
        if op.transfer == "call":
            saved = tuple(r for r in op.clobbers if not (r in bits and allowed & (1 << bits[r])) and r != output)
        expected.append(ExpectedSite(name, op, op_bits | allowed, saved))
    return expected


def _text_symbols(elf: Any) -> set[str]:
    """The symbols .text refers to through relocations."""
    symtab = elf.get_section_by_name(".symtab")
    return {symtab.get_symbol(r["r_info_sym"]).name for r in elf.get_section_by_name(".rela.text").iter_relocations()}


def test_x86_uses_every_macro(real: Rendered) -> None:
    macros = _macros(real.spec, X86)
    assert {name for name, _ in _uses(ENTRY_X86, set(macros))} == set(macros)


def test_x86_paravirt_sites_match_the_ir(real: Rendered, tmp_path: Path) -> None:
    elffile = pytest.importorskip("elftools.elf.elffile", reason="pyelftools missing (Debian: python3-pyelftools)")
    capstone = pytest.importorskip("capstone", reason="capstone missing (Debian: python3-capstone)")
    obj = _x86_object(real, tmp_path)
    arch = next(a for a in real.spec.arches if a.name == X86)
    expected = _expected_sites(real.spec)
    with obj.open("rb") as stream:
        elf = elffile.ELFFile(stream)
        text = elf.get_section_by_name(".text").data()
        sites = elf.get_section_by_name(".pvgen.sites")
        assert sites is not None and sites["sh_addralign"] >= 8
        data = sites.data()
        symtab = elf.get_section_by_name(".symtab")

        def relocations(name: str) -> dict[int, tuple[str, int, int]]:
            found = {}
            for reloc in elf.get_section_by_name(name).iter_relocations():
                symbol = symtab.get_symbol(reloc["r_info_sym"])
                label = symbol.name or elf.get_section(symbol["st_shndx"]).name
                found[reloc["r_offset"]] = (label, reloc["r_addend"], reloc["r_info_type"])
            return found

        site_relocs = relocations(".rela.pvgen.sites")
        text_relocs = relocations(".rela.text")
    assert len(data) == SITE_RECORD * len(expected)
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    instructions = list(decoder.disasm(text, 0))
    starts = [i.address for i in instructions]
    for number, site in enumerate(expected):
        record = data[number * SITE_RECORD : (number + 1) * SITE_RECORD]
        label, start, kind = site_relocs[number * SITE_RECORD]
        assert (label, kind) == (".text", 1), site  # R_X86_64_64 against the site
        index, length, clobbers = record[8], record[9], int.from_bytes(record[10:12], "little")
        assert (index, clobbers) == (site.op.index, site.clobbers), site
        assert record[12:] == bytes(4)
        # The site is the whole sequence (PARA_SITE): the saves, the indirect call, the move
        # of a result, the restores; nothing more the op may clobber is saved outside it.
        position = starts.index(start)
        before = instructions[position : position + len(site.saved)]
        assert [f"{i.mnemonic} {i.op_str}" for i in before] == [f"push {r}" for r in site.saved], site
        previous = instructions[position - 1] if position else None
        assert previous is None or not (previous.mnemonic == "push" and previous.op_str in site.op.clobbers), site
        call = instructions[position + len(site.saved)]
        opcode = b"\xff\x25" if site.op.transfer == "jump" else b"\xff\x15"
        assert text[call.address : call.address + 2] == opcode, site
        assert text_relocs[call.address + 2] == ("pv_ops", site.op.index * arch.pointer_size - 4, 2), site  # PC32
        assert call.size == arch.site_size, site
        after = instructions[position + len(site.saved) + 1 :]
        if after and after[0].mnemonic == "mov" and after[0].op_str.endswith(", rax"):
            after = after[1:]  # GET_CR2_INTO: the result moves to the output register first
        popped = after[: len(site.saved)]
        assert [f"{i.mnemonic} {i.op_str}" for i in popped] == [f"pop {r}" for r in reversed(site.saved)], site
        end = popped[-1].address + popped[-1].size if popped else call.address + call.size
        assert length == end - start, site


def test_x86_native_mode_has_no_sites(real: Rendered, tmp_path: Path) -> None:
    elffile = pytest.importorskip("elftools.elf.elffile", reason="pyelftools missing (Debian: python3-pyelftools)")
    capstone = pytest.importorskip("capstone", reason="capstone missing (Debian: python3-capstone)")
    obj = _x86_object(real, tmp_path, "-DPVGEN_NATIVE")
    with obj.open("rb") as stream:
        elf = elffile.ELFFile(stream)
        assert elf.get_section_by_name(".pvgen.sites") is None
        text = elf.get_section_by_name(".text").data()
        symbols = _text_symbols(elf)
    assert symbols == {"do_syscall_64", "do_page_fault"}
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    mnemonics = [i.mnemonic for i in decoder.disasm(text, 0)]
    uses = [name for name, _ in _uses(ENTRY_X86, set(_macros(real.spec, X86)))]
    assert b"\xfa" in text  # DISABLE_INTERRUPTS: cli
    assert mnemonics.count("cli") == uses.count("DISABLE_INTERRUPTS")
    assert mnemonics.count("sti") == uses.count("ENABLE_INTERRUPTS")
    assert mnemonics.count("iretq") == uses.count("INTERRUPT_RETURN")
    assert mnemonics.count("sysretq") == uses.count("USERGS_SYSRET64")
    assert mnemonics.count("pushfq") == uses.count("SAVE_FLAGS")
    swapgs = ("SWAPGS", "SWAPGS_UNSAFE_STACK", "USERGS_SYSRET64")
    assert mnemonics.count("swapgs") == sum(uses.count(name) for name in swapgs)


def test_x86_xen_instance_calls_the_xen_entry_points(real: Rendered, tmp_path: Path) -> None:
    elffile = pytest.importorskip("elftools.elf.elffile", reason="pyelftools missing (Debian: python3-pyelftools)")
    obj = _x86_object(real, tmp_path, "-DPVGEN_INSTANCE_XEN")
    with obj.open("rb") as stream:
        elf = elffile.ELFFile(stream)
        assert elf.get_section_by_name(".pvgen.sites") is None
        symbols = _text_symbols(elf)
    xen = {
        target
        for macro in _macros(real.spec, X86).values()
        for expansion in macro.expansions
        if expansion.hypervisor == "xen"
        for target in re.findall(r"\b(?:call|jmp)\s+(\w+)", expansion.text)
    }
    assert xen and symbols == xen | {"do_syscall_64", "do_page_fault"}


def test_x86_kvm_instance_assembles(real: Rendered, tmp_path: Path) -> None:
    _x86_object(real, tmp_path, "-DPVGEN_INSTANCE_KVM")


def test_x86_two_instances_are_an_error(real: Rendered, tmp_path: Path) -> None:
    gcc = _tool("gcc", "gcc")
    include = real.root / "asm" / X86
    both = ("-DPVGEN_NATIVE", "-DPVGEN_INSTANCE_XEN")
    result = _run(gcc, "-c", "-x", "assembler-with-cpp", *both, "-I", include, ENTRY_X86, "-o", tmp_path / "both.o")
    assert result.returncode != 0 and "choose at most one pv instance" in result.stderr


def test_x86_header_constants_follow_the_ir(real: Rendered) -> None:
    header = real.outputs[f"asm/{X86}/pvops_asm.h"]
    arch = next(a for a in real.spec.arches if a.name == X86)
    defines = dict(re.findall(r"^#define (\w+)\s+(\S+)", header, flags=re.M))
    for name, value in _clobber_values(arch).items():
        assert int(defines[name], 16) == value
    assert int(defines["CLBR_CALLEE_SAVE"], 16) == _clobber_values(arch)["CLBR_ANY"] & ~1  # all but rax
    for op in real.spec.ops(X86):
        assert int(defines[f"PV_OP_{op.group.upper()}_{op.name.upper()}_OFFSET"]) == op.index * arch.pointer_size
    for macro in _macros(real.spec, X86).values():
        assert f"/* {macro.span.location} */\n.macro __pvgen_{macro.name}" in header


# --- IA64 ------------------------------------------------------------------------------


def _ia64_object(include: Path, tmp_path: Path, instance: str, source: Path = IVT_LIKE) -> tuple[Path, str]:
    """cpp once per instance, then ia64-linux-gnu-as; returns the object and the assembler's stderr."""
    gcc = _tool("gcc", "gcc")
    assembler = _tool("ia64-linux-gnu-as", "binutils-ia64-linux-gnu")
    preprocessed = tmp_path / f"{source.stem}-{instance}.s"
    define = f"-DPVGEN_INSTANCE_{instance.upper()}"
    result = _run(gcc, "-E", "-P", "-x", "assembler-with-cpp", define, "-I", include, source, "-o", preprocessed)
    assert result.returncode == 0, result.stderr
    obj = tmp_path / f"{source.stem}-{instance}.o"
    result = _run(assembler, "-xnone", preprocessed, "-o", obj)
    return obj, result.stdout + result.stderr


def _disassemble(obj: Path) -> str:
    """The instructions objdump decodes, one a line, without addresses and bytes."""
    objdump = _tool("ia64-linux-gnu-objdump", "binutils-ia64-linux-gnu")
    result = _run(objdump, "-d", obj)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t")[-1].strip() for line in result.stdout.splitlines() if re.match(r"\s*[0-9a-f]+:\t", line)]
    return "\n".join(line for line in lines if line)


@pytest.fixture(scope="module")
def ivt_listings(real: Rendered, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp_path = tmp_path_factory.mktemp("ivt")
    listings = {}
    for instance in IA64_INSTANCES:
        obj, errors = _ia64_object(real.root / "asm" / IA64, tmp_path, instance)
        assert obj.is_file(), f"{instance}: {errors}"
        listings[instance] = _disassemble(obj)
    return listings


def test_ia64_headers_define_every_macro(real: Rendered) -> None:
    macros = _macros(real.spec, IA64)
    assert len(macros) == 35
    for instance in IA64_INSTANCES:
        header = real.outputs[f"asm/{IA64}/inst_{instance}.h"]
        for macro in macros.values():
            assert re.search(rf"^#define {macro.name}\b", header, flags=re.M), (instance, macro.name)
            assert f"/* {macro.span.location} */\n" in header


def test_ia64_native_instance_is_privileged(ivt_listings: dict[str, str]) -> None:
    native = ivt_listings["native"]
    for needed in ("rfi", "thash", "itc.d", "itc.i", "cr.ifa", "cr.itir", "cr.isr", "rsm", "ssm", "cover", "bsw.1"):
        assert needed in native, needed
    assert not IA64_HYPERPRIVOP.search(native)


def test_ia64_xen_instance_uses_hyperprivops(ivt_listings: dict[str, str]) -> None:
    xen = ivt_listings["xen"]
    assert not IA64_SENSITIVE.search(xen), IA64_SENSITIVE.search(xen)
    used = {int(number, 16) for _, number in IA64_HYPERPRIVOP.findall(xen)}
    # RFI, RSM_DT, SSM_DT, COVER, ITC_D, ITC_I, SSM_I, GET_IVR, THASH, SET_KR, GET_PSR
    assert used == {0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0xD, 0x12, 0x19}
    assert "0xfffffffffff048a0" in xen.replace(" ", "") or "-1046368" in xen  # XSI_IFA loaded by MOV_FROM_IFA


def test_ia64_pvchk_instance_has_no_sensitive_instruction(ivt_listings: dict[str, str]) -> None:
    pvchk = ivt_listings["pvchk"]
    assert not IA64_SENSITIVE.search(pvchk), IA64_SENSITIVE.search(pvchk)
    assert not IA64_HYPERPRIVOP.search(pvchk)
    assert "br.ret.sptk.many b0" in pvchk  # RFI


def test_pvchk_rejects_a_raw_rsm(real: Rendered, tmp_path: Path) -> None:
    include = real.root / "asm" / IA64
    native, _ = _ia64_object(include, tmp_path, "native", RAW_RSM)
    assert native.is_file()  # fine as native code
    checked, errors = _ia64_object(include, tmp_path, "pvchk", RAW_RSM)
    assert not checked.is_file()
    advice = r"Error: pvchk: privilege-sensitive rsm .*; use RSM_PSR_BE_I, RSM_PSR_DT, RSM_PSR_I\b"
    assert re.search(advice, errors), errors


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("ssm psr.ic", "ssm"),
        ("(p6) thash r17 = r16", "thash"),
        ("itc.d r18", "itc.i/itc.d"),
        ("mov r16 = cr.ifa", "cr.*"),
        ("mov r19 = ar.itc", "itc.i/itc.d or ar.itc"),
        ("cover", "cover"),
        ("rfi", "rfi"),
        ("bsw.1", "bsw.0/bsw.1"),
        ("fc r16", "fc"),
        ("ttag r17 = r16", "ttag"),
        ("mov r8 = cpuid[r9]", "cpuid[]"),
        ("mov r8 = pmd[r9]", "pmd[]"),
        ("ptc.ga r16, r17", "ptc.*"),
    ],
)
def test_pvchk_rejects_raw_sensitive_instructions(real: Rendered, tmp_path: Path, line: str, name: str) -> None:
    source = tmp_path / "raw.S"
    source.write_text(f'#include "inst.h"\n\t.text\nraw:\n\t{line}\n\t;;\n')
    obj, errors = _ia64_object(real.root / "asm" / IA64, tmp_path, "pvchk", source)
    assert not obj.is_file()
    assert f"Error: pvchk: privilege-sensitive {name}" in errors, errors


@pytest.mark.parametrize(
    ("use", "message"),
    [
        ("MOV_FROM_IFA(r0)", "Error: pvchk: reg (out) is written, so it cannot be r0"),
        ("MOV_FROM_IFA(p6)", "Error:"),  # and a general register
        ("ITC_D(r6, r18, r19)", "Error:"),  # a qualifying predicate must be a predicate
        ("SSM_PSR_I(p0, r6, r2)", "Error:"),  # so must a predicate clobber
        ("MOV_TO_KR(9, r20, r2, r3)", "kernel register index 9 is not 0..7"),
    ],
)
def test_pvchk_checks_operand_roles(real: Rendered, tmp_path: Path, use: str, message: str) -> None:
    source = tmp_path / "operands.S"
    source.write_text(f'#include "inst.h"\n\t.text\nuse:\n\t{use}\n\t;;\n')
    obj, errors = _ia64_object(real.root / "asm" / IA64, tmp_path, "pvchk", source)
    assert not obj.is_file() and message in errors, errors


def test_ia64_two_instance_headers_are_an_error(real: Rendered, tmp_path: Path) -> None:
    gcc = _tool("gcc", "gcc")
    source = tmp_path / "two.S"
    source.write_text('#include "inst_native.h"\n#include "inst_xen.h"\n')
    result = _run(gcc, "-E", "-P", "-x", "assembler-with-cpp", "-I", real.root / "asm" / IA64, source)
    assert result.returncode != 0 and "two pv instance headers" in result.stderr


# --- golden outputs and determinism --------------------------------------------------------


SMALL_SPECS = {
    "t64": ["tests/data/asm/small.pvspec"],
    "ia64": ["tests/data/asm/ia64_small.pvspec"],
}


def _golden_files(arch: str) -> Iterator[Path]:
    folder = GOLDEN / arch
    return iter(sorted(folder.iterdir()) if folder.is_dir() else [])


@pytest.mark.parametrize("arch", sorted(SMALL_SPECS))
def test_small_spec_matches_golden(arch: str) -> None:
    _, outputs = _render(SMALL_SPECS[arch])
    assert {Path(path).parent.name for path in outputs} == {arch}
    for path, text in sorted(outputs.items()):
        assert text.startswith("/*\n * Generated by pvgen from the spec files below. Do not edit;")
        check_golden(GOLDEN / arch / Path(path).name, text)
    stale = {p.name for p in _golden_files(arch)} - {Path(path).name for path in outputs}
    assert not stale, f"golden files no longer generated: {sorted(stale)}"


def test_small_x86_spec_assembles(tmp_path: Path) -> None:
    """The small spec's header (no clobber bits, a no-via macro that differs per instance)."""
    gcc = _tool("gcc", "gcc")
    _tool("as", "binutils")
    _, outputs = _render(SMALL_SPECS["t64"])
    _write(outputs, tmp_path)
    source = tmp_path / "small.S"
    source.write_text(
        '#include "pvops_asm.h"\n\tDISABLE_INTERRUPTS(CLBR_NONE)\n\tGET_CR2_INTO(%rdi)\n'
        "\tSWAPGS_UNSAFE_STACK\n\tINTERRUPT_RETURN\n#ifdef HINT\n\tXEN_ONLY_HINT\n#endif\n"
    )
    include = tmp_path / "asm" / "t64"
    for defines in ([], ["-DPVGEN_NATIVE"], ["-DPVGEN_INSTANCE_XEN"], ["-DHINT", "-DPVGEN_INSTANCE_XEN"]):
        result = _run(gcc, "-c", "-x", "assembler-with-cpp", *defines, "-I", include, source, "-o", tmp_path / "s.o")
        assert result.returncode == 0, (defines, result.stderr)
    result = _run(gcc, "-c", "-x", "assembler-with-cpp", "-DHINT", "-I", include, source, "-o", tmp_path / "s.o")
    assert result.returncode != 0 and "XEN_ONLY_HINT has no paravirt form" in result.stderr


def test_output_is_deterministic(real: Rendered) -> None:
    _, again = _render(["spec"])
    assert again == real.outputs
    assert sorted(real.outputs) == [
        "asm/ia64/inst.h",
        "asm/ia64/inst_native.h",
        "asm/ia64/inst_pvchk.h",
        "asm/ia64/inst_xen.h",
        "asm/x86_64/pvops_asm.h",
    ]
