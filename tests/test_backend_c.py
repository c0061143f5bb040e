"""The C backend: gcc compiles what it emits, its patch sites read back with pyelftools, golden outputs."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from pvgen import ir
from pvgen.assemble import IDENTITY, TemplateCache, assemble
from pvgen.backends.c import CBackend
from pvgen.check import check
from pvgen.diagnostics import Diagnostics
from pvgen.loader import expand_paths, load
from tests.conftest import ROOT, check_golden

GCC = ["gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-mcmodel=kernel", "-ffreestanding", "-fno-pic", "-mno-red-zone"]
GCC += ["-Wdeclaration-after-statement"]  # as the kernel builds
MODES = {"paravirt": [], "native": ["-DPVGEN_NATIVE"]}
R_X86_64_64, R_X86_64_PC32 = 1, 2
# The wrappers tests/data/pv_user.c calls, each once, and whether it is a recorded site.
USER_CALLS = {
    "irq.save_fl": True,
    "irq.irq_disable": True,
    "irq.restore_fl": True,
    "irq.irq_enable": True,
    "irq.safe_halt": True,
    "mmu.write_cr3": True,
    "mmu.flush_tlb_one_user": True,
    "mmu.read_cr2": True,
    "lock.queued_spin_unlock": True,  # callee_save, one argument
    "lock.vcpu_is_preempted": True,  # callee_save, one argument, a bool result
    "mmu.pte_val": True,  # callee_save, identity natively
    "cpu.write_gdt_entry": True,  # four arguments
    "mmu.set_pte_at": True,  # four arguments
    "cpu.read_msr": True,
    "init.patch": False,  # five arguments, indirect: a plain call through the table
}


@contextlib.contextmanager
def _in_root() -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(ROOT)  # spans and banners name spec files relative to the working directory
    try:
        yield
    finally:
        os.chdir(previous)


@cache
def _build(*paths: str) -> tuple[ir.Build, tuple[str, ...]]:
    diagnostics = Diagnostics()
    with _in_root():
        loaded = load(expand_paths(paths)[0], diagnostics)
        spec = check(loaded, diagnostics)
        assert spec is not None, diagnostics
        built = assemble(spec, TemplateCache.load(ROOT / "generated" / "templates" / "cache.json"), diagnostics)
    assert built is not None, diagnostics
    return built, tuple(sorted(spec.files))


@cache
def _render(*paths: str) -> dict[str, str]:
    built, sources = _build(*paths)
    return {output.path: output.text for output in CBackend().render(built, sources)}


def _spec() -> ir.Build:
    return _build("spec")[0]


@pytest.fixture(scope="module")
def x86_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The freshly rendered x86-64 header and tables, in a directory of their own."""
    directory = tmp_path_factory.mktemp("x86_64")
    for path, text in _render("spec").items():
        if path.startswith("c/x86_64/"):
            (directory / Path(path).name).write_text(text)
    return directory


