"""The register special cases of the Xen asm macros, checked on real machine code.

Each case is a tiny .S file assembled through the generated headers (generated/asm/...,
kept fresh by test_build.py::test_generated_matches_spec) and disassembled again. IA64:
MOV_FROM_IVR, MOV_FROM_PSR, THASH and ITC_I/ITC_D/ITC_I_AND_D with r8 as an operand,
MOV_TO_KR with r8/r9 operands, and BSW_1's clob1; x86-64: GET_CR2_INTO keeps %rax (and
the other caller-saved registers) except the output register. Impossible operand
combinations must stop the assembler with the macro's `.error`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

IA64_HEADERS = ROOT / "generated" / "asm" / "ia64"
X86_HEADERS = ROOT / "generated" / "asm" / "x86_64"

Groups = list[list[str]]  # instruction groups (split at stops), nops left out


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found; install the Debian package {package}")
    return path


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)


# --- IA64 -------------------------------------------------------------------------------

_IA64_LINE = re.compile(r"^\s*[0-9a-f]+:\t(?:[0-9a-f]{2} )+\s*\t(?:\[\w+\])?\s*(.*?)\s*$")


def _ia64_assemble(source: str, tmp_path: Path, instance: str = "xen") -> subprocess.CompletedProcess[str]:
    """cpp with the instance header, then ia64-linux-gnu-as; the object is tmp_path/t.o."""
    gcc = _tool("gcc", "gcc")
    gas = _tool("ia64-linux-gnu-as", "binutils-ia64-linux-gnu")
    header = IA64_HEADERS / f"inst_{instance}.h"
    if not header.exists():
        pytest.fail(f"{header.relative_to(ROOT)} is missing; run `pvgen build`")
    (tmp_path / "t.S").write_text(source + "\n")
    cpp = _run(gcc, "-E", "-P", "-x", "assembler-with-cpp", "-I", IA64_HEADERS, "-include", header.name,
               tmp_path / "t.S", "-o", tmp_path / "t.s")  # fmt: skip
    assert cpp.returncode == 0, cpp.stderr
    return _run(gas, "-xnone", tmp_path / "t.s", "-o", tmp_path / "t.o")


def _ia64_groups(source: str, tmp_path: Path, instance: str = "xen") -> Groups:
    """The instruction groups of source as objdump prints them, normalised: predicates
    `(p6)`, `break 0xN` without its unit, `mov` without `.m`/`.i`, no nops."""
    result = _ia64_assemble(source, tmp_path, instance)
    assert result.returncode == 0, result.stderr
    objdump = _tool("ia64-linux-gnu-objdump", "binutils-ia64-linux-gnu")
    listing = _run(objdump, "-d", tmp_path / "t.o")
    assert listing.returncode == 0, listing.stderr
    groups: Groups = [[]]
    for line in listing.stdout.splitlines():
        match = _IA64_LINE.match(line)
        if not match or not match.group(1):
            continue  # headers, and the second half of an MLX bundle's long immediate
        text = match.group(1)
        stop = text.endswith(";;")
        text = text.removesuffix(";;").strip()
        text = re.sub(r"\(p0*(\d+)\)\s*", r"(p\1) ", text)
        text = re.sub(r"^((?:\(p\d+\) )?)break\.[mibfx]\b", r"\1break", text)
        text = re.sub(r"^((?:\(p\d+\) )?)mov\.[mi]\b", r"\1mov", text)
        if not re.match(r"(\(p\d+\) )?nop\.", text):
            groups[-1].append(text)
        if stop:
            groups.append([])
    return [g for g in groups if g]


def _flat(groups: Groups) -> list[str]:
    return [i for g in groups for i in g]


def _ia64_error(source: str, tmp_path: Path) -> str:
    result = _ia64_assemble(source, tmp_path)
    assert result.returncode != 0, f"assembled, but should have been refused:\n{source}"
    return result.stderr


# MOV_FROM_IVR(reg, clob): break 0x8 returns the vector in r8.


def test_mov_from_ivr_into_r8_is_the_break_alone(tmp_path: Path) -> None:
    assert _ia64_groups("MOV_FROM_IVR(r8, r9)", tmp_path) == [["break 0x8"]]


def test_mov_from_ivr_with_r8_as_clob_does_not_restore_r8(tmp_path: Path) -> None:
    assert _ia64_groups("MOV_FROM_IVR(r16, r8)", tmp_path) == [["break 0x8"], ["mov r16=r8"]]


def test_mov_from_ivr_general_case_parks_r8(tmp_path: Path) -> None:
    assert _ia64_groups("MOV_FROM_IVR(r16, r17)", tmp_path) == [
        ["mov r17=r8"],
        ["break 0x8"],
        ["mov r16=r8"],
        ["mov r8=r17"],
    ]


def test_mov_from_ivr_refuses_clob_equal_to_reg(tmp_path: Path) -> None:
    assert "MOV_FROM_IVR: clob must differ from reg" in _ia64_error("MOV_FROM_IVR(r16, r16)", tmp_path)


# MOV_FROM_PSR(pred, reg, clob): break 0x19, everything predicated.


def test_mov_from_psr_into_r8_is_the_predicated_break_alone(tmp_path: Path) -> None:
    assert _ia64_groups("MOV_FROM_PSR(p6, r8, r9)", tmp_path) == [["(p6) break 0x19"]]


def test_mov_from_psr_with_r8_as_clob_does_not_restore_r8(tmp_path: Path) -> None:
    groups = _ia64_groups("MOV_FROM_PSR(p6, r16, r8)", tmp_path)
    assert groups == [["(p6) break 0x19"], ["(p6) mov r16=r8"]]


def test_mov_from_psr_general_case_parks_r8(tmp_path: Path) -> None:
    assert _ia64_groups("MOV_FROM_PSR(p6, r16, r17)", tmp_path) == [
        ["(p6) mov r17=r8"],
        ["(p6) break 0x19"],
        ["(p6) mov r16=r8", "(p6) mov r8=r17"],
    ]


def test_mov_from_psr_refuses_clob_equal_to_reg(tmp_path: Path) -> None:
    assert "MOV_FROM_PSR: clob must differ from reg" in _ia64_error("MOV_FROM_PSR(p6, r16, r16)", tmp_path)


# ITC_I / ITC_D (pred, reg, clob): the PTE goes in r8.


@pytest.mark.parametrize(("macro", "number"), [("ITC_I", "0x6"), ("ITC_D", "0x5")])
def test_itc_cases(macro: str, number: str, tmp_path: Path) -> None:
    brk = f"(p7) break {number}"
    assert _ia64_groups(f"{macro}(p7, r8, r9)", tmp_path) == [[brk]]
    assert _ia64_groups(f"{macro}(p7, r16, r8)", tmp_path) == [["(p7) mov r8=r16"], [brk]]
    assert _ia64_groups(f"{macro}(p7, r16, r17)", tmp_path) == [
        ["(p7) mov r17=r8", "(p7) mov r8=r16"],
        [brk],
        ["(p7) mov r8=r17"],
    ]
    assert f"{macro}: clob must differ from reg" in _ia64_error(f"{macro}(p7, r16, r16)", tmp_path)


def test_itc_ends_its_instruction_group_in_every_case(tmp_path: Path) -> None:
    """itc.i/itc.d end their group, so the Xen forms end one too: whatever follows the
    macro lands in a group of its own."""
    for call in ("ITC_I(p7, r8, r9)", "ITC_D(p7, r16, r8)", "ITC_I_AND_D(p10, p11, r8, r9)", "THASH(p8, r8, r16, r9)"):
        groups = _ia64_groups(f"{call}\n\tadd r2 = r3, r4", tmp_path)
        assert groups[-1] == ["add r2=r3,r4"], (call, groups)


def test_itc_i_and_d_cases(tmp_path: Path) -> None:
    breaks = [["(p10) break 0x6"], ["(p11) break 0x5"]]
    assert _ia64_groups("ITC_I_AND_D(p10, p11, r8, r24)", tmp_path) == breaks
    assert _ia64_groups("ITC_I_AND_D(p10, p11, r18, r8)", tmp_path) == [["mov r8=r18"], *breaks]
    assert _ia64_groups("ITC_I_AND_D(p10, p11, r18, r24)", tmp_path) == [
        ["mov r24=r8", "mov r8=r18"],
        *breaks,
        ["mov r8=r24"],
    ]
    assert "ITC_I_AND_D: clob must differ" in _ia64_error("ITC_I_AND_D(p10, p11, r18, r18)", tmp_path)


# THASH(pred, reg0, reg1, clob): break 0xd takes and returns r8.


def test_thash_into_r8(tmp_path: Path) -> None:
    assert _ia64_groups("THASH(p8, r8, r16, r25)", tmp_path) == [["(p8) mov r8=r16"], ["(p8) break 0xd"]]
    assert _ia64_groups("THASH(p8, r8, r8, r25)", tmp_path) == [["(p8) break 0xd"]]


def test_thash_with_r8_as_clob_does_not_restore_r8(tmp_path: Path) -> None:
    assert _ia64_groups("THASH(p8, r17, r16, r8)", tmp_path) == [
        ["(p8) mov r8=r16"],
        ["(p8) break 0xd"],
        ["(p8) mov r17=r8"],
    ]


def test_thash_from_r8_keeps_the_input(tmp_path: Path) -> None:
    """reg1 = r8 is an input: no copy into r8, but r8 is still restored afterwards."""
    assert _ia64_groups("THASH(p8, r17, r8, r25)", tmp_path) == [
        ["(p8) mov r25=r8"],
        ["(p8) break 0xd"],
        ["(p8) mov r17=r8", "(p8) mov r8=r25"],
    ]


def test_thash_general_case_parks_r8(tmp_path: Path) -> None:
    assert _ia64_groups("THASH(p8, r17, r16, r25)", tmp_path) == [
        ["(p8) mov r25=r8", "(p8) mov r8=r16"],
        ["(p8) break 0xd"],
        ["(p8) mov r17=r8", "(p8) mov r8=r25"],
    ]


def test_thash_refuses_clob_equal_to_an_operand(tmp_path: Path) -> None:
    assert "THASH: clob must differ from reg0" in _ia64_error("THASH(p8, r17, r16, r17)", tmp_path)
    assert "THASH: clob must differ from reg1" in _ia64_error("THASH(p8, r17, r16, r16)", tmp_path)


# MOV_TO_KR(kr, reg, clob0, clob1): break 0x12 with r8 = index, r9 = value.

SET_KR = [["break 0x12"]]


def _sorted(groups: Groups) -> Groups:
    return [sorted(g) for g in groups]


@pytest.mark.parametrize(
    ("operands", "expected"),
    [
        # general: r8 parked in clob0, r9 in clob1
        (
            "r16, r17, r18",
            [["mov r17=r8", "mov r18=r9"], ["mov r8=6", "mov r9=r16"], *SET_KR, ["mov r8=r17", "mov r9=r18"]],
        ),
        # clob0 is r9: the clobbers swap roles, r9 needs no save
        ("r16, r9, r18", [["mov r18=r8"], ["mov r8=6", "mov r9=r16"], *SET_KR, ["mov r8=r18"]]),
        # clob1 is r8: swapped, r8 needs no save
        ("r16, r17, r8", [["mov r17=r9"], ["mov r8=6", "mov r9=r16"], *SET_KR, ["mov r9=r17"]]),
        # both r8 and r9 are clobbers, in either order: nothing to save
        ("r16, r8, r9", [["mov r8=6", "mov r9=r16"], *SET_KR]),
        ("r16, r9, r8", [["mov r8=6", "mov r9=r16"], *SET_KR]),
        # the value already in r9: no copy, and r9 is not parked
        ("r9, r17, r18", [["mov r17=r8"], ["mov r8=6"], *SET_KR, ["mov r8=r17"]]),
        # the value in r8: copied to r9 before r8 takes the index (same group: a WAR, allowed)
        (
            "r8, r17, r18",
            [["mov r17=r8", "mov r18=r9"], ["mov r8=6", "mov r9=r8"], *SET_KR, ["mov r8=r17", "mov r9=r18"]],
        ),
        # value in a clobber that is r9 itself
        ("r9, r17, r9", [["mov r17=r8"], ["mov r8=6"], *SET_KR, ["mov r8=r17"]]),
    ],
)
def test_mov_to_kr_cases(operands: str, expected: Groups, tmp_path: Path) -> None:
    assert _sorted(_ia64_groups(f"MOV_TO_KR(6, {operands})", tmp_path)) == _sorted(expected)


@pytest.mark.parametrize(
    ("operands", "message"),
    [
        ("r16, r17, r17", "clob0 and clob1 must be two different registers"),
        ("r16, r9, r9", "clob0 and clob1 must be two different registers"),
        ("r16, r8, r8", "clob0 and clob1 must be two different registers"),
        ("r16, r16, r17", "reg must not be a clobber"),
        ("r16, r9, r16", "reg must not be a clobber"),
    ],
)
def test_mov_to_kr_refuses_impossible_operands(operands: str, message: str, tmp_path: Path) -> None:
    assert f"MOV_TO_KR: {message}" in _ia64_error(f"MOV_TO_KR(6, {operands})", tmp_path)


def test_mov_to_kr_restores_every_register_it_borrows(tmp_path: Path) -> None:
    """Over many operand choices: r8 and r9 end as they began unless they are clobbers
    (or r9 is the value), and only clobbers, r8 and r9 are written."""
    registers = ["r8", "r9", "r16", "r17", "r18"]
    for reg in registers:
        for clob0 in registers:
            for clob1 in registers:
                if clob0 == clob1 or reg in {clob0, clob1} - {"r8", "r9"}:
                    continue  # refused (test above)
                instructions = _flat(_ia64_groups(f"MOV_TO_KR(6, {reg}, {clob0}, {clob1})", tmp_path))
                written = {i.split("=")[0].removeprefix("mov ") for i in instructions if "=" in i}
                assert written <= {"r8", "r9", clob0, clob1}, (reg, clob0, clob1, instructions)
                call = instructions.index("break 0x12")
                before, after = instructions[:call], instructions[call + 1 :]
                assert "mov r8=6" in before
                assert (f"mov r9={reg}" in before) == (reg != "r9")
                for fixed in ("r8", "r9"):
                    borrowed = fixed not in (clob0, clob1) and not (fixed == "r9" and reg == "r9")
                    restores = [i for i in after if i.startswith(f"mov {fixed}=")]
                    if borrowed:
                        assert len(restores) == 1, (reg, clob0, clob1, instructions)
                        parked = restores[0].split("=")[1]
                        assert f"mov {parked}={fixed}" in before and parked != reg
                    else:
                        assert not restores, (reg, clob0, clob1, instructions)


# BSW_1(clob0, clob1): r30/r31 are the fill pointers, clob1 holds the caller's ar.unat.


def _writes(instruction: str) -> set[str]:
    """The general registers an instruction writes (destination, post-increment base)."""
    found = set()
    head = re.match(r"^(?:\(p\d+\) )?[\w.]+ (r\d+)=", instruction)
    if head:
        found.add(head.group(1))
    found.update(re.findall(r"\[(r\d+)\],", instruction))
    return found


@pytest.mark.parametrize("clob1", [f"r{n}" for n in range(1, 30) if n != 12])
def test_bsw_1_restores_the_callers_ar_unat(clob1: str, tmp_path: Path) -> None:
    instructions = _flat(_ia64_groups(f"BSW_1(r2, {clob1})", tmp_path))
    assert instructions[0] == f"mov {clob1}=ar.unat"
    assert instructions[-1] == f"mov ar.unat={clob1}"
    between = instructions[1:-1]
    assert not [i for i in between if clob1 in _writes(i)], "the parked ar.unat is overwritten"
    filled = {m.group(1) for i in between if (m := re.match(r"ld8\.fill (r\d+)=", i))}
    bank = {f"r{n}" for n in range(16, 32)}
    assert filled == bank - {clob1}  # every bank-1 register but a banked clob1 is reloaded
    for register in filled:  # ... and its fill is the last write to it
        last = max(index for index, i in enumerate(between) if register in _writes(i))
        assert between[last].startswith(f"ld8.fill {register}="), (register, between[last])


@pytest.mark.parametrize("clob1", ["r30", "r31"])
def test_bsw_1_refuses_the_pointer_registers(clob1: str, tmp_path: Path) -> None:
    assert "BSW_1: clob1 must not be r30 or r31" in _ia64_error(f"BSW_1(r3, {clob1})", tmp_path)


def test_bsw_1_of_save_min_is_unchanged(tmp_path: Path) -> None:
    """XEN_DO_SAVE_MIN's BSW_1(r3, r14): the Linux sequence, pairwise fills through r30/r31."""
    groups = _ia64_groups("BSW_1(r3, r14)", tmp_path)
    fills = [g for g in groups if all(i.startswith("ld8.fill") for i in g)]
    assert len(fills) == 8
    for index, group in enumerate(fills[:-1]):
        even, odd = 16 + 2 * index, 17 + 2 * index
        assert group == [f"ld8.fill r{even}=[r30],16", f"ld8.fill r{odd}=[r31],16"]
    assert fills[-1] == ["ld8.fill r30=[r30]", "ld8.fill r31=[r31]"]


