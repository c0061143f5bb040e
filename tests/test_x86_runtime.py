"""The x86 runtime: guest library, hypervisor models, boot and patching, reports, against unicorn.

Every workload runs in both build modes under bare metal, KVM and Xen PV, patched and
unpatched, and must give the same result, except where a native-mode image meets Xen
PV: there the kernel is deprivileged and native irq code loses its interrupt state
(popf ignores IF at CPL 3), which is what pv_ops exists to fix. On bare metal the
patched paravirt image and the native image are also run on unicorn, which must end
with the same RAX and the same memory.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from pvgen.generated import pvops_x86_64 as layer
from pvgen.runtime.x86 import boot
from pvgen.runtime.x86.bench import site_profile
from pvgen.runtime.x86.boot import BootError
from pvgen.runtime.x86.hv import costs
from pvgen.runtime.x86.image import build_image, build_image_from_sources
from pvgen.runtime.x86.run import (
    ENTRY_SYMBOL,
    STACK_BASE,
    STACK_TOP,
    Machine,
    RunReport,
    _boot_symbols,
    boot_machine,
    format_report,
    run_image,
)

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("gcc", "ld")), reason="needs gcc and GNU ld"
)

HYPERVISORS = ("native", "kvm", "xen")
WORKLOAD_NAMES = ("sched", "pagetable", "spinlock", "switch")
PCPU_XEN_VCPU_INFO, PCPU_TIMER_PORT, PCPU_UPCALLS, PCPU_EVENTS, PCPU_PORT_EVENTS = 128, 68, 72, 80, 640

# Calls (nearly) every op through its wrapper and checks what it did; each passing check
# sets one bit, so the result must be the same under every hypervisor.
OPS_C = r"""
#include "guest.h"

struct qspinlock { unsigned char locked, pending; unsigned short tail; };

static pte_t table[512] __attribute__((aligned(4096)));
static pmd_t pmds[512] __attribute__((aligned(4096)));
static pgd_t top[512] __attribute__((aligned(4096)));
static struct desc_struct ldt[512] __attribute__((aligned(4096)));
static struct mm_struct mm = { .pgd = top };
static struct thread_struct thread;
static struct qspinlock lock;
static struct { u32 a, b, c, d; } leaf0;
extern struct desc_ptr idt_descr;
extern gate_desc idt_table[];
unsigned char patchbuf[16];

static void handler(void) {}

unsigned long workload_entry(void)
{
	unsigned long sum = 0, bit = 1;
#define CHECK(cond) do { if (cond) sum |= bit; bit <<= 1; } while (0)
	int err = 0;

	pv_cpuid(&leaf0.a, &leaf0.b, &leaf0.c, &leaf0.d);
	CHECK(leaf0.b == 0x756e6547);
	unsigned long cr0 = pv_read_cr0();
	pv_write_cr0(cr0 | 8);
	CHECK(pv_read_cr0() == (cr0 | 8));
	pv_write_cr0(cr0);
	CHECK(pv_read_cr0() == cr0);
	pv_write_cr2(0x1234);
	CHECK(pv_read_cr2() == 0x1234);
	pv_set_debugreg(0, 0xffffffff81000000UL);
	CHECK(pv_get_debugreg(0) == 0xffffffff81000000UL);
	CHECK(pv_read_msr(MSR_GS_BASE) == (unsigned long)&pvgen_percpu[0]);
	pv_read_msr_safe(0x12345678, &err);
	CHECK(err == -EIO);
	CHECK(pv_write_msr_safe(0x12345678, 1, 2) == -EIO);
	pv_write_msr(MSR_FS_BASE, 0x1000, 0);
	CHECK(pv_read_msr(MSR_FS_BASE) == 0x1000);
	pv_load_sp0(0xffffc90000123000UL);
	CHECK(this_cpu()->tss.sp0 == 0xffffc90000123000UL);
	pv_io_delay();
	pv_wbinvd();
	pv_flush_tlb_user();
	pv_flush_tlb_kernel();
	pv_flush_tlb_one_user(0xffffffff81000000UL);
	struct cpumask everyone = { { ~0UL } };
	struct flush_tlb_info info = { &mm, 0, TLB_FLUSH_ALL };
	pv_flush_tlb_others(&everyone, &info);
	u64 code = 0x00affa000000ffffULL;
	pv_alloc_ldt(ldt, 512);
	pv_write_ldt_entry(ldt, 1, &code);
	CHECK(*(u64 *)&ldt[1] == (code | (3ULL << 45)));
	pv_set_ldt(ldt, 512);
	pv_set_ldt(0, 0);
	pv_free_ldt(ldt, 512);
	thread.tls_array[0] = *(struct desc_struct *)&code;
	pv_load_tls(&thread, 0);
	CHECK(*(u64 *)&this_cpu()->gdt[GDT_ENTRY_TLS_MIN] == code);
	pv_write_gdt_entry(this_cpu()->gdt, 5, &code, 0);
	CHECK(*(u64 *)&this_cpu()->gdt[5] == code);
	struct desc_ptr gdt = { sizeof(this_cpu()->gdt) - 1, (unsigned long)this_cpu()->gdt };
	pv_load_gdt(&gdt);
	pv_load_idt(&idt_descr);
	gate_desc gate = { 0 };
	unsigned long target = (unsigned long)handler;
	gate.offset_low = (u16)target; gate.offset_middle = (u16)(target >> 16); gate.offset_high = (u32)(target >> 32);
	gate.segment = __KERNEL_CS; gate.type = 0xe; gate.dpl = 0; gate.p = 1;
	pv_write_idt_entry(idt_table, 3, &gate);
	CHECK(idt_table[3].offset_low == (u16)target);
	pv_lazy_mode_enter();
	pv_set_pte(&table[1], pv_make_pte(0x5000 | 3));
	pv_set_pte(&table[2], pv_make_pte(0x20000000 | 3));
	pv_lazy_mode_flush();
	pv_set_pte_at(&mm, 0, &table[3], pv_make_pte(0x7000 | 1));
	pv_lazy_mode_leave();
	CHECK(pv_pte_val(table[1]) == (0x5000 | 3));
	CHECK(pv_pte_val(table[2]) == (0x20000000 | 3));
	CHECK(pv_pte_val(table[3]) == (0x7000 | 1));
	pv_set_pmd(&pmds[0], pv_make_pmd(__pa(table) | 3));
	CHECK(pv_pmd_val(pmds[0]) == (__pa(table) | 3));
	pv_set_pud(&pmds[1], pv_make_pud(__pa(table) | 3));
	CHECK(pv_pud_val(pmds[1]) == (__pa(table) | 3));
	pv_set_p4d(&pmds[2], pv_make_p4d(__pa(pmds) | 3));
	CHECK(pv_p4d_val(pmds[2]) == (__pa(pmds) | 3));
	pv_set_pgd(&top[0], pv_make_pgd(__pa(pmds) | 3));
	CHECK(pv_pgd_val(top[0]) == (__pa(pmds) | 3));
	CHECK(pv_pgd_alloc(&mm) == 0);
	pv_activate_mm(0, &mm);
	pv_alloc_pte(&mm, __pa(table) >> 12);
	pv_alloc_pmd(&mm, __pa(pmds) >> 12);
	pv_release_pte(__pa(table) >> 12);
	pv_release_pmd(__pa(pmds) >> 12);
	pv_exit_mmap(&mm);
	pv_dup_mmap(0, &mm);
	pv_exit_mmap(&mm);
	pv_pgd_free(&mm, top);
	pte_t old = pv_ptep_modify_prot_start(&mm, 0, &table[1]);
	CHECK(table[1] == 0);
	pv_ptep_modify_prot_commit(&mm, 0, &table[1], old);
	CHECK(pv_pte_val(table[1]) == (0x5000 | 3));
	pv_set_fixmap(3, __pa(table), 0x163);
	(void)pv_sched_clock();
	CHECK(pv_steal_clock(0) == 0);
	lock.locked = 1;
	pv_queued_spin_unlock(&lock);
	CHECK(lock.locked == 0);
	CHECK(!pv_vcpu_is_preempted(1));
	pv_start_context_switch((struct task_struct *)&thread);
	pv_load_sp0(0xffffc90000124000UL);
	pv_end_context_switch((struct task_struct *)&thread);
	CHECK(this_cpu()->tss.sp0 == 0xffffc90000124000UL);
	pv_swapgs();
	pv_swapgs();
	CHECK(this_cpu()->self == &pvgen_percpu[0]);
	pv_set_iopl_mask(0);
	pv_write_cr8(0);
	CHECK(pv_read_cr8() == 0);
	CHECK(pv_read_pmc(0) == 0);
	pv_load_gs_index(0);
	CHECK(this_cpu()->self == &pvgen_percpu[0]);
	(void)pv_store_tr();
	pv_load_tr_desc();
	unsigned long flags = pv_save_fl();
	pv_irq_disable();
	CHECK(!(pv_save_fl() & 0x200));
	pv_irq_enable();
	CHECK(pv_save_fl() & 0x200);
	pv_restore_fl(flags);
	CHECK(bit == 1UL << 34);
	return sum;
}