def _gcc(source: Path, output: Path, *flags: str, language: str | None = None) -> None:
    command = [*GCC, *flags, "-c", *(["-x", language] if language else []), str(source), "-o", str(output)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"


def _op(build: ir.Build, qualname: str, arch: str = "x86_64") -> ir.Op:
    return next(op for op in build.spec.ops(arch) if op.qualname == qualname)


def _arch(build: ir.Build, name: str) -> ir.Arch:
    return next(a for a in build.spec.arches if a.name == name)


def _clobber_mask(arch: ir.Arch, op: ir.Op) -> int:
    bits = dict(arch.clobber_bits)
    return sum(1 << bits[r] for r in op.clobbers if r in bits)


class _Object:
    """A relocatable object: sections, symbols and relocations, through pyelftools."""

    def __init__(self, path: Path) -> None:
        self.elf = ELFFile(io.BytesIO(path.read_bytes()))
        symtab = self.elf.get_section_by_name(".symtab")
        self.symtab = symtab if isinstance(symtab, SymbolTableSection) else None

    def data(self, name: str) -> bytes:
        section = self.elf.get_section_by_name(name)
        assert section is not None, f"no section {name}"
        return bytes(section.data())

    def has(self, name: str) -> bool:
        return self.elf.get_section_by_name(name) is not None

    def relocations(self, name: str) -> list[tuple[int, int, str, int]]:
        """(offset, type, symbol or section name, addend) of the relocations against section `name`."""
        section = self.elf.get_section_by_name(".rela" + name)
        if not isinstance(section, RelocationSection):
            return []
        found = []
        assert self.symtab is not None
        for relocation in section.iter_relocations():
            symbol = self.symtab.get_symbol(relocation["r_info_sym"])
            target = symbol.name
            if symbol["st_info"]["type"] == "STT_SECTION":
                target = self.elf.get_section(symbol["st_shndx"]).name
            found.append((relocation["r_offset"], relocation["r_info_type"], target, relocation["r_addend"]))
        return found

    def symbol(self, name: str) -> tuple[str, int, int]:
        """(section, value, size) of a defined symbol."""
        symbol = self.symtab.get_symbol_by_name(name) if self.symtab else None
        assert symbol, f"no symbol {name}"
        return self.elf.get_section(symbol[0]["st_shndx"]).name, symbol[0]["st_value"], symbol[0]["st_size"]


# -- the generated files ---------------------------------------------------------------------------


def test_generated_c_is_current() -> None:
    for path, text in _render("spec").items():
        on_disk = ROOT / "generated" / path
        assert on_disk.is_file() and on_disk.read_text() == text, f"generated/{path} is stale; run `pvgen build`"


def test_every_file_opens_with_the_banner_and_entries_point_into_the_spec() -> None:
    for path, text in _render("spec").items():
        assert text.startswith("/*\n * Generated by pvgen"), path
        for location in re.findall(r"/\* (spec/[\w/]+\.pvspec):(\d+) \*/", text):
            lines = (ROOT / location[0]).read_text().split("\n")
            assert 0 < int(location[1]) <= len(lines), location


def test_header_lists_every_op_with_its_index() -> None:
    header = _render("spec")["c/x86_64/pvops.h"]
    build = _spec()
    for op in build.spec.ops("x86_64"):
        define = f"PV_OP_{op.group}_{op.name}".upper()
        assert re.search(rf"^#define {define} {op.index} /\* {re.escape(op.span.location)} \*/$", header, re.M)
        entry = f"X({op.group}, {op.name}, {op.index}, {op.category}, {op.transfer}, {int(op.callee_save)}, "
        assert entry in header
    assert "#define PV_OP_COUNT 92" in header


# -- gcc over the x86-64 header and tables ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_header_compiles_standalone(x86_dir: Path, tmp_path: Path, mode: str) -> None:
    _gcc(x86_dir / "pvops.h", tmp_path / "header.o", *MODES[mode], language="c")


def test_header_is_usable_from_asm(x86_dir: Path) -> None:
    source = '#include "pvops.h"\n.byte PV_OP_IRQ_IRQ_DISABLE\n.quad PV_OP_MMU_WRITE_CR3 * PV_OP_SLOT_SIZE\n'
    (x86_dir / "user.S").write_text(source)
    _gcc(x86_dir / "user.S", x86_dir / "user_S.o", f"-I{x86_dir}", "-D__ASSEMBLY__")  # as Kbuild does for .S
    irq_disable, write_cr3 = _op(_spec(), "irq.irq_disable"), _op(_spec(), "mmu.write_cr3")
    assert _Object(x86_dir / "user_S.o").data(".text") == bytes([irq_disable.index]) + (write_cr3.index * 8).to_bytes(
        8, "little"
    )


def _expected_slot(build: ir.Build, op: ir.Op, hypervisor: str) -> str:
    impl = op.impl(hypervisor)
    if impl.kind == ir.IMPL_CALL:
        assert impl.text is not None
        return impl.text if impl.preserves_registers or not op.callee_save else f"__raw_callee_save_{impl.text}"
    if impl.kind == ir.IMPL_ASM:
        owner = hypervisor if impl.source == "declared" else ir.NATIVE
        return f"pvgen_{owner}_{op.group}_{op.name}"
    if impl.kind == ir.IMPL_IDENTITY:
        return "pvgen_ident_64"
    return "pvgen_ret0" if op.returns.kind != "void" else "pvgen_nop"


@pytest.mark.parametrize("mode", MODES)
def test_tables_compile_and_point_every_slot_at_its_implementation(x86_dir: Path, tmp_path: Path, mode: str) -> None:
    _gcc(x86_dir / "pvops_tables.c", tmp_path / "tables.o", *MODES[mode])
    obj = _Object(tmp_path / "tables.o")
    build = _spec()
    ops = build.spec.ops("x86_64")
    assert len(ops) == 92
    for table, hypervisor in [
        ("pv_ops", "native"),
        ("pv_ops_native", "native"),
        ("pv_ops_kvm", "kvm"),
        ("pv_ops_xen", "xen"),
    ]:
        section, base, size = obj.symbol(table)
        assert size == len(ops) * 8, table
        slots = {offset - base: (kind, symbol, addend) for offset, kind, symbol, addend in obj.relocations(section)}
        for op in ops:
            assert slots.get(op.index * 8) == (R_X86_64_64, _expected_slot(build, op, hypervisor), 0), (
                f"{table}.{op.qualname}"
            )


def _disassemble(code: bytes) -> list[str]:
    import capstone  # type: ignore[import-untyped]

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.syntax = capstone.CS_OPT_SYNTAX_ATT
    return [f"{i.mnemonic} {i.op_str}".strip() for i in md.disasm(code, 0)]


def test_bodies_and_thunks_assemble_to_the_template_and_the_register_saves(x86_dir: Path, tmp_path: Path) -> None:
    _gcc(x86_dir / "pvops_tables.c", tmp_path / "tables.o")
    obj = _Object(tmp_path / "tables.o")
    text = obj.data(".text")
    build = _spec()

    def code(symbol: str) -> bytes:
        _, value, size = obj.symbol(symbol)
        return text[value : value + size]

    for template in build.templates:
        if template.arch != "x86_64" or template.hypervisor != ir.NATIVE:
            continue
        if template.owner == IDENTITY:
            assert code("pvgen_ident_64") == template.code + b"\xc3" == bytes.fromhex("4889f8c3")
            continue
        op = _op(build, template.owner)
        ending = b"" if op.transfer == "jump" else b"\xc3"  # a jump-type op never returns
        assert code(f"pvgen_native_{op.group}_{op.name}") == template.code + ending, op.qualname
    assert code("pvgen_nop") == b"\xc3"
    saved = ["rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"]
    thunk = _disassemble(code("__raw_callee_save_xen_pte_val"))
    assert thunk[:2] == ["pushq %rbp", "movq %rsp, %rbp"]
    assert thunk[2:10] == [f"pushq %{r}" for r in saved]
    assert thunk[10].startswith("call")
    assert thunk[11:] == [f"popq %{r}" for r in reversed(saved)] + ["popq %rbp", "retq"]
    calls = [r for r in obj.relocations(".text") if r[2] == "xen_pte_val"]
    assert len(calls) == 1


# -- a kernel-style user of the wrappers -------------------------------------------------------------


def _compile_user(x86_dir: Path, tmp_path: Path, mode: str) -> _Object:
    _gcc(ROOT / "tests" / "data" / "pv_user.c", tmp_path / "user.o", f"-I{x86_dir}", *MODES[mode])
    return _Object(tmp_path / "user.o")


def test_paravirt_wrappers_are_recorded_ff15_sites(x86_dir: Path, tmp_path: Path) -> None:
    obj = _compile_user(x86_dir, tmp_path, "paravirt")
    build = _spec()
    arch = _arch(build, "x86_64")
    text = obj.data(".text")
    records = obj.data(".pvgen.sites")
    assert len(records) % 16 == 0 and records
    addresses = {offset: (kind, target, addend) for offset, kind, target, addend in obj.relocations(".pvgen.sites")}
    text_relocations = {offset: (kind, target, addend) for offset, kind, target, addend in obj.relocations(".text")}
    by_index = {op.index: op for op in build.spec.ops("x86_64")}
    seen: Counter[str] = Counter()
    for start in range(0, len(records), 16):
        kind, target, site = addresses[start]
        assert (kind, target) == (R_X86_64_64, ".text")
        assert records[start : start + 8] == bytes(8)  # the address is all relocation
        index, length = records[start + 8], records[start + 9]
        clobbers = int.from_bytes(records[start + 10 : start + 12], "little")
        op = by_index[index]
        seen[op.qualname] += 1
        assert text[site : site + 2] == b"\xff\x15", f"{op.qualname} at {site:#x}: {text[site : site + 6].hex()}"
        if op.impl(ir.NATIVE).kind == ir.IMPL_IDENTITY:
            # The result goes back into the argument register: `mov %rax, %rdi` after the call.
            assert length == arch.site_size + 3 == 9 and text[site + 6 : site + 9] == b"\x48\x89\xc7", op.qualname
        else:
            assert length == arch.site_size == 6, op.qualname
        # The rel32 of `call *disp32(%rip)` points at the op's own slot.
        assert text_relocations[site + 2] == (R_X86_64_PC32, "pv_ops", op.index * 8 - 4), op.qualname
        assert clobbers == _clobber_mask(arch, op), op.qualname
        assert clobbers == (0x1 if op.callee_save else 0x1FF)
    assert seen == Counter(name for name, recorded in USER_CALLS.items() if recorded)
    # The indirect op is a plain call through its slot, without a record.
    patch = _op(build, "init.patch")
    assert any(target == "pv_ops" and addend == patch.index * 8 - 4 for _, target, addend in text_relocations.values())


def test_native_wrappers_inline_the_native_code(x86_dir: Path, tmp_path: Path) -> None:
    obj = _compile_user(x86_dir, tmp_path, "native")
    build = _spec()
    assert not obj.has(".pvgen.sites")
    text = obj.data(".text")
    targets = {target for _, _, target, _ in obj.relocations(".text")}
    assert "pv_ops" not in targets
    for qualname in USER_CALLS:
        op = _op(build, qualname)
        impl = op.impl(ir.NATIVE)
        if impl.kind == ir.IMPL_ASM:
            template = build.template("x86_64", qualname, ir.NATIVE)
            assert template is not None and template.code in text, f"{qualname}: {template and template.code.hex()}"
        elif impl.kind == ir.IMPL_CALL:
            assert impl.text in targets, qualname
    assert b"\xfa" in text  # cli


# -- the small spec: golden outputs -----------------------------------------------------------------

SMALL = "tests/data/small.pvspec"


def test_small_spec_outputs_match_golden() -> None:
    outputs = _render(SMALL)
    assert sorted(outputs) == ["c/t64/pvops.h", "c/t64/pvops_tables.c"]
    for path, text in outputs.items():
        check_golden(ROOT / "tests" / "golden" / path, text)


@pytest.mark.parametrize("mode", MODES)
def test_small_spec_outputs_compile(tmp_path: Path, mode: str) -> None:
    for path, text in _render(SMALL).items():
        (tmp_path / Path(path).name).write_text(text)
    _gcc(tmp_path / "pvops.h", tmp_path / "header.o", *MODES[mode], language="c")
    _gcc(tmp_path / "pvops_tables.c", tmp_path / "tables.o", *MODES[mode])


def test_output_is_deterministic() -> None:
    built, sources = _build("spec")
    first = CBackend().render(built, sources)
    assert first == CBackend().render(built, sources)


# -- IA64: no gcc here, so its asm is checked with the cross assembler -------------------------------


def _ia64_tools() -> None:
    if shutil.which("ia64-linux-gnu-as") is None or shutil.which("ia64-linux-gnu-objdump") is None:
        pytest.skip("ia64-linux-gnu-as is not installed (Debian: binutils-ia64-linux-gnu)")


def _c_literals(text: str) -> str:
    return "".join(ast.literal_eval(f'"{literal}"') for literal in re.findall(r'"((?:[^"\\]|\\.)*)"', text))


def test_ia64_tables_asm_assembles(tmp_path: Path) -> None:
    _ia64_tools()
    tables = _render("spec")["c/ia64/pvops_tables.c"]
    source = "".join(_c_literals(block) for block in re.findall(r"^asm\((.*?)\);$", tables, re.S | re.M))
    (tmp_path / "bodies.s").write_text(source)
    result = subprocess.run(
        ["ia64-linux-gnu-as", "-xnone", "-o", str(tmp_path / "bodies.o"), str(tmp_path / "bodies.s")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    obj = _Object(tmp_path / "bodies.o")
    build = _spec()
    for op in build.spec.ops("ia64"):
        if op.impl(ir.NATIVE).kind == ir.IMPL_ASM:
            obj.symbol(f"pvgen_native_{op.group}_{op.name}")
    assert source.count("br.cond.sptk.many b6") >= 20
    # Xen's irq_restore template points b6 at the end of its own 80 bytes (the return point
    # of its brl to xen_check_events): out of line, that must be where the caller's b6 comes back.
    listing = subprocess.run(
        ["ia64-linux-gnu-objdump", "-d", str(tmp_path / "bodies.o")], capture_output=True, text=True
    ).stdout
    body = listing.split("<pvgen_xen_cpu_intrin_local_irq_restore>:\n", 1)[1].split("\n\n", 1)[0]
    slots = {
        int(m.group(1), 16): m.group(2)
        for m in re.finditer(r"^\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*(.*)$", body, re.M)
    }
    start = next(address for address, text in slots.items() if "mov r17=ip" in text) & ~0xF  # the template's
    assert "mov r2=b6" in slots[start - 16 + 6]
    assert "mov b6=r2" in slots[start + 80 + 6]


def test_ia64_site_is_the_five_bundle_stub_with_a_bundle_record(tmp_path: Path) -> None:
    _ia64_tools()
    header = _render("spec")["c/ia64/pvops.h"]
    macros = dict(re.findall(r"^#define (PVGEN_IA64_\w+)((?:.*\\\n)*.*)$", header, re.M))
    site = macros["PVGEN_IA64_SITE"].replace("PVGEN_IA64_STUB", macros["PVGEN_IA64_STUB"])
    source = _c_literals(site).replace("%[slot]", "pv_cpu_ops + 8").replace("%[type]", "12")
    (tmp_path / "site.s").write_text(".text\n" + source)
    result = subprocess.run(
        ["ia64-linux-gnu-as", "-o", str(tmp_path / "site.o"), str(tmp_path / "site.s")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    obj = _Object(tmp_path / "site.o")
    assert len(obj.data(".text")) == _arch(_spec(), "ia64").site_size == 80
    record = obj.data(".paravirt_bundles")
    assert len(record) == 24 and record[16:] == (12).to_bytes(8, "little")
    ends = sorted(addend for offset, _, target, addend in obj.relocations(".paravirt_bundles") if target == ".text")
    assert ends == [0, 80]
