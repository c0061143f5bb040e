"""The harness behind the generated test suites (generated/tests/): checks one op of one arch × hypervisor.

Each check raises AssertionError with the op, the hypervisor and the spec location when the
generated layer and the machine models disagree:
- the template decodes to the instructions the build recorded;
- it fits its call site (unless the spec keeps it out of line);
- running it changes no register outside the op's clobbers;
- a patched site and the unpatched indirect call reach the same state outside the clobbers;
- the native template is exactly the native out-of-line function gcc builds from pvops_tables.c;
- each declared effect holds after the implementation runs under its environment.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated"

CODE = 0xFFFF_FFFF_8100_0000
BODY = CODE + 0x1000
SLOTS = CODE + 0x2000  # a page holding the op's table slot
DATA = 0xFFFF_8880_0000_0000  # pointer arguments point here
DATA_SIZE = 0x2000
STACK_TOP = 0xFFFF_C900_0001_0000
STACK_SIZE = 0x4000
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
ARGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
IF = 0x200


# Which checks the models can run per arch: the generated suites skip the others, saying so.
SUPPORTED = {
    "x86_64": frozenset({"decodes", "fits", "clobbers", "site", "native_body", "effect"}),
    "ia64": frozenset({"decodes", "fits", "clobbers", "site", "native_body", "effect"}),
}


def supports(check: str, arch: str) -> bool:
    return check in SUPPORTED.get(arch, frozenset())


def can_check_effect(arch: str, hypervisor: str, qualname: str) -> bool:
    """Effects run wherever the implementation can be called: templates and guest-library calls alike."""
    return supports("effect", arch)


def check_mask_and_yield(arch: str, hypervisor: str) -> None:
    """The forced-native mask and the yielding rules of the generated layer, under one hypervisor."""
    from pvgen.runtime.yielding import boot_yielding

    pv = layer(arch)
    if pv.MASK_CMDLINE is None:
        return
    environment = pv.HYPERVISORS[hypervisor]
    for group, bit in pv.MASK_BITS.items():
        assert pv.parse_mask(f"{pv.MASK_CMDLINE}={group}") == {group}
        assert pv.parse_mask(f"{pv.MASK_CMDLINE}={1 << bit:#x}") == {group}
        refused = environment.execution == "pv" and group not in environment.native_fallback
        try:
            pv.check_mask(hypervisor, frozenset({group}))
        except pv.MaskError:
            assert refused, f"{hypervisor} refuses to force {group} native, but the spec allows it"
        else:
            assert not refused, f"{hypervisor} forces {group} native, but it cannot run it natively"
        for op in pv.OPS:
            if op.group == group:
                assert pv.effective_impl(op, hypervisor, frozenset({group})) is op.impls["native"]
    try:
        pv.parse_mask(f"{pv.MASK_CMDLINE}=no_such_group")
    except pv.MaskError as error:
        assert "no_such_group" in str(error)
    else:
        raise AssertionError("an unknown group in the mask was accepted")
    report = boot_yielding(pv, hypervisor)
    assert report.paravirt_enabled == environment.paravirt_enabled
    assert bool(report.yielded) == (environment.paravirt_enabled and bool(pv.YIELDS))
    found = [step for step in report.iommu if step.found]
    if found and found[-1].finished_scan:
        assert report.iommu[-1] is found[-1], "the IOMMU scan went on after a finishing entry"


def use(generated: Path) -> None:
    """Checks the outputs in `generated` (a suite calls this with its own directory's parent)."""
    global GENERATED
    GENERATED = Path(generated).resolve()


@cache
def _load_layer(path: Path) -> ModuleType:
    name = f"pvgen_layer_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def layer(arch: str) -> ModuleType:
    """The generated Python layer of `arch` from the directory under test."""
    return _load_layer(GENERATED / "python" / f"pvops_{arch}.py")


def _op(arch: str, qualname: str) -> Any:
    return layer(arch).OPS_BY_NAME[qualname]


def _where(op: Any, hypervisor: str) -> str:
    impl = op.impls[hypervisor]
    return f"{op.group}.{op.name} under {hypervisor} ({impl.location})"


def templated_ops(arch: str, hypervisor: str) -> list[str]:
    """Ops whose implementation under the hypervisor is an assembled template."""
    return [f"{op.group}.{op.name}" for op in layer(arch).OPS if op.impls[hypervisor].template is not None]


# -- decoding (both arches) -----------------------------------------------------------------


def _decode_x86(code: bytes) -> list[str]:
    import capstone

    engine = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    engine.syntax = capstone.CS_OPT_SYNTAX_ATT
    out, end = [], 0
    for insn in engine.disasm(code, 0):
        out.append(f"{insn.mnemonic} {insn.op_str}".strip())
        end = insn.address + insn.size
    if end != len(code):
        out.append(f"<undecodable {code[end:].hex()}>")
    return out


def _decode_ia64(code: bytes) -> list[str]:
    from pvgen.ia64.objdump import format_objdump

    lines = []
    for line in format_objdump(code, 0).splitlines():
        text = line.split("\t")[-1].strip()
        text = text.split("]", 1)[-1].strip() if text.startswith("[") else text
        if text and not re.fullmatch(r"([0-9a-f]{2} ?)+", text):  # an MLX bundle's L-slot bytes
            lines.append(text)
    return lines


def _recorded_instructions(arch: str, hypervisor: str, owner: str) -> list[str]:
    import json

    document = json.loads((GENERATED / "templates" / arch / f"{hypervisor}.json").read_text())
    for template in document["templates"]:
        if template["owner"] == owner:
            return list(template["instructions"])
    raise AssertionError(f"no recorded template for {owner} under {hypervisor}")


def check_decodes(arch: str, hypervisor: str, qualname: str) -> None:
    op = _op(arch, qualname)
    code = op.impls[hypervisor].template
    recorded = _recorded_instructions(arch, hypervisor, qualname)
    if arch == "x86_64":
        decoded = _decode_x86(code)
        assert decoded == recorded, f"{_where(op, hypervisor)}: decodes to {decoded}, build recorded {recorded}"
    else:
        decoded = [d for d in _decode_ia64(code) if not d.startswith("nop")]
        wanted = [r for r in recorded if not r.startswith("nop")]
        strip = [d.rstrip(";") for d in decoded]
        assert strip == [w.rstrip(";") for w in wanted], f"{_where(op, hypervisor)}: decodes to {decoded}"


def check_fits(arch: str, hypervisor: str, qualname: str) -> None:
    op = _op(arch, qualname)
    impl = op.impls[hypervisor]
    size = layer(arch).SITE_SIZE
    if impl.inline:
        assert len(impl.template) <= size, f"{_where(op, hypervisor)}: {len(impl.template)} bytes, site holds {size}"


# -- running x86 templates on the CPU model ---------------------------------------------------


def _x86_cpu() -> Any:
    from pvgen.runtime.x86 import Cpu

    cpu = Cpu()
    cpu.memory.map(CODE, 0x3000, "rwx", name="harness code")
    cpu.memory.map(DATA, DATA_SIZE, "rw", name="harness data")
    cpu.memory.map(STACK_TOP - STACK_SIZE, STACK_SIZE, "rw", name="harness stack")
    return cpu


def _arguments(op: Any, rng: random.Random, data: int = DATA) -> list[int]:
    """Argument values: pointers into the data page; other values page-frame-like (a page-table
    entry, a CR3 value) with the interrupt-flag bit random, so flag and CR ops see legal inputs."""
    values = []
    for index, _name in enumerate(op.params):
        if _looks_like_pointer(op, index):
            values.append(data + 0x100 + 8 * rng.randrange(32))
        else:
            values.append(rng.getrandbits(39) << 12 | rng.choice((0, IF)))
    return values


def _looks_like_pointer(op: Any, index: int) -> bool:
    name = op.params[index]
    return name in ("lock", "ptep", "pmdp", "pudp", "p4dp", "pgdp", "ptr", "dtr", "addr_ptr") or name.endswith("p")


def _seed(cpu: Any, op: Any, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    registers = {name: rng.getrandbits(64) for name in GPRS}
    for name, value in zip(ARGS, _arguments(op, rng), strict=False):
        registers[name] = value
    for name, value in registers.items():
        cpu.set_reg(name, value)
    cpu.memory.write(DATA, bytes(rng.getrandbits(8) for _ in range(DATA_SIZE)))
    cpu.rflags = 0x2 | IF
    return registers


def _run_x86(cpu: Any, code: bytes, entry: int = CODE) -> Any:
    cpu.memory.write(entry, code)
    # The harness calls the code like a function: a sentinel return address ends the run.
    rsp = STACK_TOP - 64
    cpu.memory.write_u64(rsp, cpu.sentinel)
    cpu.state[4] = rsp
    cpu.rip = entry
    result = cpu.resume(100_000)
    assert result.reason in ("return", "hlt"), f"run ended by {result.reason} at {result.rip:#x}"
    return result


def check_clobbers(arch: str, hypervisor: str, qualname: str, seed: int = 1) -> None:
    if arch != "x86_64":
        _check_clobbers_static(arch, hypervisor, qualname)
        return _check_clobbers_ia64(hypervisor, qualname, seed)
    op = _op(arch, qualname)
    cpu = _x86_cpu()
    before = _seed(cpu, op, seed)
    _run_x86(cpu, op.impls[hypervisor].template + b"\xc3")
    allowed = set(op.clobbers) | set(layer(arch).RETURN_REGISTERS)
    changed = sorted(r for r in GPRS if cpu.reg(r) != before[r] and r not in allowed)
    assert not changed, f"{_where(op, hypervisor)}: changes {changed}, clobbers are {sorted(allowed)}"
    return None


def _check_clobbers_static(arch: str, hypervisor: str, qualname: str) -> None:
    """IA64: the registers the decoded instructions write are within the clobbers."""
    from pvgen.assemble import _ia64_writes

    op = _op(arch, qualname)
    written = set()
    for insn in _decode_ia64(op.impls[hypervisor].template):
        written |= _ia64_writes(insn)
    # r0 and p0 are hard-wired: writing them changes nothing.
    extra = sorted(
        w for w in written if w.startswith(("r", "p", "b")) and w not in op.clobbers and w not in ("r0", "p0")
    )
    assert not extra, f"{_where(op, hypervisor)}: writes {extra} outside the clobbers {list(op.clobbers)}"


def _check_clobbers_ia64(hypervisor: str, qualname: str, seed: int) -> None:
    """IA64: random GR/PR/BR, the template run on the model; nothing outside the clobbers changes."""
    from pvgen.runtime.ia64 import effects

    effects.use(layer("ia64"))
    op = _op("ia64", qualname)
    cpu, env = effects.template(op, hypervisor)
    effects.seed(cpu, op, random.Random(seed), registers=True)
    clobbers = frozenset(op.clobbers) | {"r8", "b0"}  # r8: the result; b0: the harness's return
    before = effects.state(cpu, env, clobbers)
    effects.run(cpu, _where(op, hypervisor))
    after = effects.state(cpu, env, clobbers)
    changed = sorted(k for k in before if k not in ("psr.i", "psr.ic", "rr") and before[k] != after[k])
    assert not changed, f"{_where(op, hypervisor)}: changes {changed}, clobbers are {list(op.clobbers)}"


def _site_equivalence_ia64(hypervisor: str, qualname: str, seed: int) -> None:
    """IA64: the unpatched stub through the descriptor and the patched site agree outside the clobbers."""
    from pvgen.runtime.ia64 import effects

    effects.use(layer("ia64"))
    op = _op("ia64", qualname)
    if not op.impls[hypervisor].inline:
        return
    states = []
    for patched in (False, True):
        cpu, env = effects.site(op, hypervisor, patched)
        effects.seed(cpu, op, random.Random(seed), registers=True)
        effects.run(cpu, f"{_where(op, hypervisor)}, {'patched' if patched else 'unpatched'}")
        states.append(effects.state(cpu, env, frozenset(op.clobbers)))
    mine, theirs = states
    differ = sorted(k for k in mine if mine[k] != theirs[k])
    assert not differ, f"{_where(op, hypervisor)}: patched and unpatched sites differ in {differ}"


def _state(cpu: Any, op: Any) -> dict[str, Any]:
    allowed = set(op.clobbers) | {"rsp"}
    state: dict[str, Any] = {r: cpu.reg(r) for r in GPRS if r not in allowed}
    state["IF"] = bool(cpu.rflags & IF)
    state["cr3"] = cpu.cr3
    state["data"] = cpu.memory.read(DATA, DATA_SIZE)
    return state


def check_site_equivalence(arch: str, hypervisor: str, qualname: str, seed: int = 2) -> None:
    """The patched site (template inline) and the unpatched one (indirect call to the body) agree."""
    if arch != "x86_64":
        return _site_equivalence_ia64(hypervisor, qualname, seed)
    op = _op(arch, qualname)
    impl = op.impls[hypervisor]
    if not impl.inline:
        return None
    size = layer(arch).SITE_SIZE
    nops = layer(arch).NOPS
    # Unpatched: call *slot(%rip); ret   with the slot pointing at template; ret.
    unpatched = _x86_cpu()
    _seed(unpatched, op, seed)
    unpatched.memory.write(BODY, impl.template + b"\xc3")
    unpatched.memory.write_u64(SLOTS, BODY)
    site = b"\xff\x15" + struct.pack("<i", SLOTS - (CODE + 6))
    _run_x86(unpatched, site + b"\xc3")
    # Patched: the template in the site, NOP-padded, as boot writes it.
    patched = _x86_cpu()
    _seed(patched, op, seed)
    from pvgen.runtime.x86.boot import nop_fill

    filler = nop_fill(nops, size - len(impl.template))
    _run_x86(patched, impl.template + filler + b"\xc3")
    mine, theirs = _state(patched, op), _state(unpatched, op)
    differ = sorted(k for k in mine if mine[k] != theirs[k])
    assert not differ, f"{_where(op, hypervisor)}: patched and unpatched sites differ in {differ}"
    return None


@cache
def _native_bodies(arch: str) -> dict[str, bytes]:
    """Every out-of-line body gcc builds from generated pvops_tables.c, by symbol."""
    from elftools.elf.elffile import ELFFile

    if shutil.which("gcc") is None:
        raise AssertionError("gcc is needed to build pvops_tables.c")
    with tempfile.TemporaryDirectory() as scratch:
        obj = Path(scratch) / "tables.o"
        command = ["gcc", "-O2", "-mcmodel=kernel", "-ffreestanding", "-fno-pic", "-mno-red-zone", "-c"]
        command += ["-I", str(GENERATED / "c" / arch), str(GENERATED / "c" / arch / "pvops_tables.c"), "-o", str(obj)]
        subprocess.run(command, check=True, capture_output=True)
        bodies = {}
        with obj.open("rb") as stream:
            elf = ELFFile(stream)
            symbols = elf.get_section_by_name(".symtab")
            for symbol in symbols.iter_symbols():
                if symbol["st_info"]["type"] != "STT_FUNC" or not symbol["st_size"]:
                    continue
                section = elf.get_section(symbol["st_shndx"])
                start = symbol["st_value"]
                bodies[symbol.name] = section.data()[start : start + symbol["st_size"]]
    return bodies


@cache
def _ia64_native_bodies() -> dict[str, bytes]:
    """The out-of-line IA64 bodies of pvops_tables.c: its top-level asm, assembled by GNU as.

    There is no IA64 C compiler to build the file, so its asm() blocks are taken out and
    assembled on their own, which is what gcc would hand the assembler for them.
    """
    from elftools.elf.elffile import ELFFile

    text = (GENERATED / "c" / "ia64" / "pvops_tables.c").read_text()
    blocks = re.findall(r"^asm\((.*?)\);$", text, re.M | re.S)
    source = "".join(
        bytes("".join(re.findall(r'"((?:\\.|[^"\\])*)"', block)), "utf-8").decode("unicode_escape") for block in blocks
    )
    if shutil.which("ia64-linux-gnu-as") is None:
        raise AssertionError("ia64-linux-gnu-as is needed (Debian: binutils-ia64-linux-gnu)")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "bodies.s").write_text(source + "\n")
        subprocess.run(
            ["ia64-linux-gnu-as", "-xnone", "-o", str(work / "bodies.o"), str(work / "bodies.s")],
            check=True,
            capture_output=True,
        )
        bodies = {}
        with (work / "bodies.o").open("rb") as stream:
            elf = ELFFile(stream)
            for symbol in elf.get_section_by_name(".symtab").iter_symbols():
                if symbol.name.startswith("pvgen_") and symbol["st_shndx"] not in ("SHN_UNDEF", "SHN_ABS"):
                    section = elf.get_section(symbol["st_shndx"])
                    start = symbol["st_value"]
                    size = symbol["st_size"] or 16 * 8
                    bodies[symbol.name] = section.data()[start : start + size]
    return bodies


def _ia64_meaningful(code: bytes) -> list[str]:
    return [i.rstrip(";").strip() for i in _decode_ia64(code) if not i.startswith("nop")]


def check_native_body(arch: str, qualname: str) -> None:
    """The native template is exactly what the native out-of-line function does before it returns."""
    if arch == "ia64":
        op = _op(arch, qualname)
        body = _ia64_native_bodies().get(f"pvgen_native_{op.group}_{op.name}")
        assert body is not None, f"{_where(op, 'native')}: pvops_tables.c has no out-of-line body"
        wanted = _ia64_meaningful(op.impls["native"].template)
        got = _ia64_meaningful(body)
        # The body is the template, then the return through b6 (the stub's convention).
        returns = len(got) > len(wanted) and got[len(wanted)].startswith("br") and got[len(wanted)].endswith(" b6")
        assert got[: len(wanted)] == wanted and returns, (
            f"{_where(op, 'native')}: body {got} is not the template {wanted} and a return through b6"
        )
        return None
    if arch != "x86_64":
        return None
    op = _op(arch, qualname)
    body = _native_bodies(arch).get(f"pvgen_native_{op.group}_{op.name}")
    template = op.impls["native"].template
    assert body is not None, f"{_where(op, 'native')}: pvops_tables.c has no out-of-line body"
    expected = template if op.transfer == "jump" else template + b"\xc3"  # a jump-type op never returns
    assert body == expected, f"{_where(op, 'native')}: body {body.hex()} is not the template {template.hex()}"
    return None


# -- effects ----------------------------------------------------------------------------------


def check_effect(arch: str, hypervisor: str, qualname: str, expression: str, seed: int = 3) -> None:
    """Runs the op's implementation under the hypervisor's environment and evaluates the declared effect."""
    op = _op(arch, qualname)
    if arch == "x86_64":
        names = _x86_effect_names(op, hypervisor, seed)
    else:
        from pvgen.runtime.ia64 import effects as ia64_effects

        ia64_effects.use(layer(arch))
        names = ia64_effects.effect_names(layer(arch), op, hypervisor, seed, irqs_on=op.name != "ssm_i")
    # The checker has already restricted the expression to comparisons over these names.
    outcome = eval(compile(expression, "<effect>", "eval"), {"__builtins__": {}}, names)
    shown = {k: v for k, v in names.items() if not callable(v) and k in expression}
    assert outcome, f"{_where(op, hypervisor)}: effect `{expression}` does not hold ({shown})"
    return None


def _x86_effect_names(op: Any, hypervisor: str, seed: int) -> dict[str, Any]:
    """Boots the harness image under the hypervisor, calls the op's table-slot target, reads the names."""
    from pvgen.runtime.x86 import effects as x86_effects

    rng = random.Random(seed)
    arguments = _arguments(op, rng, x86_effects.DATA)
    data = bytearray(rng.getrandbits(8) for _ in range(x86_effects.DATA_SIZE))
    for index, name in enumerate(op.params):
        if name == "lock":  # an unlock is called by the holder: the lock byte is _Q_LOCKED_VAL
            data[arguments[index] - x86_effects.DATA] = 1
    # Start with interrupts off for irq_enable, so that enabling them is visible.
    outcome = x86_effects.call_op(
        GENERATED, layer("x86_64"), op, hypervisor, arguments, bytes(data), irqs_on=op.name != "irq_enable"
    )
    return outcome.names()