/* The guest's own patcher (pv_ops.init.patch) on a 6-byte site at `addr`: bytes in patchbuf. */
unsigned long patch_one(unsigned long type, unsigned long addr)
{
	for (int i = 0; i < 16; i++)
		patchbuf[i] = 0xcc;
	return pv_patch((u8)type, 0x1ff, patchbuf, addr, 6);
}

unsigned long irq_off(void) { pv_irq_disable(); return 0; }
unsigned long irq_on(void) { pv_irq_enable(); return 0; }
unsigned long io_delays(void) { for (int i = 0; i < 10; i++) pv_io_delay(); return 10; }
unsigned long halt_now(void) { pv_safe_halt(); return 1; }
"""
OPS_ALL = (1 << 35) - 1


# -- images ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Every image the tests run, built once into a per-session cache."""
    cache = tmp_path_factory.mktemp("images")
    sources = tmp_path_factory.mktemp("sources")
    (sources / "ops.c").write_text(OPS_C)
    built = {}
    for mode in ("paravirt", "native"):
        for name in WORKLOAD_NAMES:
            built[name, mode] = build_image(name, mode, cache)
        built["ops", mode] = build_image_from_sources("ops", [sources / "ops.c"], mode, cache)
    return built


def outcome(report: RunReport) -> tuple[str, int | str]:
    """What must agree between environments: how the run ended, and RAX (or the fault and its function)."""
    if report.fault:
        return report.reason, f"{report.fault.split()[0]} in {report.fault.split(' in ')[-1].split('+')[0]}"
    return report.reason, report.rax


def test_images_are_cached_by_content(images: dict[tuple[str, str], Path]) -> None:
    path = images["sched", "paravirt"]
    stamp = path.stat().st_mtime_ns
    assert build_image("sched", "paravirt", path.parent) == path
    assert path.stat().st_mtime_ns == stamp
    assert build_image("sched", "native", path.parent) != path