# --- x86-64 -----------------------------------------------------------------------------

CALLER_SAVED = ["rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"]
X86_GRS = [*CALLER_SAVED, "rbx", "rbp", "r12", "r13", "r14", "r15"]


def _x86_instructions(source: str, tmp_path: Path, *defines: str) -> list[str]:
    gcc = _tool("gcc", "gcc")
    objdump = _tool("objdump", "binutils")
    (tmp_path / "t.S").write_text(f'#include "pvops_asm.h"\n{source}\n')
    result = _run(gcc, "-c", "-x", "assembler-with-cpp", *defines, "-I", X86_HEADERS, tmp_path / "t.S",
                  "-o", tmp_path / "t.o")  # fmt: skip
    assert result.returncode == 0, result.stderr
    listing = _run(objdump, "-dr", "--no-show-raw-insn", tmp_path / "t.o")
    assert listing.returncode == 0, listing.stderr
    instructions = []
    for line in listing.stdout.splitlines():
        if m := re.match(r"^\s*[0-9a-f]+:\t(\S+)\s*(.*?)\s*$", line):
            instructions.append(f"{m.group(1)} {m.group(2)}".strip())
        elif m := re.match(r"^\s*[0-9a-f]+: R_X86_64_\w+\s+(\S+)", line):
            target = re.sub(r"[-+]0x[0-9a-f]+$", "", m.group(1))  # xen_read_cr2-0x4: the PC-relative addend
            instructions[-1] = f"{instructions[-1].split()[0]} <{target}>"
    return instructions


