"""Writes a synthetic spec of N ops (for the compiler speed benchmarks) into a directory.

The ops look like the real x86-64 ones: a C signature, a category, clobbers and one
implementation per hypervisor. Groups hold 200 ops each; the template lists them all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

OPS_PER_GROUP = 200
PREAMBLE = """\
/// A synthetic 64-bit arch for compiler benchmarks.
arch synth {{
    isa x86_64;
    pointer_size 8;
    data_model LP64;
    registers rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15;
    args rdi, rsi, rdx, rcx, r8, r9;
    return rax;
    caller_saved rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11;
    callee_saved rbx, rbp, rsp, r12, r13, r14, r15;
    callee_save_clobbers rax;
    site_call "call *{{slot}}(%rip)";
    site_size 6;
    direct_call_size 5;
    site_type_bits {type_bits};
    nops "90";
    assembler "as --64";
    template {groups};
}}

/// Bare metal.
hypervisor native {{
    arches synth;
    detect synth default;
    execution bare;
    paravirt_enabled false;
}}

/// A paravirtual hypervisor.
hypervisor pvh {{
    arches synth;
    detect synth cpuid 0x40000000 "SynthSynthVM";
    execution pv;
    paravirt_enabled true;
}}

/// A hardware-assisted hypervisor.
hypervisor hvm {{
    arches synth;
    detect synth cpuid 0x40000000 "HvmHvmHvm";
    execution hvm;
    paravirt_enabled false;
}}
"""

OP = """\
    /// Synthetic op {n}: reads or writes one word of state.
    op unsigned long op_{n}(unsigned long addr, unsigned int flags) {{
        category patchable;
        clobbers rax, rcx, rdx;
        native asm "movq %rdi, %rax";
        pvh call pvh_op_{n};
        hvm native;
    }}
"""


def write_spec(directory: Path, ops: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    groups = [f"g{i}" for i in range((ops + OPS_PER_GROUP - 1) // OPS_PER_GROUP)]
    type_bits = max(8, ops.bit_length() + 1)
    root = directory / "synth.pvspec"
    includes = "".join(f'include "{g}.pvspec";\n' for g in groups)
    root.write_text(PREAMBLE.format(groups=", ".join(groups), type_bits=type_bits) + "\n" + includes)
    for index, group in enumerate(groups):
        first = index * OPS_PER_GROUP
        body = "".join(OP.format(n=n) for n in range(first, min(ops, first + OPS_PER_GROUP)))
        text = (
            f"/// Synthetic group {group}.\ngroup {group} {{\n    arch synth;\n    struct pv_{group}_ops;\n\n{body}}}\n"
        )
        (directory / f"{group}.pvspec").write_text(text)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ops", type=int)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    print(write_spec(args.directory, args.ops))


if __name__ == "__main__":
    main()