# -- the workloads everywhere --------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKLOAD_NAMES)
def test_workload_gives_the_same_result_everywhere(images: dict[tuple[str, str], Path], name: str) -> None:
    runs: dict[str, RunReport] = {}
    for hypervisor in HYPERVISORS:
        for patch in (True, False):
            runs[f"paravirt/{hypervisor}/{'patched' if patch else 'unpatched'}"] = run_image(
                images[name, "paravirt"], hypervisor, patch=patch
            )
        runs[f"native/{hypervisor}"] = run_image(images[name, "native"], hypervisor)
    reference = outcome(runs["native/native"])
    for label, report in runs.items():
        if label == "native/xen":
            continue  # below: a native kernel is not a PV kernel
        assert outcome(report) == reference, f"{name} {label}: {outcome(report)} != {reference}"
        assert report.irqs_enabled, label
    assert reference[0] == "return"
    for hypervisor in HYPERVISORS:
        assert runs[f"paravirt/{hypervisor}/patched"].detected == hypervisor

    native_on_xen = runs["native/xen"]
    traps = native_on_xen.stats.traps
    if name == "sched":
        # cli traps and is emulated (Linux asks Xen for a virtual IOPL), but popf at CPL 3
        # cannot re-enable events: the kernel ends with them masked, where pv_ops keeps them on.
        assert outcome(native_on_xen) == reference
        assert traps["cli"] == 400 and not native_on_xen.irqs_enabled
        assert runs["paravirt/xen/patched"].irqs_enabled
    elif name == "switch":
        assert outcome(native_on_xen) == reference
        assert traps["swapgs"] == 400 and traps["mov_cr_read"] == 201
    elif name == "pagetable":
        assert outcome(native_on_xen) == reference
        assert traps["invlpg"] == 256 and traps["mov_cr_write"] == 9
    else:
        assert name == "spinlock"
        assert outcome(native_on_xen) == reference and not traps  # nothing privileged in it


def test_xen_paravirt_work_goes_through_hypercalls(images: dict[tuple[str, str], Path]) -> None:
    report = run_image(images["pagetable", "paravirt"], "xen")
    calls = report.stats.hypercalls
    assert calls["mmu_update"] == 256 and calls["mmuext_op"] == 256 + 9  # set_pte; invlpg and write_cr3
    assert not report.stats.traps
    assert report.ops["mmu.make_pte"].calls == 256 and report.ops["mmu.set_pte"].entries == 256
    switch = run_image(images["switch", "paravirt"], "xen")
    assert switch.stats.hypercalls == {"stack_switch": 200, "iret": 200}  # load_sp0 batched, then xen_iret


def test_native_image_cannot_run_everything_under_xen(images: dict[tuple[str, str], Path]) -> None:
    assert run_image(images["ops", "paravirt"], "xen").rax == OPS_ALL
    report = run_image(images["ops", "native"], "xen")
    assert report.reason == "crash" and "lldt" in (report.fault or "") and "native_set_ldt" in (report.fault or "")


@pytest.mark.parametrize("hypervisor", HYPERVISORS)
def test_every_op_does_its_job(images: dict[tuple[str, str], Path], hypervisor: str) -> None:
    report = run_image(images["ops", "paravirt"], hypervisor)
    assert (report.reason, report.rax) == ("return", OPS_ALL), format_report(report)
    assert report.stats.guest_exceptions["#GP"] == 2  # the two _safe MSR accesses, fixed up
    if hypervisor != "xen":
        assert run_image(images["ops", "native"], hypervisor).rax == OPS_ALL


# -- patching -------------------------------------------------------------------------------------


def test_sites_are_patched_by_kind(images: dict[tuple[str, str], Path]) -> None:
    irq = ("irq.save_fl", "irq.restore_fl", "irq.irq_disable")
    for hypervisor, kind in (("native", "inline"), ("kvm", "inline"), ("xen", "call")):
        report = run_image(images["sched", "paravirt"], hypervisor)
        for op in irq:
            assert report.ops[op].sites == {kind: 1}, (hypervisor, op)
            assert report.ops[op].calls == 400
    switch = {h: run_image(images["switch", "paravirt"], h).ops for h in HYPERVISORS}
    assert switch["native"]["cpu.iret"].sites == {"inline": 1}  # iretq in the 6-byte jump site
    assert switch["xen"]["cpu.iret"].sites == {"jump": 1}  # jmp xen_iret
    assert switch["native"]["cpu.swapgs"].sites == {"inline": 2}
    assert switch["xen"]["cpu.swapgs"].sites == {"nop": 2}  # Xen switches GS itself
    assert switch["native"]["cpu.start_context_switch"].sites == {"nop": 1}
    assert switch["xen"]["cpu.start_context_switch"].sites == {"call": 1}
    assert switch["xen"]["cpu.load_sp0"].symbol == "xen_load_sp0"
    unpatched = run_image(images["sched", "paravirt"], "xen", patch=False)
    assert set(unpatched.sites) == {"indirect"} and unpatched.ops["irq.irq_disable"].calls == 400


def test_swapgs_sites_are_the_bare_call(images: dict[tuple[str, str], Path]) -> None:
    """SWAPGS clobbers nothing (Linux 2.6.30+): its site is the 6-byte call, no saves around it,
    and natively it becomes swapgs with pad prefixes, one instruction. Under Xen it is nothing:
    the first site (exit_to_task's first instruction, followed by one instruction before the
    next site) is one NOP; the second folds into `leaq 1(%rdi), %rax` before it (five pad
    prefixes) and the `movq %rsp, %rdx` after it (one)."""
    path = images["switch", "paravirt"]
    sites = [site for site in boot.read_sites(path) if site.index == layer.OPS_BY_NAME["cpu.swapgs"].index]
    assert len(sites) == 2 and all(site.length == 6 and site.clobbers == 0 for site in sites)
    machine, _ = boot_machine(path, "native", patch=False)
    assert all(machine.cpu.memory.read(site.address, 2) == b"\xff\x15" for site in sites)
    machine, state = boot_machine(path, "native", patch=True)
    for site in sites:
        assert machine.cpu.memory.read(site.address, site.length) == b"\x2e\x2e\x2e\x0f\x01\xf8"
    assert not set(state["site_anchors"]) & {site.address for site in sites}
    machine, state = boot_machine(path, "xen", patch=True)
    first, second = sorted(sites, key=lambda site: site.address)
    assert machine.cpu.memory.read(first.address, 6) == b"\x66\x0f\x1f\x44\x00\x00"
    lea = state["site_anchors"][second.address]
    assert lea == first.address + 6 and second.address not in state["site_anchors"].values()
    folded = b"\x2e" * 5 + b"\x48\x8d\x47\x01" + b"\x2e\x48\x89\xe2"  # lea 1(%rdi),%rax; mov %rsp,%rdx
    assert machine.cpu.memory.read(lea, len(folded)) == folded


