"""The IA-64 codec against the reference vectors and, differentially, against GNU as and objdump.

1. Every reference vector decodes to its fields and objdump text and re-encodes to its 16 bytes.
2. Random programs over every supported form (random operands, predicates, stops, labels) are
   assembled by `pvgen.ia64.encoder.assemble` and by `ia64-linux-gnu-as -xnone` in one run per
   example; the bytes must be equal, decode back to the same bytes, and print as objdump prints them.
3. Every IA64 asm text in the spec assembles to GAS's bytes (the allowlist of known gaps is empty).
4. The objdump formatter prints those bytes exactly as `ia64-linux-gnu-objdump -D -b binary -m ia64`.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvgen.ia64 import bundle
from pvgen.ia64.bundle import SLOT_MASK, TEMPLATE_BY_LAYOUT, pack_int
from pvgen.ia64.decoder import BundleLengthError, decode
from pvgen.ia64.encoder import AsmError, assemble, encode_bundle
from pvgen.ia64.insn import AR_NAMES, CR_NAMES, FORMS, Imm, Instruction, Target, UnknownInstruction
from pvgen.ia64.objdump import format_lines
from tests.conftest import ROOT

VECTORS = json.loads((ROOT.parent / "shared" / "reference" / "ia64_encoding_vectors.json").read_text())
TOOLS = ("ia64-linux-gnu-as", "ia64-linux-gnu-objcopy", "ia64-linux-gnu-objdump", "ia64-linux-gnu-nm")

# Spec texts whose bytes differ from GAS's, with the reason. Empty: every text matches.
KNOWN_GAPS: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------------
# GNU tools


def _need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian package: binutils-ia64-linux-gnu)")


def gas(sources: list[str]) -> list[bytes]:
    """Assembles each source with GAS in one run (each ends its last group, like a file end)."""
    _need_tools()
    text = ".text\n" + "".join(f".globl start{i}\nstart{i}:\n{s}\n.align 16\n" for i, s in enumerate(sources))
    text += "the_end:\n"
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "t.s").write_text(text)
        run = subprocess.run(
            ["ia64-linux-gnu-as", "-xnone", "-o", str(work / "t.o"), str(work / "t.s")], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[:3000]
        extract = ["ia64-linux-gnu-objcopy", "-O", "binary", "-j", ".text", str(work / "t.o"), str(work / "t.bin")]
        subprocess.run(extract, check=True)
        blob = (work / "t.bin").read_bytes()
        names = subprocess.run(["ia64-linux-gnu-nm", str(work / "t.o")], capture_output=True, text=True, check=True)
    offsets = {m.group(2): int(m.group(1), 16) for m in re.finditer(r"([0-9a-f]+) \w (start\d+|the_end)", names.stdout)}
    bounds = [offsets[f"start{i}"] for i in range(len(sources))] + [offsets["the_end"]]
    return [blob[bounds[i] : bounds[i + 1]] for i in range(len(sources))]


def objdump(data: bytes) -> list[str]:
    """`ia64-linux-gnu-objdump -D -b binary -m ia64` of `data`, header removed."""
    _need_tools()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "code.bin"
        path.write_bytes(data)
        run = subprocess.run(
            ["ia64-linux-gnu-objdump", "-D", "-b", "binary", "-m", "ia64", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
    lines = run.stdout.split("\n")
    start = next(i for i, line in enumerate(lines) if line.endswith("<.data>:")) + 1
    return [line for line in lines[start:] if line]


def _diff(expected: bytes, actual: bytes) -> str:
    for offset in range(0, max(len(expected), len(actual)), 16):
        if expected[offset : offset + 16] != actual[offset : offset + 16]:
            break
    else:
        offset = 0
    window = slice(max(0, offset - 32), offset + 48)
    return (
        f"first difference in the bundle at {offset:#x}\nGAS:\n"
        + "\n".join(format_lines(expected[window], window.start) if len(expected) % 16 == 0 else [expected.hex()])
        + "\npvgen:\n"
        + "\n".join(format_lines(actual[window], window.start) if len(actual) % 16 == 0 else [actual.hex()])
    )


# ---------------------------------------------------------------------------------------------------
# 1. Reference vectors

# Field name -> (low bit, width) in the 41-bit slot, as the vectors name them.
FIELDS = {
    "qp": (0, 6), "r1": (6, 7), "r2": (13, 7), "r3": (20, 7), "op": (37, 4), "x": (36, 1), "x3": (33, 3),
    "x6": (27, 6), "i": (36, 1), "s": (36, 1), "x2": (31, 2), "x4": (27, 4), "i2d": (31, 2), "imm21a": (6, 21),
    "imm21a_or_y_imm20a": (6, 21), "y": (26, 1), "imm20a": (6, 20), "m": (36, 1), "hint": (28, 2),
    "imm7b_or_r2": (13, 7), "r1_or_imm7a": (6, 7), "ar3": (20, 7), "imm7b": (13, 7), "r1_zero": (6, 7),
    "x2a": (34, 2), "ve": (33, 1), "imm6d": (27, 6), "imm9d": (27, 9), "imm5c": (22, 5), "z36": (36, 1),
    "x2b": (27, 2), "tb": (36, 1), "ta": (33, 1), "p1": (6, 6), "p2": (27, 6), "c": (12, 1), "len6d": (27, 6),
    "cpos6c": (20, 6), "pos6b": (14, 6), "timm9c": (24, 9), "ih": (23, 1), "wh": (20, 2), "z12_9": (9, 4),
    "b1": (6, 3), "z26_16": (16, 11), "b2": (13, 3), "z32": (32, 1), "mask8c": (24, 8), "z23_20": (20, 4),
    "mask7a": (6, 7), "d": (35, 1), "p": (12, 1), "z11_9": (9, 3), "btype": (6, 3), "z31_16": (16, 16),
    "imm20b": (13, 20), "btype_or_b1": (6, 3), "z35_33": (33, 3), "z35_34": (34, 2), "ic": (21, 1), "vc": (20, 1),
}  # fmt: skip
# Fields whose position depends on the format.
FORMAT_FIELDS = {
    ("M3/M5", "i"): (27, 1), ("M30", "x2"): (31, 2), ("M30", "x4"): (27, 4), ("M1/M2/M4", "x6"): (30, 6),
    ("M3/M5", "x6"): (30, 6), ("M1/M2/M4", "x"): (27, 1), ("A6", "x2"): (34, 2), ("A8", "x2"): (34, 2),
    ("I12", "x2"): (34, 2), ("I11", "x2"): (34, 2), ("I16", "x2"): (34, 2), ("I12", "x"): (33, 1),
    ("I11", "x"): (33, 1), ("I12", "y"): (26, 1), ("I11", "y"): (13, 1), ("I16", "y"): (13, 1),
    ("I21", "x"): (22, 1), ("B4", "wh"): (33, 2), ("B1/B3", "wh"): (33, 2), ("X3/X4", "wh"): (33, 2),
    ("B5", "wh"): (32, 3), ("F15/F16", "x"): (33, 1), ("B8/B9", "i"): (36, 1), ("A5", "r3"): (20, 2),
    ("A1", "x4"): (29, 4),
}  # fmt: skip


def _slot_value(data: bytes, slot: int) -> int:
    return bundle.unpack(data)[1 + slot]


def _expected_text(line: str) -> str:
    # The vectors were disassembled from an object file with symbols: "e70 <T_FWD>" is our "0xe70".
    return re.sub(r"\b([0-9a-f]+) <\w+>", r"0x\1", line.strip())


def _address_for(data: bytes, semantic: object) -> int:
    """The bundle address that makes a branch in `data` reach `semantic` (0 without a branch)."""
    for insn in decode(data)[0].instructions:
        if isinstance(insn, Instruction):
            for operand in insn.operands:
                if isinstance(operand, Target) and isinstance(semantic, int):
                    return semantic - operand.offset
    return 0


@pytest.mark.parametrize("vector", VECTORS["instructions"], ids=lambda v: v["asm"])
def test_vector_decodes_to_fields_and_text_and_reencodes(vector: dict) -> None:
    data = bytes.fromhex(vector["bundle_hex"])
    (decoded,) = decode(data)
    assert decoded.template == vector["template"]
    slot = _slot_value(data, vector["slot"])
    for name, value in vector["fields"].items():
        lo, width = FORMAT_FIELDS.get((vector["format"], name), FIELDS[name])
        assert (slot >> lo) & ((1 << width) - 1) == value, (name, vector["format"])
    address = _address_for(data, vector["semantic_value"])
    texts = [line.split("\t")[2] for line in format_lines(data, address) if line.count("\t") == 2]
    assert [t.strip() for t in texts] == [_expected_text(x) for x in vector["objdump"]]
    assert encode_bundle(decoded.template, decoded.instructions) == data
    assert not any(isinstance(i, UnknownInstruction) for i in decoded.instructions)


def test_vector_immediates_match_semantic_values() -> None:
    checked = 0
    for vector in VECTORS["instructions"]:
        value = vector["semantic_value"]
        if not isinstance(value, int) or vector["format"] in ("B1/B3", "X3/X4"):
            continue
        (decoded,) = decode(bytes.fromhex(vector["bundle_hex"]))
        index = min(vector["slot"], len(decoded.instructions) - 1)
        insn = decoded.instructions[index]
        assert isinstance(insn, Instruction)
        immediates = [o.value for o in insn.operands if isinstance(o, Imm)]
        if not immediates:  # a pseudo-op dropped the zero immediate: adds r16 = 0, r1 is mov r16 = r1
            assert value == 0, vector["asm"]
            continue
        assert value in immediates or (value & (2**64 - 1)) in [v & (2**64 - 1) for v in immediates], vector["asm"]
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("name", sorted(VECTORS["pv_sequences"]))
def test_pv_sequence_decodes_and_reencodes(name: str) -> None:
    sequence = VECTORS["pv_sequences"][name]
    for item in sequence["bundles"]:
        data = bytes.fromhex(item["hex"])
        (decoded,) = decode(data, item["offset"])
        assert decoded.template == item["template"]
        assert encode_bundle(decoded.template, decoded.instructions) == data
        lines = format_lines(data, _address_for(data, _symbol_target(item["disasm"])))
        texts = [line.split("\t")[2].strip() for line in lines if line.count("\t") == 2]
        assert texts == [_expected_text(x) for x in item["disasm"]]


def _symbol_target(lines: list[str]) -> int | None:
    for line in lines:
        match = re.search(r"\b([0-9a-f]+) <\w+>", line)
        if match:
            return int(match.group(1), 16)
    return None


def test_template_table() -> None:
    reserved = {t.value for t in bundle.TEMPLATES if t.reserved}
    assert reserved == {0x06, 0x07, 0x14, 0x15, 0x1A, 0x1B, 0x1E, 0x1F}
    assert bundle.TEMPLATES[0x0A].units == ("M", "M", "I") and bundle.TEMPLATES[0x0A].stops == (0,)
    assert bundle.TEMPLATES[0x03].stops == (1, 2) and bundle.TEMPLATES[0x05].units == ("M", "L", "X")
    packed = bundle.pack(0x10, 1, 2, 3)
    assert bundle.unpack(packed) == (0x10, 1, 2, 3)


def test_malformed_length_is_a_located_value_error() -> None:
    with pytest.raises(BundleLengthError) as error:
        decode(bytes(40))
    assert error.value.offset == 32 and isinstance(error.value, ValueError)


@given(st.binary(min_size=16, max_size=16))
@settings(max_examples=300, deadline=None)
def test_any_bundle_decodes_and_reencodes(data: bytes) -> None:
    (decoded,) = decode(data)
    assert encode_bundle(decoded.template, decoded.instructions) == data


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("mov r8 = psr\nfoo r1 = r2", "2:1: error: unknown instruction 'foo'"),
        ("adds r1 = 9000, r2", "1:1: error: adds: immediate 9000 is out of range -8192..8191"),
        ("ld8 r1 = r2", "1:1: error: ld8 does not take operands (r=r)"),
        ("(p64) nop.m 0", "1:2: error: no predicate register p64"),
        ("mov r1 = r2 +", "1:13: error: unexpected '+'"),
        ("mov r1 = 5 +", "1:12: error: unexpected end of operands"),
        ("{ .mii\nitc.i r8\nnop.i 0\nnop.i 0\n}", "2:1: error: itc.i must be last in instruction group"),
        ("br.cond.sptk.many 1b", "1:19: error: no local label 1 before this point"),
        (".data", "1:1: error: unsupported directive '.data'"),
        ("rfi\n(p6) cover", "2:6: error: cover: cover cannot be predicated"),
    ],
)
def test_assembler_errors_are_located(source: str, message: str) -> None:
    with pytest.raises(AsmError) as error:
        assemble(source)
    assert str(error.value).startswith(message)


# ---------------------------------------------------------------------------------------------------
# 2. Random programs against GNU as

M_ARS = [*range(64), *range(112, 128)]  # ar48..63 and ar112..127 take the unit of their slot
I_ARS = list(range(64, 112))


def _r(rng: random.Random) -> str:
    return f"r{rng.randrange(128)}"


def _p(rng: random.Random) -> str:
    return f"p{rng.randrange(64)}"


def _b(rng: random.Random) -> str:
    return f"b{rng.randrange(8)}"


def _ar(rng: random.Random, numbers: list[int]) -> str:
    number = rng.choice(numbers)
    return AR_NAMES[number] if number in AR_NAMES and rng.random() < 0.7 else f"ar{number}"


def _cr(rng: random.Random) -> str:
    number = rng.choice([*CR_NAMES, *range(128)])
    return CR_NAMES[number] if number in CR_NAMES and rng.random() < 0.8 else f"cr{number}"


def _imm(rng: random.Random, lo: int, hi: int) -> str:
    value = rng.choice([lo, hi, 0, rng.randint(lo, hi), rng.randint(lo, hi)])
    value = max(lo, min(hi, value))
    return hex(value) if value >= 0 and rng.random() < 0.5 else str(value)


def _pred(rng: random.Random) -> str:
    return f"({_p(rng)}) " if rng.random() < 0.3 else ""


def _m_system(rng: random.Random) -> str:
    ind = rng.choice(["rr", "dbr", "ibr", "pkr", "pmc", "pmd"])
    choices = [
        lambda: f"mov {ind}[{_r(rng)}] = {_r(rng)}",
        lambda: f"mov {_r(rng)} = {rng.choice([ind, 'cpuid'])}[{_r(rng)}]",
        lambda: f"{rng.choice(['ptc.l', 'ptc.g', 'ptc.ga'])} {_r(rng)}, {_r(rng)}",
        lambda: f"itr.d dtr[{_r(rng)}] = {_r(rng)}",
        lambda: f"itr.i itr[{_r(rng)}] = {_r(rng)}",
        lambda: f"{rng.choice(['thash', 'ttag', 'tpa', 'tak'])} {_r(rng)} = {_r(rng)}",
        lambda: f"mov {_r(rng)} = {rng.choice(['psr', 'psr.um'])}",
        lambda: f"mov {rng.choice(['psr.l', 'psr.um'])} = {_r(rng)}",
        lambda: f"mov {_r(rng)} = {_ar(rng, M_ARS)}",
        lambda: f"mov {_ar(rng, M_ARS)} = {_r(rng)}",
        lambda: f"mov {_ar(rng, M_ARS)} = {_imm(rng, -128, 127)}",
        lambda: f"mov {_r(rng)} = {_cr(rng)}",
        lambda: f"mov {_cr(rng)} = {_r(rng)}",
        lambda: f"{rng.choice(['itc.i', 'itc.d'])} {_r(rng)}",
        lambda: f"{rng.choice(['fc', 'fc.i', 'ptc.e'])} {_r(rng)}",
        lambda: f"{rng.choice(['break.m', 'nop.m'])} {_imm(rng, 0, 0x1FFFFF)}",
        lambda: "hint.m 0",
        lambda: f"{rng.choice(['sum', 'rum', 'ssm', 'rsm'])} {_imm(rng, 0, 0xFFFFFF)}",
        lambda: f"{rng.choice(['ssm', 'rsm'])} psr.i | psr.ic",
        lambda: rng.choice(["invala", "mf", "mf.a", "srlz.d", "srlz.i", "sync.i"]),
    ]
    return _pred(rng) + rng.choice(choices)()


def _memory(rng: random.Random) -> str:
    size = rng.choice("1248")
    ldtype = rng.choice(["", ".s", ".a", ".sa", ".bias", ".acq", ".c.clr", ".c.nc", ".c.clr.acq"])
    load = rng.choice([f"ld{size}{ldtype}", "ld8.fill"]) + rng.choice(["", ".nt1", ".nta"])
    store = rng.choice([f"st{size}", f"st{size}.rel", "st8.spill"]) + rng.choice(["", ".nta"])
    choices = [
        lambda: f"{load} {_r(rng)} = [{_r(rng)}]",
        lambda: f"{load} {_r(rng)} = [{_r(rng)}], {_r(rng)}",
        lambda: f"{load} {_r(rng)} = [{_r(rng)}], {_imm(rng, -256, 255)}",
        lambda: f"{store} [{_r(rng)}] = {_r(rng)}",
        lambda: f"{store} [{_r(rng)}] = {_r(rng)}, {_imm(rng, -256, 255)}",
        lambda: (
            f"cmpxchg{size}{rng.choice(['.acq', '.rel'])}{rng.choice(['', '.nt1', '.nta'])} "
            f"{_r(rng)} = [{_r(rng)}], {_r(rng)}, ar.ccv"
        ),
    ]
    return _pred(rng) + rng.choice(choices)()


def _i_unit(rng: random.Random) -> str:
    pos = rng.randrange(64)
    length = rng.randint(1, 64 - pos)
    choices = [
        lambda: f"{rng.choice(['break.i', 'nop.i', 'hint.i'])} {_imm(rng, 0, 0x1FFFFF)}",
        lambda: f"mov {_ar(rng, I_ARS)} = {rng.choice([_r(rng), _imm(rng, -128, 127)])}",
        lambda: f"mov {_r(rng)} = {_ar(rng, I_ARS)}",
        lambda: f"mov {_r(rng)} = {rng.choice(['ip', 'pr', _b(rng)])}",
        lambda: f"mov pr = {_r(rng)}, {_imm(rng, -65536, 65535)}",
        lambda: f"mov {_b(rng)} = {_r(rng)}",
        lambda: f"{rng.choice(['extr', 'extr.u'])} {_r(rng)} = {_r(rng)}, {pos}, {length}",
        lambda: f"dep.z {_r(rng)} = {_r(rng)}, {pos}, {length}",
        lambda: f"dep {_r(rng)} = {_r(rng)}, {_r(rng)}, {pos}, {rng.randint(1, 16)}",
        lambda: f"{rng.choice(['shl', 'shr', 'shr.u'])} {_r(rng)} = {_r(rng)}, {rng.choice([pos, _r(rng)])}",
        lambda: f"tbit.{rng.choice(['z', 'nz'])}{rng.choice(['', '.unc'])} {_p(rng)}, {_p(rng)} = {_r(rng)}, {pos}",
    ]
    return _pred(rng) + rng.choice(choices)()


def _a_unit(rng: random.Random) -> str:
    rel = rng.choice(["eq", "ne", "lt", "le", "gt", "ge", "ltu", "leu", "gtu", "geu"])
    cmp = f"{rng.choice(['cmp', 'cmp4'])}.{rel}{rng.choice(['', '.unc'])} {_p(rng)}, {_p(rng)}"
    imm_lo, imm_hi = (-127, 128) if rel in ("le", "gt") else (-128, 127)
    if rel in ("leu", "gtu"):
        imm_lo = 1
    choices = [
        lambda: f"{rng.choice(['add', 'sub', 'addp4', 'and', 'andcm', 'or', 'xor'])} {_r(rng)} = {_r(rng)}, {_r(rng)}",
        lambda: f"{rng.choice(['add', 'sub'])} {_r(rng)} = {_r(rng)}, {_r(rng)}, 1",
        lambda: f"{rng.choice(['sub', 'and', 'andcm', 'or', 'xor'])} {_r(rng)} = {_imm(rng, -128, 127)}, {_r(rng)}",
        lambda: f"adds {_r(rng)} = {_imm(rng, -8192, 8191)}, {_r(rng)}",
        lambda: f"addl {_r(rng)} = {_imm(rng, -(1 << 21), (1 << 21) - 1)}, r{rng.randrange(4)}",
        lambda: f"add {_r(rng)} = {_imm(rng, -8192, 8191)}, {_r(rng)}",
        lambda: f"mov {_r(rng)} = {rng.choice([_r(rng), _imm(rng, -(1 << 21), (1 << 21) - 1), 'gp', 'sp'])}",
        lambda: f"{cmp} = {_r(rng)}, {_r(rng)}",
        lambda: f"{cmp} = {_imm(rng, imm_lo, imm_hi)}, {_r(rng)}",
    ]
    return _pred(rng) + rng.choice(choices)()


def _b_unit(rng: random.Random, labels: list[str]) -> str:
    hint = rng.choice(["sptk", "spnt", "dptk", "dpnt"]) + rng.choice(["", ".few", ".many"]) + rng.choice(["", ".clr"])
    target = rng.choice(labels)
    choices = [
        lambda: f"{_pred(rng)}br.cond.{hint} {rng.choice([target, _b(rng)])}",
        lambda: f"{_pred(rng)}br.{rng.choice(['few', 'many'])} {rng.choice([target, _b(rng)])}",
        lambda: f"{_pred(rng)}br.call.{hint} {_b(rng)} = {rng.choice([target, _b(rng)])}",
        lambda: f"{_pred(rng)}br.ret.{hint} {_b(rng)}",
        lambda: rng.choice(["cover", "clrrrb", "rfi", "bsw.0", "bsw.1", "epc"]),
        lambda: f"{_pred(rng)}{rng.choice(['break.b', 'nop.b'])} {_imm(rng, 0, 0x1FFFFF)}",
        lambda: f"{_pred(rng)}{rng.choice(['break.f', 'nop.f', 'hint.f'])} {_imm(rng, 0, 0x1FFFFF)}",
    ]
    return rng.choice(choices)()


def _x_unit(rng: random.Random, labels: list[str]) -> str:
    hint = rng.choice(["sptk", "spnt", "dptk", "dpnt"]) + rng.choice(["", ".few", ".many"]) + rng.choice(["", ".clr"])
    choices = [
        lambda: f"movl {_r(rng)} = {_imm(rng, -(1 << 63), (1 << 64) - 1)}",
        lambda: f"brl.cond.{hint} {rng.choice(labels)}",
        lambda: f"brl.{rng.choice(['few', 'many'])} {rng.choice(labels)}",
        lambda: f"brl.call.{hint} {_b(rng)} = {rng.choice(labels)}",
        lambda: f"{rng.choice(['break.x', 'nop.x', 'hint.x'])} {_imm(rng, 0, (1 << 62) - 1)}",
        lambda: f"{rng.choice(['nop', 'break'])} {_imm(rng, 0, 0x1FFFFF)}",
    ]
    return _pred(rng) + rng.choice(choices)()


FAMILIES = {
    "m_system": lambda rng, labels: _m_system(rng),
    "memory": lambda rng, labels: _memory(rng),
    "i_unit": lambda rng, labels: _i_unit(rng),
    "a_unit": lambda rng, labels: _a_unit(rng),
    "branch_and_f": _b_unit,
    "long_and_dynamic": _x_unit,
}


def random_program(seed: int, families: list[str], length: int = 120, prefix: str = "L") -> str:
    """A program of random instructions from `families`, with random stops and labels."""
    rng = random.Random(seed)
    labels = [f"{prefix}{i}" for i in range(6)]
    placed = list(labels)
    rng.shuffle(placed)
    positions = {rng.randrange(length): name for name in placed}
    lines = []
    for index in range(length):
        if index in positions:
            lines.append(f"{positions.pop(index)}:")
        lines.append(FAMILIES[rng.choice(families)](rng, labels))
        if rng.random() < 0.3:
            lines.append(";;")
    lines += [f"{name}:" for name in positions.values()]
    lines += [f"{name}:" for name in labels if f"{name}:" not in lines]
    return "\n".join(lines) + "\n"


def _check_program(source: str) -> None:
    (expected,) = gas([source])
    try:
        actual = assemble(source).code
    except AsmError as error:
        raise AssertionError(f"{error}\n{source}") from None
    assert actual == expected, _diff(expected, actual)
    round_trip = b"".join(encode_bundle(b.template, b.instructions) for b in decode(actual))
    assert round_trip == actual
    assert format_lines(actual) == objdump(actual)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=12, deadline=None)
def test_random_programs_match_gas(family: str, seed: int) -> None:
    _check_program(random_program(seed, [family]))


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=25, deadline=None)
def test_random_mixed_programs_match_gas(seed: int) -> None:
    _check_program(random_program(seed, sorted(FAMILIES), length=200))


def test_manual_bundles_and_tags_match_gas() -> None:
    source = (
        "{ .mmi\n ld8 r2 = [r3]\n mov r4 = r5\n nop.i 0 ;;\n}\n"
        "{ .mib\n nop.m 0\n [t1:] (p6) mov r3 = r4\n br.ret.sptk.many b0\n}\n"
        "{ .mfb\n nop 1\n nop 2\n nop 3\n}\n"
        "{ .mlx\n nop.m 0\n}\n"
        "{ .bbb\n nop 0\n nop 0\n br.cond.sptk.many 1f\n}\n"
        "1: { .mmf\n nop 0 ;;\n}\n"
    )
    _check_program(source)
    assert assemble(source).symbols["t1"] == 0x11


def form_bundles(seed: int, per_form: int) -> tuple[bytes, set[str]]:
    """Bundles holding every form of the table `per_form` times, each with random bits in every
    operand field (fields GAS never sets included), in a template whose unit fits."""
    rng = random.Random(seed)
    words, seen = [], set()
    templates = {"M": (("M", "I", "I"), ()), "I": (("M", "I", "I"), ()), "B": (("M", "I", "B"), ())}
    templates |= {"F": (("M", "F", "I"), ()), "X": (("M", "L", "X"), ())}
    nop = {"M": 0x0008000000, "I": 0x0008000000, "F": 0x0008000000, "B": 0x4000000000}
    for form in FORMS:
        for unit in {"A": "MI", "X": "X"}.get(form.type, form.type):
            for _ in range(per_form):
                word = form.value | (rng.getrandbits(41) & ~form.mask & SLOT_MASK)
                if form.check is not None and not form.check(word):
                    word = form.value  # the pseudo-op's relation fails for random bits: use all-zero fields
                    if not form.check(word):
                        continue
                units, stops = templates[unit]
                template = TEMPLATE_BY_LAYOUT[(units, stops)] | rng.getrandbits(1)
                if unit == "X":
                    words.append(pack_int(template, nop["M"], rng.getrandbits(41) & ~form.long_zero, word))
                else:
                    slots = [word if u == unit else nop[u] for u in units]
                    if unit == "I":
                        slots[2 - rng.getrandbits(1)] = word
                        slots[1 if slots[2] == word else 2] = nop["I"]
                    words.append(pack_int(template, *slots))
                seen.add(form.mnemonic)
    return b"".join(w.to_bytes(16, "little") for w in words), seen


def test_every_form_with_random_fields_decodes_like_objdump() -> None:
    data, seen = form_bundles(seed=7, per_form=6)
    assert seen == {f.mnemonic for f in FORMS}
    decoded = decode(data)
    assert not any(isinstance(i, UnknownInstruction) for b in decoded for i in b.instructions)
    assert b"".join(encode_bundle(b.template, b.instructions) for b in decoded) == data
    assert format_lines(data) == objdump(data)


# ---------------------------------------------------------------------------------------------------
# 3. and 4. The spec's IA64 asm texts


def _substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\\([A-Za-z_][A-Za-z0-9_]*)", lambda m: values.get(m.group(1), m.group(0)), text)


def _bindings(params: tuple) -> list[dict[str, str]]:
    """Register choices for a macro's parameters: the ones tests/test_spec.py uses (r16.., p6..),
    registers outside the banked r16-r31, r8 in each GR position in turn (the Xen expansions
    special-case r8), and every GR parameter the same register (clob = reg)."""
    grs = [p.name for p in params if p.kind == "gr"]
    preds = {p.name: f"p{6 + i}" for i, p in enumerate(x for x in params if x.kind == "pr")}
    others = {p.name: "6" for p in params if p.kind not in ("gr", "pr")}
    pool = ["r2", "r3", "r9", "r10", "r11", "r14", "r15"]
    choices = [dict(zip(grs, [f"r{16 + i}" for i in range(len(grs))], strict=True)), dict(zip(grs, pool, strict=False))]
    for index in range(len(grs)):
        rest = iter(pool)
        choices.append({name: "r8" if i == index else next(rest) for i, name in enumerate(grs)})
    if len(grs) > 1:
        choices.append(dict.fromkeys(grs, "r2"))
    return [{**c, **preds, **others} for c in choices]


@cache
def spec_texts() -> tuple[tuple[str, str], ...]:
    """(name, text) for every IA64 asm text of the spec; macro expansions under several bindings."""
    from pvgen.cli import load_and_check

    spec, _, diagnostics = load_and_check([str(ROOT / "spec")])
    assert spec is not None, diagnostics
    texts: dict[str, str] = {}
    for op in spec.ops("ia64"):
        impls = [(i.hypervisor, i) for i in op.impls] + [
            (f"{v.name}.{i.hypervisor}", i) for v in op.variants for i in v.impls
        ]
        for where, impl in impls:
            if impl.kind == "asm" and impl.text:
                texts[f"{op.qualname}.{where}"] = impl.text
    for macro in spec.macros:
        if macro.arch != "ia64":
            continue
        for expansion in macro.expansions:
            if "DO_SAVE_MIN" in expansion.text:  # expands to a routine defined elsewhere
                continue
            for binding in _bindings(macro.params):
                label = ",".join(f"{k}={v}" for k, v in binding.items())
                texts[f"{macro.name}.{expansion.hypervisor}({label})"] = _substitute(expansion.text, binding)
    return tuple(sorted(texts.items()))


def gas_or_errors(sources: list[str]) -> list[bytes | None]:
    """Like `gas`, but a source GAS rejects (e.g. an `.error` in an expansion) gives None."""
    _need_tools()
    failing: set[int] = set()
    for _ in range(len(sources) + 1):
        text = "".join(f"start{i}:\n{'' if i in failing else s}\n.align 16\n" for i, s in enumerate(sources))
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "t.s"
            path.write_text(".text\n" + text)
            run = subprocess.run(
                ["ia64-linux-gnu-as", "-xnone", "-o", str(Path(scratch) / "t.o"), str(path)],
                capture_output=True,
                text=True,
            )
        if run.returncode == 0:
            break
        starts = [i + 2 for i, line in enumerate(text.split("\n")) if re.fullmatch(r"start\d+:", line)]
        lines = {int(m.group(1)) for m in re.finditer(r"t\.s:(\d+): Error", run.stderr)}
        new = {max(i for i, first in enumerate(starts) if first <= line) for line in lines}
        assert new - failing, run.stderr[:2000]
        failing |= new
    blobs = gas([("" if i in failing else s) for i, s in enumerate(sources)])
    return [None if i in failing else blob for i, blob in enumerate(blobs)]


def test_every_spec_asm_text_matches_gas() -> None:
    texts = spec_texts()
    assert len(texts) > 300
    mismatches = []
    results = gas_or_errors([t for _, t in texts])
    assert sum(1 for r in results if r is not None) > 300
    for (name, text), expected in zip(texts, results, strict=True):
        try:
            actual: bytes | None = assemble(text).code
        except AsmError:
            actual = None
        if actual != expected and name not in KNOWN_GAPS:
            if actual is None or expected is None:
                mismatches.append(f"{name}: {'GAS' if expected is None else 'pvgen'} rejects it, the other does not")
            else:
                mismatches.append(f"{name}:\n{_diff(expected, actual)}")
        if name in KNOWN_GAPS:
            assert actual != expected, f"{name} is in KNOWN_GAPS but matches GAS now"
    assert not mismatches, "\n\n".join(mismatches)


def test_objdump_text_of_spec_bytes_matches_objdump() -> None:
    blobs = [b for b in gas_or_errors([t for _, t in spec_texts()]) if b is not None]
    whole = b"".join(blobs)
    assert format_lines(whole) == objdump(whole)
    for blob in blobs[:40]:
        assert format_lines(blob) == objdump(blob)