def test_xen_get_cr2_into_rdi_keeps_rax(tmp_path: Path) -> None:
    saved = [r for r in CALLER_SAVED if r != "rdi"]
    assert _x86_instructions("GET_CR2_INTO(%rdi)", tmp_path, "-DPVGEN_INSTANCE_XEN") == [
        *(f"push %{r}" for r in saved),
        "call <xen_read_cr2>",
        "mov %rax,%rdi",
        *(f"pop %{r}" for r in reversed(saved)),
    ]


def test_xen_get_cr2_into_rax_leaves_the_result_in_rax(tmp_path: Path) -> None:
    instructions = _x86_instructions("GET_CR2_INTO(%rax)", tmp_path, "-DPVGEN_INSTANCE_XEN")
    call = instructions.index("call <xen_read_cr2>")
    assert instructions[call + 1 :] == [f"pop %{r}" for r in reversed(CALLER_SAVED) if r != "rax"]
    assert not [i for i in instructions if "%rax" in i]  # not saved, not restored over, not moved


def _preserved(instructions: list[str], reg: str) -> tuple[list[str], list[str], list[str]]:
    """(pushed, popped, the instructions between the call and the pops)."""
    call = next(i for i, text in enumerate(instructions) if text.startswith("call"))
    pushed = [i.split("%")[1] for i in instructions[:call] if i.startswith("push")]
    tail = instructions[call + 1 :]
    popped = [i.split("%")[1] for i in tail if i.startswith("pop")]
    return pushed, popped, [i for i in tail if not i.startswith("pop")]


@pytest.mark.parametrize("reg", X86_GRS)
def test_xen_get_cr2_into_saves_what_the_paravirt_form_saves(reg: str, tmp_path: Path) -> None:
    """Under Xen only `reg` changes, as with native `movq %cr2, reg`; the registers saved
    around xen_read_cr2 are exactly those the paravirt site saves around its call."""
    xen = _preserved(_x86_instructions(f"GET_CR2_INTO(%{reg})", tmp_path, "-DPVGEN_INSTANCE_XEN"), reg)
    paravirt = _preserved(_x86_instructions(f"GET_CR2_INTO(%{reg})", tmp_path), reg)
    pushed, popped, moves = xen
    assert pushed == [r for r in CALLER_SAVED if r != reg]
    assert popped == list(reversed(pushed))
    assert moves == ([] if reg == "rax" else [f"mov %rax,%{reg}"])
    assert (pushed, popped) == paravirt[:2]