def _decoded(code: bytes, address: int) -> list[tuple[str, int | None]]:
    """Each instruction as text without segment overrides (a pad prefix shows as `cs:`) and the
    absolute target of a RIP-relative operand."""
    import capstone
    from capstone import x86_const

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    out, size = [], 0
    for insn in md.disasm(code, address):
        size += insn.size
        target = None
        for operand in insn.operands:
            if operand.type == x86_const.X86_OP_MEM and operand.mem.base == x86_const.X86_REG_RIP:
                target = insn.address + insn.size + operand.mem.disp
            elif insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_CALL):
                target = operand.imm if operand.type == x86_const.X86_OP_IMM else None
        text = f"{insn.mnemonic} {insn.op_str}".replace("cs:", "").strip()
        out.append((re.sub(r"\[rip [+-] 0x[0-9a-f]+\]|\[rip [+-] \d+\]", "[rip]", text), target))
    assert size == len(code), code.hex()
    return out


@pytest.mark.parametrize("hypervisor", ["native", "kvm", "xen"])
@pytest.mark.parametrize("name", [*WORKLOAD_NAMES, "ops"])
def test_folded_sites_keep_every_neighbour(images: dict[tuple[str, str], Path], name: str, hypervisor: str) -> None:
    """Every run boot rewrote to fold a site's padding decodes (capstone) to the instructions it
    held before, in order, with the site's patched code in place of the call, nothing else: no
    NOP, and every RIP-relative operand and branch still names the same address."""
    path = images[name, "paravirt"]
    original, _ = boot_machine(path, hypervisor, patch=False)
    machine, state = boot_machine(path, hypervisor, patch=True)
    sites = {site.address: site for site in state["site_records"]}
    for address, fold in state["site_folds"].items():
        site = sites[address]
        before = original.cpu.memory.read(fold.start, address - fold.start)
        after = original.cpu.memory.read(address + site.length, fold.end - address - site.length)
        expected = [
            *_decoded(before, fold.start),
            *_decoded(fold.body, address),
            *_decoded(after, address + site.length),
        ]
        rewritten = machine.cpu.memory.read(fold.start, fold.end - fold.start)
        assert _decoded(rewritten, fold.start) == expected, f"{name} under {hypervisor}: site at {address:#x}"
        assert not any(text.startswith("nop") for text, _ in _decoded(rewritten, fold.start))
        assert rewritten.count(b"\x2e") >= fold.pad
    if name in ("pagetable", "switch") and hypervisor == "native":
        # Natively, every executed site of an op the native build compiles away (start/end_context_switch;
        # make_pte and pte_val) is folded: none of them costs an instruction.
        profile = site_profile(path)
        empty = [s for s in profile["per_site"] if s["natively_empty"] and s["executions"]]
        assert empty and all(s["folded_from"] is not None for s in empty)
        assert profile["folded_executions"] == profile["natively_empty_executions"] > 0
        assert profile["unfolded_empty_executions"] == profile["nop_insns_executed"] == 0


def _split_nops(data: bytes) -> list[bytes]:
    out, position = [], 0
    while position < len(data):
        nop = next(n for n in sorted(layer.NOPS, key=len, reverse=True) if data.startswith(n, position))
        out.append(nop)
        position += len(nop)
    return out


def _patch_one(hypervisor: str, qualname: str, code: bytes, clobbers: int) -> tuple[boot.PatchReport, bytes]:
    """patch_sites on one synthetic site at 0x1000 (pv_ops at 0x8000, every symbol at 0x9000)."""
    op = layer.OPS_BY_NAME[qualname]
    memory = bytearray(0x100)
    memory[0 : len(code)] = code
    table = {qualname: boot.implementation_symbol(layer, op, hypervisor, frozenset())}
    symbols = {"pv_ops": 0x8000, table[qualname]: 0x9000}
    written: dict[int, bytes] = {}

    def read(address: int, size: int) -> bytes:
        return bytes(memory[address - 0x1000 : address - 0x1000 + size])

    def write(address: int, data: bytes) -> None:
        written[address] = data

    site = boot.SiteRecord(0x1000, op.index, len(code), clobbers)
    report = boot.patch_sites(layer, hypervisor, frozenset(), [site], symbols, read, write, table)
    return report, written[0x1000]


def _call(qualname: str, offset: int) -> bytes:
    op = layer.OPS_BY_NAME[qualname]
    return b"\xff\x15" + struct.pack("<i", 0x8000 + op.index * 8 - (0x1000 + offset + 6))


CS = b"\x2e"  # the x86-64 pad prefix: a CS override, ignored in 64-bit mode


