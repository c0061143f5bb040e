"""The real spec against the reference facts: op inventory, template bytes, asm that assembles."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import pytest

from pvgen import ir
from pvgen.cli import load_and_check
from tests.conftest import ROOT

REFERENCE = ROOT.parent / "shared" / "reference"

# fmt: off
X86_OPS = {
    "init": ["patch"],
    "time": ["sched_clock", "steal_clock"],
    # v4.14 struct pv_cpu_ops member order (paravirt_types.h @3a485c2b).
    "cpu": [
        "get_debugreg", "set_debugreg", "read_cr0", "write_cr0", "write_cr4", "read_cr8", "write_cr8",
        "load_tr_desc", "load_gdt", "load_idt", "set_ldt", "store_tr", "load_tls", "load_gs_index",
        "write_ldt_entry", "write_gdt_entry", "write_idt_entry", "alloc_ldt", "free_ldt", "load_sp0",
        "set_iopl_mask", "wbinvd", "io_delay", "cpuid", "read_msr", "write_msr", "read_msr_safe", "write_msr_safe",
        "read_pmc", "usergs_sysret64", "iret", "swapgs", "start_context_switch", "end_context_switch",
    ],
    "irq": ["save_fl", "restore_fl", "irq_disable", "irq_enable", "safe_halt", "halt", "adjust_exception_frame"],
    # v4.14 struct pv_mmu_ops member order (the set_pud/set_p4d/set_pgd slots sit among the value ops).
    "mmu": [
        "read_cr2", "write_cr2", "read_cr3", "write_cr3", "activate_mm", "dup_mmap", "exit_mmap", "flush_tlb_user",
        "flush_tlb_kernel", "flush_tlb_one_user", "flush_tlb_others", "pgd_alloc", "pgd_free", "alloc_pte",
        "alloc_pmd", "alloc_pud", "alloc_p4d", "release_pte", "release_pmd", "release_pud", "release_p4d",
        "set_pte", "set_pte_at", "set_pmd", "ptep_modify_prot_start", "ptep_modify_prot_commit", "pte_val",
        "make_pte", "pgd_val", "make_pgd", "set_pud", "pmd_val", "make_pmd", "pud_val", "make_pud", "set_p4d",
        "p4d_val", "make_p4d", "set_pgd", "lazy_mode_enter", "lazy_mode_leave", "lazy_mode_flush", "set_fixmap",
    ],
    "lock": ["queued_spin_lock_slowpath", "queued_spin_unlock", "wait", "kick", "vcpu_is_preempted"],
}
IA64_CPU_OPS = {
    "fc": 1, "thash": 2, "get_cpuid": 3, "get_pmd": 4, "getreg": 0x10000000, "setreg": 0x20000000, "ptcga": 5,
    "get_rr": 6, "set_rr": 7, "set_rr0_to_rr4": 8, "ssm_i": 9, "rsm_i": 10, "get_psr_i": 11,
    "intrin_local_irq_restore": 12,
}
IA64_MACROS = (
    "MOV_FROM_IFA MOV_FROM_ITIR MOV_FROM_ISR MOV_FROM_IHA MOV_FROM_IPSR MOV_FROM_IIM MOV_FROM_IIP MOV_FROM_IVR "
    "MOV_FROM_PSR MOV_FROM_ITC MOV_TO_IFA MOV_TO_ITIR MOV_TO_IHA MOV_TO_IPSR MOV_TO_IFS MOV_TO_IIP MOV_TO_KR ITC_I "
    "ITC_D ITC_I_AND_D THASH SSM_PSR_IC_AND_DEFAULT_BITS_AND_SRLZ_I SSM_PSR_IC_AND_SRLZ_D RSM_PSR_IC SSM_PSR_I "
    "RSM_PSR_I RSM_PSR_I_IC RSM_PSR_DT RSM_PSR_BE_I SSM_PSR_DT_AND_SRLZ_I BSW_0 BSW_1 COVER RFI DO_SAVE_MIN"
).split()
# Our op name -> the reference template's name (x86_native_templates.json, 64-bit entries).
REFERENCE_TEMPLATE = {
    "irq.irq_disable": "64 irq_disable", "irq.irq_enable": "64 irq_enable", "irq.restore_fl": "64 restore_fl",
    "irq.save_fl": "64 save_fl", "cpu.iret": "64 iret (<=4.x)", "mmu.read_cr2": "64 read_cr2",
    "mmu.read_cr3": "64 read_cr3", "mmu.write_cr3": "64 write_cr3", "mmu.flush_tlb_one_user": "64 flush_tlb_single",
    "cpu.wbinvd": "64 wbinvd", "cpu.usergs_sysret64": "64 usergs_sysret64", "cpu.swapgs": "64 swapgs",
    "lock.queued_spin_unlock": "64 queued_spin_unlock", "lock.vcpu_is_preempted": "64 vcpu_is_preempted",
    "irq.safe_halt": "64 safe_halt native", "irq.halt": "64 halt native", "cpu.io_delay": "64 io_delay native",
}
# fmt: on


@cache
def spec() -> ir.Spec:
    result, _, diagnostics = load_and_check([str(ROOT / "spec")])
    assert result is not None, diagnostics.sorted()
    return result


def _group(arch: str, name: str) -> ir.Group:
    return next(g for g in spec().groups if g.arch == arch and g.name == name)


def test_x86_inventory_and_template_order() -> None:
    names = [g.name for g in spec().groups if g.arch == "x86_64" and g.ops]
    assert names == ["init", "time", "cpu", "irq", "mmu", "lock"]
    index = 0
    for group, ops in X86_OPS.items():
        assert [op.name for op in _group("x86_64", group).ops] == ops
        for op in _group("x86_64", group).ops:
            assert op.index == index
            index += 1
            assert {i.hypervisor for i in op.impls} == {"native", "xen", "kvm"}
            assert all(i.source != "fallback" for i in op.impls), op.qualname
    assert index < 256
    assert [d.name for d in _group("x86_64", "pv_info").data] == [
        "kernel_rpl",
        "shared_kernel_pmd",
        "paravirt_enabled",
        "extra_user_64bit_cs",
        "name",
    ]


def test_x86_callee_save_set() -> None:
    callee_save = {op.qualname for op in spec().ops("x86_64") if op.callee_save}
    identity = {f"mmu.{p}{s}" for p in ("pte", "pmd", "pud", "p4d", "pgd") for s in ("_val",)} | {
        f"mmu.make_{p}" for p in ("pte", "pmd", "pud", "p4d", "pgd")
    }
    flags = {"irq.save_fl", "irq.restore_fl", "irq.irq_disable", "irq.irq_enable"}
    assert callee_save == flags | identity | {"lock.queued_spin_unlock", "lock.vcpu_is_preempted"}
    for op in spec().ops("x86_64"):
        if op.callee_save:
            assert op.clobbers == ("rax",)
    jumps = {op.qualname for op in spec().ops("x86_64") if op.transfer == "jump"}
    assert jumps == {"cpu.iret", "cpu.usergs_sysret64"}


def _assemble(command: list[str], sources: list[str], prefix: str = "") -> list[bytes]:
    """Assembles each source in one assembler run, separated by labels; returns each one's bytes."""
    if shutil.which(command[0]) is None or shutil.which(prefix + "objcopy") is None:
        pytest.skip(f"{command[0]} is not installed (Debian: binutils, binutils-ia64-linux-gnu)")
    text = "".join(f".globl start{i}\nstart{i}:\n{src}\n" for i, src in enumerate(sources)) + "the_end:\n"
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "t.s").write_text(text)
        result = subprocess.run([*command, "-o", str(work / "t.o"), str(work / "t.s")], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        extract = [prefix + "objcopy", "-O", "binary", "-j", ".text", str(work / "t.o"), str(work / "t.bin")]
        subprocess.run(extract, check=True)
        blob = (work / "t.bin").read_bytes()
        symbols = subprocess.run([prefix + "nm", str(work / "t.o")], capture_output=True, text=True, check=True).stdout
    offsets = {m.group(2): int(m.group(1), 16) for m in re.finditer(r"([0-9a-f]+) \w (start\d+|the_end)", symbols)}
    bounds = [offsets[f"start{i}"] for i in range(len(sources))] + [offsets["the_end"]]
    return [blob[bounds[i] : bounds[i + 1]] for i in range(len(sources))]


def test_x86_native_templates_are_the_reference_bytes() -> None:
    reference = {t["name"]: t for t in json.loads((REFERENCE / "x86_native_templates.json").read_text())}
    ops = {op.qualname: op for op in spec().ops("x86_64")}
    names = sorted(REFERENCE_TEMPLATE)
    texts = []
    for name in names:
        native = ops[name].impl("native")
        assert native.kind == "asm", name
        texts.append(native.text)
    for name, blob in zip(names, _assemble(["as", "--64"], texts), strict=True):
        assert blob.hex() == reference[REFERENCE_TEMPLATE[name]]["bytes"], name
    identity = [op for op in spec().ops("x86_64") if op.impl("native").kind == "identity"]
    assert len(identity) == 10 and all(op.returns.size == 8 for op in identity)


def _ia64_substitute(text: str, params: tuple[ir.MacroParam, ...]) -> str:
    registers = {"gr": iter(f"r{n}" for n in range(16, 32)), "pr": iter(f"p{n}" for n in range(6, 16))}
    values = {p.name: next(registers[p.kind]) if p.kind in registers else "6" for p in params}
    return re.sub(r"\\([A-Za-z_][A-Za-z0-9_]*)", lambda m: values.get(m.group(1), m.group(0)), text)


def test_ia64_cpu_ops_and_macros() -> None:
    cpu = _group("ia64", "cpu")
    assert {op.name: op.index for op in cpu.ops} == IA64_CPU_OPS
    assert [m.name for m in spec().macros if m.arch == "ia64"] == sorted(IA64_MACROS)
    for op in cpu.ops:
        assert {i.hypervisor for i in op.impls} == {"native", "xen"}
    getreg = next(op for op in cpu.ops if op.name == "getreg")
    psr = next(v for v in getreg.variants if v.name == "PSR")
    assert psr.patch_type == 0x10000000 + 1019


def test_every_ia64_asm_text_assembles() -> None:
    sources = []
    for op in spec().ops("ia64"):
        for impl in [*op.impls, *(i for v in op.variants for i in v.impls)]:
            if impl.kind == "asm" and impl.source == "declared":
                sources.append(impl.text or "")
    for macro in spec().macros:
        if macro.arch == "ia64":
            sources += [_ia64_substitute(e.text, macro.params) for e in macro.expansions if e.source == "declared"]
    sources = [s for s in sources if "DO_SAVE_MIN" not in s]  # expands to a routine defined elsewhere
    blobs = _assemble(["ia64-linux-gnu-as", "-xnone"], [f"{s}\n;;\n.align 16" for s in sources], "ia64-linux-gnu-")
    assert all(len(b) % 16 == 0 and b for b in blobs)


def test_hypervisors_mask_yield_and_iommu() -> None:
    hypervisors = {h.name: h for h in spec().hypervisors}
    assert hypervisors["kvm"].detections[0].signature == "KVMKVMKVM"
    assert any(d.signature == "XenVMMXenVMM" for d in hypervisors["xen"].detections)
    assert hypervisors["xen"].execution == "pv" and hypervisors["kvm"].execution == "hvm"
    for mask in spec().masks:
        groups = {g.name for g in spec().groups if g.arch == mask.arch}
        assert {g for g, _ in mask.bits} == groups
        assert mask.cmdline == "pv_ops.native"
    microcode = next(y for y in spec().yields if y.name == "microcode_loader")
    assert microcode.function == "microcode_init" and microcode.hypervisors == ("kvm", "xen")
    order = [e.detect for e in spec().iommu if e.arch == "x86_64"]
    assert order[0] == "pci_xen_swiotlb_detect"
    for entry in spec().iommu:
        if entry.depends:
            assert order.index(entry.depends) < order.index(entry.detect)
    xen = next(e for e in spec().iommu if e.detect == "pci_xen_swiotlb_detect")
    assert xen.finish and xen.found_under == ("xen",)