def test_whole_sites_are_patched_safely() -> None:
    disable = b"\x50" + _call("irq.irq_disable", 1) + b"\x58"  # DISABLE_INTERRUPTS(CLBR_NONE)
    _, data = _patch_one("native", "irq.irq_disable", disable, 0x1)
    # cli writes no register, so the push and pop go; five pad prefixes, then one 2-byte NOP.
    assert data == CS * 5 + b"\xfa" + b"\x66\x90"
    # xen_irq_disable_direct keeps every register but %rax: the %rax save stays around the direct
    # call, which takes the spare byte as a prefix (`cs call`), so rel32 counts from its real end.
    report, data = _patch_one("xen", "irq.irq_disable", disable, 0x1)
    assert report.by_kind == {"call": 1}
    assert data == b"\x50" + CS + b"\xe8" + struct.pack("<i", 0x9000 - 0x1007) + b"\x58"
    # A template that writes a saved register (pushfq; popq %rax) stays inside the saves.
    save = b"\x50" + _call("irq.save_fl", 1) + b"\x58"
    _, data = _patch_one("native", "irq.save_fl", save, 0x1)
    assert data == CS * 4 + b"\x50\x9c\x58\x58"
    # GET_CR2_INTO(%rdx): mov %cr2, %rax stays inside the saves; Xen's plain C call keeps them all too.
    saves = (0, 1, 6, 7, 8, 9, 10, 11)  # all but %rdx
    pushes = b"".join(bytes([0x41, 0x50 + r - 8]) if r >= 8 else bytes([0x50 + r]) for r in saves)
    pops = b"".join(bytes([0x41, 0x58 + r - 8]) if r >= 8 else bytes([0x58 + r]) for r in reversed(saves))
    cr2 = pushes + _call("mmu.read_cr2", len(pushes)) + b"\x48\x89\xc2" + pops
    _, data = _patch_one("native", "mmu.read_cr2", cr2, 0x1FF)
    assert data == CS * 3 + pushes + b"\x0f\x20\xd0" + b"\x48\x89\xc2" + pops
    _, data = _patch_one("xen", "mmu.read_cr2", cr2, 0x1FF)
    call = CS + b"\xe8" + struct.pack("<i", 0x9000 - (0x1000 + len(pushes) + 6))
    assert data == pushes + call + b"\x48\x89\xc2" + pops


def test_padding_prefers_prefixes_and_long_nops() -> None:
    padder = boot.Padder.of(layer)
    assert padder.prefix == CS and padder.limit == 5
    # Room for five prefixes per instruction: two instructions absorb up to ten bytes.
    assert padder.pad([(b"\x9c\x58", ((0, 5), (1, 5)))], 6) == CS * 4 + b"\x9c\x58"
    assert padder.pad([(b"\x9c\x58", ((0, 5), (1, 5)))], 12) == CS * 5 + b"\x9c" + CS * 5 + b"\x58"
    # What prefixes cannot absorb is NOPs, the longest first (an eight-byte NOP with prefixes).
    assert (
        padder.pad([(b"\xfa", ((0, 5),))], 20)
        == CS * 5 + b"\xfa" + CS * 5 + bytes.fromhex("0f1f840000000000") + b"\x90"
    )
    assert padder.nops_for(13) == CS * 5 + bytes.fromhex("0f1f840000000000")
    assert padder.nops_for(3) == bytes.fromhex("0f1f00")
    # A template with no pad room (a relative branch, a segment override) is padded with NOPs only.
    assert padder.pad([(b"\x0f\x0b", ())], 6) == b"\x0f\x0b" + bytes.fromhex("0f1f4000")


def test_templates_with_branches_or_segment_overrides_have_no_pad_room() -> None:
    from pvgen import assemble
    from pvgen.cli import load_and_check

    spec, _, _ = load_and_check([str(Path(__file__).resolve().parent.parent / "spec")])
    assert spec is not None
    arch = next(a for a in spec.arches if a.name == "x86_64")
    assert arch.pad_prefix == "2e" and arch.pad_prefix_limit == 5
    # cli; pushfq; popq %rax: every instruction takes prefixes, up to the limit.
    assert assemble.pad_room(arch, assemble._decode_x86(b"\xfa", [], arch).prefixable) == ((0, 5),)
    # movb $1, %gs:8 has a segment override: no room. A jz inside a template: no room anywhere.
    assert assemble._decode_x86(bytes.fromhex("65c604250800000001"), [], arch).prefixable == ()
    assert assemble._decode_x86(bytes.fromhex("85c07401fa"), [], arch).prefixable == ()
    # An operand-size prefix counts against the limit.
    assert assemble.pad_room(arch, assemble._decode_x86(bytes.fromhex("6690"), [], arch).prefixable) == ((0, 4),)


def test_a_site_whose_saves_do_not_match_is_refused() -> None:
    unbalanced = b"\x50" + _call("irq.irq_disable", 1) + b"\x59"  # push %rax ... pop %rcx
    with pytest.raises(BootError, match=r"site at 0x1000 for irq\.irq_disable is not the expected indirect call"):
        _patch_one("native", "irq.irq_disable", unbalanced, 0x1)
    elsewhere = b"\x50" + _call("irq.irq_enable", 1) + b"\x58"  # through another op's slot
    with pytest.raises(BootError, match=r"site at 0x1000 for irq\.irq_disable is not the expected"):
        _patch_one("native", "irq.irq_disable", elsewhere, 0x1)


def test_unpatched_sites_keep_the_indirect_call(images: dict[tuple[str, str], Path]) -> None:
    machine, _ = boot_machine(images["sched", "paravirt"], "native", patch=False)
    for site in boot.read_sites(images["sched", "paravirt"]):
        assert machine.cpu.memory.read(site.address, 2) == b"\xff\x15"
    machine, _ = boot_machine(images["sched", "paravirt"], "native", patch=True)
    codes = {machine.cpu.memory.read(site.address, 1) for site in boot.read_sites(images["sched", "paravirt"])}
    assert b"\xff" not in codes


def test_a_corrupted_site_is_refused_with_its_address(images: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    from elftools.elf.elffile import ELFFile

    original = images["sched", "paravirt"]
    site = boot.read_sites(original)[0]
    with original.open("rb") as stream:
        segment = next(
            s
            for s in ELFFile(stream).iter_segments()
            if s["p_type"] == "PT_LOAD" and s["p_vaddr"] <= site.address < s["p_vaddr"] + s["p_filesz"]
        )
        offset = segment["p_offset"] + site.address - segment["p_vaddr"]
    data = bytearray(original.read_bytes())
    assert data[offset : offset + 2] == b"\xff\x15"
    data[offset : offset + 6] = b"\x90" * 6
    corrupted = tmp_path / "corrupted.elf"
    corrupted.write_bytes(bytes(data))
    with pytest.raises(BootError, match=f"site at {site.address:#x} .* is not the expected indirect call"):
        run_image(corrupted, "native")


def test_bad_images_are_refused_clearly(images: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.elf"
    garbage.write_bytes(b"not an ELF file at all")
    with pytest.raises(BootError, match="not a well-formed ELF image"):
        run_image(garbage, "native")
    with pytest.raises(BootError, match="unknown hypervisor 'vmware'"):
        run_image(images["sched", "native"], "vmware")


def test_no_site_section_is_fine(images: dict[tuple[str, str], Path]) -> None:
    report = run_image(images["spinlock", "native"], "kvm")
    assert report.sites == {} and report.reason == "return"
    assert report.ops["lock.queued_spin_unlock"].symbol == ""  # inline native code: no function
    assert report.ops["mmu.set_pte"].kind == "call"


@pytest.mark.parametrize(
    ("hypervisor", "cmdline"), [("native", ""), ("kvm", ""), ("xen", ""), ("xen", "pv_ops.native=lock,cpu")]
)
def test_guest_patcher_agrees_with_boot(images: dict[tuple[str, str], Path], hypervisor: str, cmdline: str) -> None:
    """pv_ops.init.patch in the guest (native_patch, xen_patch) against boot.py and the generated layer."""
    machine, state = boot_machine(images["ops", "paravirt"], hypervisor, cmdline=cmdline)
    symbols = _boot_symbols(machine.image.symbols)
    address = machine.symbol(ENTRY_SYMBOL)
    for op in layer.OPS:
        if op.index < 0:
            continue
        used = machine.call(machine.symbol("patch_one"), (op.index, address)).rax
        written = machine.cpu.memory.read(machine.symbol("patchbuf"), 16)[:used]
        decision = layer.patch_decision(op.index, state["detected"], 6, state["masked"])
        slot = state["table"][f"{op.group}.{op.name}"]
        if decision.kind in ("inline", "nop"):
            expected = bytes(decision.code)
        elif decision.kind == "indirect":
            expected = b"\xcc" * 6  # unchanged: the patcher returns the site's length
        else:
            opcode = b"\xe9" if decision.kind == "jump" else b"\xe8"
            expected = opcode + struct.pack("<i", symbols[slot] - (address + 5))
        assert written == expected, f"{op.group}.{op.name}: guest {written.hex()} boot {expected.hex()}"


# -- Xen events -----------------------------------------------------------------------------------


def test_xen_irq_disable_masks_and_enable_delivers_a_pending_event(images: dict[tuple[str, str], Path]) -> None:
    machine, _ = boot_machine(images["ops", "paravirt"], "xen")
    cpu, xen = machine.cpu, machine.env
    percpu = machine.symbol("pvgen_percpu")
    vcpu_info = percpu + PCPU_XEN_VCPU_INFO
    assert xen.vcpu_info_va == vcpu_info  # registered with VCPUOP_register_vcpu_info
    assert cpu.memory.read(vcpu_info, 2) == b"\x00\x00"  # pending @0, mask @1: events on after boot

    machine.call(machine.symbol("irq_off"))
    assert cpu.memory.read(vcpu_info + 1, 1) == b"\x01"
    (port,) = struct.unpack("<i", cpu.memory.read(percpu + PCPU_TIMER_PORT, 4))
    assert port > 0  # VIRQ_TIMER bound at boot
    delivered = xen.stats.events_delivered
    xen.raise_event(cpu, port)
    xen.tick(cpu)  # an interrupt point: masked, so nothing happens
    assert cpu.memory.read(vcpu_info, 2) == b"\x01\x01"
    assert xen.stats.events_delivered == delivered

    before = xen.stats.copy()
    machine.call(machine.symbol("irq_on"))
    after = xen.stats.since(before)
    assert after.events_delivered == 1
    assert after.hypercalls == {"xen_version": 1, "iret": 1}  # check_events, then the upcall's return
    assert cpu.memory.read(vcpu_info, 2) == b"\x00\x00"
    upcalls, events = struct.unpack("<QQ", cpu.memory.read(percpu + PCPU_UPCALLS, 16))
    assert (upcalls, events) == (1, 1)
    (port_events,) = struct.unpack("<I", cpu.memory.read(percpu + PCPU_PORT_EVENTS + 4 * port, 4))
    assert port_events == 1


def test_xen_timer_events_reach_only_a_paravirt_kernel(images: dict[tuple[str, str], Path]) -> None:
    options = {"timer_period_ns": 2000}
    paravirt = run_image(images["sched", "paravirt"], "xen", options=options)
    native = run_image(images["sched", "native"], "xen", options=options)
    reference = run_image(images["sched", "native"], "native")
    assert paravirt.rax == native.rax == reference.rax
    assert paravirt.stats.events_delivered > 0
    assert paravirt.stats.events_delivered == paravirt.stats.hypercalls["iret"]
    assert native.stats.events_raised > 0 and native.stats.events_delivered == 0
    assert paravirt.irqs_enabled and not native.irqs_enabled


def test_halting(images: dict[tuple[str, str], Path]) -> None:
    no_timer: dict[str, dict[str, Any]] = {"native": {}, "kvm": {}, "xen": {"timer_period_ns": None}}
    for hypervisor, reason in (("native", "hlt"), ("kvm", "hlt"), ("xen", "blocked")):
        machine, _ = boot_machine(images["ops", "paravirt"], hypervisor, options=no_timer[hypervisor])
        machine.cpu.rflags |= 0x200
        result = machine.call(machine.symbol("halt_now"))
        assert result.reason == "hlt" and (machine.env.halted_reason or "hlt") == reason
    # With a timer, a blocked Xen vCPU sleeps until it fires and the event wakes it.
    machine, _ = boot_machine(images["ops", "paravirt"], "xen", options={"timer_period_ns": 100_000})
    assert machine.call(machine.symbol("halt_now")).rax == 1
    assert machine.env.stats.events_delivered == 1


# -- masks -----------------------------------------------------------------------------------------


def test_masking_irq_under_kvm_changes_nothing(images: dict[tuple[str, str], Path]) -> None:
    """KVM's irq ops are the native ones (`kvm native;`) and VMX never exits on cli/sti/pushf/popf."""
    plain = run_image(images["sched", "paravirt"], "kvm")
    masked = run_image(images["sched", "paravirt"], "kvm", cmdline="pv_ops.native=irq")
    assert masked.mask == ("irq",)
    assert masked.ops["irq.irq_disable"].hypervisor == "native"
    assert masked.ops["irq.irq_disable"].sites == plain.ops["irq.irq_disable"].sites == {"inline": 1}
    assert masked.mask_cost == {"cycles": 0.0, "instructions": 0.0, "vm_exits": 0.0, "traps": 0.0, "hypercalls": 0.0}


def test_masking_cpu_under_kvm_adds_io_exits(images: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    machine, _ = boot_machine(images["ops", "paravirt"], "kvm")
    machine.call(machine.symbol("io_delays"))
    assert "io" not in machine.env.stats.vm_exits  # kvm_io_delay does nothing
    machine, state = boot_machine(images["ops", "paravirt"], "kvm", cmdline="pv_ops.native=cpu")
    before = machine.env.stats.copy()
    machine.call(machine.symbol("io_delays"))
    assert machine.env.stats.since(before).vm_exits == {"io": 10}  # outb $0x80 exits each time
    assert ("out", 0x80, 1) in machine.env.io
    assert state["masked"] == frozenset({"cpu"})


def test_masking_lock_under_kvm_and_xen(images: dict[tuple[str, str], Path]) -> None:
    for hypervisor in ("kvm", "xen"):
        report = run_image(images["spinlock", "paravirt"], hypervisor, cmdline="pv_ops.native=lock")
        assert report.ops["lock.queued_spin_unlock"].sites == {"inline": 1}
        assert report.ops["lock.queued_spin_unlock"].hypervisor == "native"
        assert report.mask_cost is not None and report.mask_cost["instructions"] < 0  # no PV unlock call
        assert report.rax == run_image(images["spinlock", "native"], "native").rax


def test_xen_refuses_to_run_mmu_natively(images: dict[tuple[str, str], Path]) -> None:
    with pytest.raises(BootError, match=r"pv_ops\.native=mmu: xen runs the kernel paravirtualized"):
        run_image(images["sched", "paravirt"], "xen", cmdline="pv_ops.native=mmu")
    with pytest.raises(BootError, match="group 'irq' natively"):
        run_image(images["sched", "paravirt"], "xen", cmdline=f"pv_ops.native={1 << layer.MASK_BITS['irq']:#x}")


def test_unknown_mask_names_are_errors(images: dict[tuple[str, str], Path]) -> None:
    with pytest.raises(BootError, match="unknown group 'irqs'; expected one of: cpu, init, irq, lock, mmu"):
        run_image(images["sched", "paravirt"], "kvm", cmdline="pv_ops.native=irqs")
    with pytest.raises(BootError, match="name no group"):
        run_image(images["sched", "paravirt"], "native", cmdline="pv_ops.native=0x100")
    report = run_image(images["sched", "paravirt"], "native", cmdline="quiet pv_ops.native=0x18")
    assert report.mask == ("cpu", "irq")


def test_kvm_shadow_paging_exits_on_cr3_and_invlpg(images: dict[tuple[str, str], Path]) -> None:
    ept = run_image(images["pagetable", "paravirt"], "kvm")
    shadow = run_image(images["pagetable", "paravirt"], "kvm", options={"ept": False})
    assert not ept.stats.vm_exits
    assert shadow.stats.vm_exits == {"cr_access": 10, "invlpg": 256}
    assert shadow.rax == ept.rax
    assert shadow.cycles_by_source["vm_exit"] == 10 * (
        costs.VM_EXIT_ROUND_TRIP + costs.VM_EXIT_HANDLING["cr_access"]
    ) + 256 * (costs.VM_EXIT_ROUND_TRIP + costs.VM_EXIT_HANDLING["invlpg"])


# -- detection and the report ----------------------------------------------------------------------


def test_detection(images: dict[tuple[str, str], Path]) -> None:
    expected = {"native": (None, None), "kvm": ("KVMKVMKVM", None), "xen": ("XenVMMXenVMM", "xen_start_kernel")}
    for hypervisor, (signature, entry) in expected.items():
        report = run_image(images["spinlock", "paravirt"], hypervisor)
        assert (report.cpuid_signature, report.boot_entry, report.detected) == (signature, entry, hypervisor)
        assert report.pv_info is not None
        assert report.pv_info["name"] == layer.DATA[hypervisor]["pv_info.name"]
    assert "Xen PV guest up" in run_image(images["spinlock", "paravirt"], "xen").console
    # Without CPUID faulting the guest's cpuid sees the host: the boot entry alone finds Xen.
    plain = run_image(images["spinlock", "paravirt"], "xen", options={"cpuid_faulting": False})
    assert (plain.cpuid_signature, plain.detected) == (None, "xen")


def test_xen_hypercall_page(images: dict[tuple[str, str], Path]) -> None:
    machine, _ = boot_machine(images["spinlock", "paravirt"], "xen")
    page = machine.symbol("hypercall_page")
    entry = machine.cpu.memory.read(page + 17 * 32, 32)
    assert entry[:14] == bytes.fromhex("514153b8110000000f05415b59c3")  # xen_version
    assert machine.cpu.memory.read(page + 23 * 32, 11) == bytes.fromhex("51415350b8170000000f05")  # iret
    assert machine.cpu.cpl == 3 and machine.cpu.selectors[1] == 0xE033


def test_report_json_is_stable_and_complete(images: dict[tuple[str, str], Path]) -> None:
    report = run_image(images["sched", "paravirt"], "xen", cmdline="pv_ops.native=lock")
    data = json.loads(json.dumps(report.to_json()))
    assert data["schema"] == "pvgen-x86-run/1"
    assert set(data) == {
        "schema", "cost_model", "image", "hypervisor", "detected", "detection", "environment", "cmdline",
        "patched", "yielding", "mask", "result", "counts", "boot", "sites", "ops", "pv_info", "console",
    }  # fmt: skip
    assert data["result"]["rax"] == report.rax and data["result"]["reason"] == "return"
    assert data["mask"]["groups"] == ["lock"] and data["mask"]["bits"] == 1 << layer.MASK_BITS["lock"]
    assert set(data["mask"]["cost"]) == {"cycles", "instructions", "vm_exits", "traps", "hypercalls"}
    assert data["yielding"]["paravirt_enabled"] and data["yielding"]["yielded"][0]["rule"] == "microcode_loader"
    counts = data["counts"]
    assert counts["instructions"] == report.instructions > 0
    assert counts["cycles"] == pytest.approx(sum(counts["cycles_by_source"].values()), abs=1)
    assert set(counts) >= {"vm_exits", "traps", "hypercalls", "events", "by_class"}
    assert len(data["ops"]) == len([op for op in layer.OPS if op.index >= 0])
    assert data["ops"]["irq.irq_disable"] == {
        "implementation": {"hypervisor": "xen", "kind": "call", "symbol": "xen_irq_disable_direct"},
        "sites": {"call": 1},
        "calls": 400,
        "entries": 400,
    }
    text = format_report(report)
    assert "xen (pv, CPL 3)" in text and "irq.irq_disable" in text and "mask cost" in text


# -- unicorn -------------------------------------------------------------------------------------------


def run_on_unicorn(machine: Machine) -> tuple[int, dict[int, bytes]]:
    """Runs workload_entry on unicorn from the model's post-boot state (bare metal)."""
    unicorn = pytest.importorskip("unicorn")
    from unicorn import x86_const as ux

    cpu = machine.cpu
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
    for region in cpu.memory.regions:
        uc.mem_map(region.base, region.size)
        uc.mem_write(region.base, bytes(region.data))
    ret, gdt = 0xFFFF_FFFF_8F00_0000, 0xFFFF_FFFF_8E00_0000
    uc.mem_map(ret, 0x1000)
    uc.mem_write(ret, b"\xf4")
    # Flat 64-bit code (0x10) and data (0x18) descriptors, so iretq can load CS and SS.
    uc.mem_map(gdt, 0x1000)
    uc.mem_write(gdt + 0x10, struct.pack("<QQ", 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF))
    uc.reg_write(ux.UC_X86_REG_GDTR, (0, gdt, 0xFFF, 0))
    uc.reg_write(ux.UC_X86_REG_CS, 0x10)
    uc.reg_write(ux.UC_X86_REG_SS, 0x18)
    uc.reg_write(ux.UC_X86_REG_GS_BASE, cpu.gs_base)
    uc.reg_write(ux.UC_X86_REG_MSR, (0xC000_0102, cpu.kernel_gs_base))
    uc.reg_write(ux.UC_X86_REG_CR3, cpu.cr3)
    uc.reg_write(ux.UC_X86_REG_RFLAGS, cpu.rflags)
    uc.mem_write(STACK_TOP - 8, ret.to_bytes(8, "little"))
    uc.reg_write(ux.UC_X86_REG_RSP, STACK_TOP - 8)
    try:
        uc.emu_start(machine.symbol(ENTRY_SYMBOL), ret, count=5_000_000)
    except unicorn.UcError:
        pass  # a fault: compared through RAX and memory
    memory = {
        r.base: bytes(uc.mem_read(r.base, r.size)) for r in cpu.memory.regions if r.perms & 2 and r.base != STACK_BASE
    }
    return uc.reg_read(ux.UC_X86_REG_RAX), memory


@pytest.mark.parametrize("name", WORKLOAD_NAMES)
@pytest.mark.parametrize("mode", ["native", "paravirt"])
def test_bare_metal_matches_unicorn(images: dict[tuple[str, str], Path], name: str, mode: str) -> None:
    machine, _ = boot_machine(images[name, mode], "native")
    machine.cpu.rflags |= 0x200
    expected_rax, expected_memory = run_on_unicorn(machine)
    try:
        rax = machine.call(machine.symbol(ENTRY_SYMBOL)).rax
    except Exception:
        rax = machine.cpu.reg("rax")
    assert rax == expected_rax
    for base, data in expected_memory.items():
        mine = machine.cpu.memory.read(base, len(data))
        if mine != data:
            first = next(i for i in range(len(data)) if mine[i] != data[i])
            model, reference = mine[first : first + 8].hex(), data[first : first + 8].hex()
            pytest.fail(f"memory at {base + first:#x}: model {model} unicorn {reference}")


def test_guest_library_defines_every_function_the_spec_names(images: dict[tuple[str, str], Path]) -> None:
    for mode in ("paravirt", "native"):
        machine, _ = boot_machine(images["spinlock", mode], "native")
        named = {impl.symbol for op in layer.OPS for impl in op.impls.values() if impl.kind == "call"}
        assert len(named) == 131
        assert sorted(named - set(machine.image.symbols)) == []


def test_costs_are_one_table() -> None:
    table: dict[str, Any] = costs.table()
    assert table["vm_exit_round_trip"] >= 1000 and table["hypercall_round_trip"] < table["trap_emulation"]
    assert table["sensitive_cycles"]["popf"] > table["sensitive_cycles"]["pushf"]
