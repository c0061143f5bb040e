"""The IA-64 runtime: CPU model semantics, the Xen/IA64 model, patching, and end-to-end runs.

Small programs are assembled with pvgen.ia64's assembler and run on bare CPUs; the end-to-end
images (tests/data/ia64/*.S) go through cpp with the generated instance header and GNU as/ld, and
are skipped when the IA-64 binutils are missing.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from pvgen.generated import pvops_ia64
from pvgen.runtime.ia64 import cost
from pvgen.runtime.ia64.cpu import Cpu
from pvgen.runtime.ia64.emitters import EMITTERS as EMITTED_FORMATS
from pvgen.runtime.ia64.faults import VECTORS, Interruption, Stop
from pvgen.runtime.ia64.image import ImageError, load_image
from pvgen.runtime.ia64.memory import PhysicalMemory
from pvgen.runtime.ia64.patch import (
    NOP_BUNDLE,
    PatchError,
    PatchRangeError,
    decide,
    patch_bundles,
    relocate_br,
    relocate_brl,
)
from pvgen.runtime.ia64.run import architectural_registers, boot_image, guest_tlb, report, run_image
from pvgen.runtime.ia64.state import (
    AR_CCV,
    AR_PFS,
    CR_IFS,
    CR_IIP,
    CR_IPSR,
    CR_IVA,
    CR_PTA,
    CR_TPR,
    IFS_V,
    PSR_BN,
    PSR_DT,
    PSR_I,
    PSR_IC,
    PSR_KERNEL_BOOT,
    PSR_RT,
)
from pvgen.runtime.ia64.tlb import TlbEntry, thash
from pvgen.runtime.ia64.translate import CLASSES
from pvgen.runtime.ia64.xen import (
    HYPERPRIVOP_NUMBERS,
    XSI_BANKNUM,
    XSI_IFA,
    XSI_IFS,
    XSI_IIP,
    XSI_IPSR,
    XSI_ITIR,
    XSI_PSR_I_ADDR,
    XSI_PSR_IC,
    XenModel,
)

from pvgen.ia64.decoder import decode
from pvgen.ia64.encoder import assemble
from pvgen.ia64.insn import Instruction

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "ia64"
HEADERS = ROOT / "generated" / "asm" / "ia64"
CODE = 0x1000
IVT = 0x8000
M = (1 << 64) - 1
RAM_PTE = 0x1 | (1 << 5) | (1 << 6) | (3 << 9)  # p a d, pl 0, RWX


# --- helpers -------------------------------------------------------------------------------------


def bare_cpu(
    source: str, *, psr: int = 0, cpl: int = 0, ivt: dict[int, str] | None = None, symbols: dict[str, int] | None = None
) -> Cpu:
    """A CPU with 1 MiB of RAM, `source` at CODE and handlers (vector offset -> text) at IVT."""
    cpu = Cpu()
    cpu.mem.add_ram(0, 1 << 20)
    cpu.mem.write(CODE, assemble(source, address=CODE, symbols=symbols).code)
    if ivt is not None:
        for offset, text in ivt.items():
            cpu.mem.write(IVT + offset, assemble(text, address=IVT + offset).code)
        cpu.cr[CR_IVA] = IVT
    cpu.add_stop(0xF0000, "done")
    cpu.b[0] = 0xF0000
    cpu.boot(CODE, psr, cpl=cpl)
    return cpu


def run(source: str, *, limit: int = 10_000, **kwargs: object) -> tuple[Cpu, Stop]:
    cpu = bare_cpu(source, **kwargs)  # type: ignore[arg-type]
    return cpu, cpu.run(limit)


def done(source: str) -> str:
    return source + "\nbr.ret.sptk.many b0\n;;\n"


def xen_guest(source: str, **xen: object) -> tuple[Cpu, XenModel]:
    """A deprivileged guest under the Xen model: RAM identity-mapped by a translation register."""
    mem = PhysicalMemory()
    mem.add_ram(0, 1 << 20)
    env = XenModel(**xen)  # type: ignore[arg-type]
    cpu = Cpu(mem, env)
    mem.write(CODE, assemble(source, address=CODE).code)
    env.install_translation("d", 0, 0, 20, RAM_PTE)
    cpu.add_stop(0xF0000, "done")
    cpu.b[0] = 0xF0000
    env.boot(cpu, CODE, PSR_KERNEL_BOOT)
    return cpu, env


def tools() -> dict[str, str]:
    found = {name: shutil.which(name) for name in ("gcc", "ia64-linux-gnu-as", "ia64-linux-gnu-ld")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (gcc, binutils-ia64-linux-gnu)")
    return {name: str(path) for name, path in found.items()}


def build(source: Path, instance: str, directory: Path) -> Path:
    """cpp -include inst_<instance>.h, ia64-linux-gnu-as, ia64-linux-gnu-ld: an ELF image."""
    found = tools()
    stem = directory / f"{source.stem}-{instance}"
    header = HEADERS / f"inst_{instance}.h"
    preprocess = [found["gcc"], "-E", "-P", "-x", "assembler-with-cpp", "-include", str(header), "-I", str(DATA)]
    link = [found["ia64-linux-gnu-ld"], "-static", "-Ttext=0x100000", "-Tdata=0x200000", "-e", "_start"]
    steps = [
        [*preprocess, str(source), "-o", f"{stem}.s"],
        [found["ia64-linux-gnu-as"], "-xnone", f"{stem}.s", "-o", f"{stem}.o"],
        [*link, f"{stem}.o", "-o", f"{stem}.elf"],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    return Path(f"{stem}.elf")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("ia64-images")
    return {
        "tlb-native": build(DATA / "tlb_miss.S", "native", directory),
        "tlb-xen": build(DATA / "tlb_miss.S", "xen", directory),
        "caller": build(DATA / "pv_caller.S", "native", directory),
    }


# --- instruction semantics -------------------------------------------------------------------------


def test_alu_shift_and_deposit_semantics() -> None:
    cpu, stop = run(
        done(
            """
            movl r2 = 0xfffffffffffffff0
            mov r3 = 0x20
            ;;
            add r4 = r2, r3
            sub r5 = r3, r2
            andcm r6 = r2, r3
            xor r7 = r2, r3
            ;;
            adds r8 = -1, r0
            addl r9 = 0x12345, r0
            add r10 = r3, r3, 1
            ;;
            shl r11 = r3, 60
            shr r14 = r2, 4
            shr.u r15 = r2, 4
            ;;
            extr r16 = r2, 4, 8
            extr.u r17 = r2, 4, 8
            dep.z r18 = r3, 8, 4
            ;;
            dep r19 = r3, r2, 4, 8
            addp4 r20 = r3, r2
            or r21 = 0x7f, r0
            """
        )
    )
    assert stop.reason == "stop", stop
    g = cpu.g
    assert g[4] == 0x10 and g[5] == 0x30 and g[6] == 0xFFFFFFFFFFFFFFD0 and g[7] == 0xFFFFFFFFFFFFFFD0
    assert g[8] == M and g[9] == 0x12345 and g[10] == 0x41
    assert g[11] == 0 and g[14] == M and g[15] == 0x0FFFFFFFFFFFFFFF
    assert g[16] == M and g[17] == 0xFF and g[18] == 0
    assert g[19] == 0xFFFFFFFFFFFFF200 and g[20] == (0x10 | (3 << 61)) and g[21] == 0x7F


def test_compares_predication_and_unc() -> None:
    cpu, stop = run(
        done(
            """
            movl r2 = 0xffffffffffffffff
            mov r3 = 1
            cmp.eq p1, p2 = r0, r0
            ;;
            cmp.lt p3, p4 = r2, r3
            cmp.ltu p5, p6 = r2, r3
            cmp4.eq p7, p8 = r2, r3
            ;;
            cmp.eq p9, p10 = r0, r3
            tbit.nz p11, p12 = r3, 0
            ;;
            (p9) mov r20 = 99
            (p9) cmp.eq.unc p13, p14 = r0, r0
            (p10) cmp.ge.unc p15, p16 = 7, r3
            """
        )
    )
    assert stop.reason == "stop"
    p = cpu.p
    assert (p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]) == (True, False, True, False, False, True, False, True)
    assert (p[9], p[10], p[11], p[12]) == (False, True, True, False)
    assert cpu.g[20] == 0, "a predicated-off instruction has no effect"
    assert (p[13], p[14]) == (False, False), ".unc clears both targets when its predicate is false"
    assert (p[15], p[16]) == (True, False)


def test_loads_stores_post_increment_cmpxchg_and_unaligned_fault() -> None:
    cpu, stop = run(
        done(
            """
            movl r2 = 0x20000
            movl r3 = 0x1122334455667788
            ;;
            st8 [r2] = r3, 8
            ;;
            st1.rel [r2] = r3, 2
            ;;
            st2 [r2] = r3, -10
            mov r6 = 2
            ;;
            ld8.acq r4 = [r2], 8
            ;;
            ld1 r5 = [r2], r6
            ;;
            ld2 r7 = [r2], r6
            ;;
            mov ar.ccv = r3
            movl r8 = 0x20000
            mov r9 = 5
            ;;
            cmpxchg8.acq r10 = [r8], r9, ar.ccv
            ;;
            cmpxchg8.rel r11 = [r8], r3, ar.ccv
            ;;
            ld8 r14 = [r8]
            """
        )
    )
    assert stop.reason == "stop"
    g = cpu.g
    assert g[4] == 0x1122334455667788 and g[5] == 0x88 and g[7] == 0x7788
    assert g[2] == 0x2000C, "post-increments: +8, +2, -10, +8, +2, +2"
    assert g[10] == 0x1122334455667788 and g[11] == 5 and g[14] == 5, "cmpxchg swaps only on a match"
    assert cpu.ar[AR_CCV] == 0x1122334455667788

    cpu, stop = run("movl r2 = 0x20004\n;;\nld8 r3 = [r2]\n;;")
    assert stop.reason == "fault" and stop.fault is not None
    assert stop.fault.vector == VECTORS["unaligned_reference"] and stop.fault.ifa == 0x20004
    assert stop.fault.iip == CODE + 16 and stop.fault.slot == 0


def test_branches_calls_movl_brl_and_predicate_moves() -> None:
    source = done(
        """
        movl r2 = 0x8000000000000001
        ;;
        mov pr = r2, -1
        ;;
        mov r3 = pr
    here:
        mov r4 = ip
        br.call.sptk.many b6 = function
        ;;
    back:
        mov r5 = 7
        brl.cond.sptk.many far
        ;;
        mov r9 = 1
        ;;
    function:
        mov r6 = b6
        br.ret.sptk.many b6
        ;;
    far:
        mov r7 = 8
        """
    )
    labels = assemble(source, address=CODE).symbols
    cpu, stop = run(source)
    assert stop.reason == "stop"
    g = cpu.g
    assert g[3] == 0x8000000000000001 and cpu.p[63] and not cpu.p[1]
    assert g[4] == labels["here"] and g[6] == labels["back"], "mov r = ip / br.call return address"
    assert g[5] == 7 and g[7] == 8 and g[9] == 0, "brl skipped the fall-through"
    assert cpu.ar[AR_PFS] >> 62 == 0


def test_break_delivered_through_the_ivt_with_iim_and_rfi_resumes_mid_bundle() -> None:
    handler = "\n".join(
        [
            "mov r20 = cr.iim",
            "mov r21 = cr.iip",
            "mov r22 = cr.ipsr",
            ";;",
            "adds r22 = 0, r22",  # resume at the slot after the break: ipsr.ri + 1
            "movl r23 = 1 << 41",
            ";;",
            "add r22 = r22, r23",
            ";;",
            "mov cr.ipsr = r22",
            ";;",
            "rfi",
            ";;",
        ]
    )
    ivt = {0x2C00: handler}
    cpu, stop = run(
        done(
            """
            { .mii
            mov r2 = 1
            break.i 0x1234
            mov r3 = 2
            ;;
            }
            """
        ),
        ivt=ivt,
        psr=PSR_IC | PSR_BN,
    )
    assert stop.reason == "stop", stop
    assert cpu.bank[4] == 0x1234 and cpu.bank[5] == CODE, "handler ran in bank 0 with cr.iim and cr.iip"
    assert (cpu.bank[6] >> 41) & 3 == 2, "ipsr.ri was the break's slot (1); the handler stepped it"
    assert cpu.g[2] == 1 and cpu.g[3] == 2 and cpu.psr & PSR_BN and cpu.psr & PSR_IC
    assert cpu.events["interruption"] == 1


def test_bank_switch_and_nat_bits() -> None:
    cpu = bare_cpu(
        done(
            """
            mov r16 = 16
            mov r31 = 31
            ;;
            bsw.0
            ;;
            mov r16 = 160
            ;;
            bsw.1
            ;;
            """
        ),
        psr=PSR_BN,
    )
    cpu.set_nat(20)
    cpu.set_nat(31)  # cleared by `mov r31 = 31`: a value written is not a NaT
    stop = cpu.run(1000)
    assert stop.reason == "stop"
    assert cpu.g[16] == 16 and cpu.bank[0] == 160 and cpu.g[31] == 31
    assert cpu.nat >> 16 & 0xFFFF == 1 << 4, "bank 1's NaT bits survive the switch"

    source = """
        movl r2 = 0x20000
        ;;
        st8.spill [r2] = r3
        ;;
        mov r10 = ar.unat
        ld8.fill r16 = [r2]
        ;;
        add r17 = r16, r3
        cmp.eq p6, p7 = r16, r3
        ;;
        mov r18 = r17
        ;;
        st8 [r2] = r18
        ;;
    """
    cpu = bare_cpu(source)
    cpu.g[3] = 5
    cpu.set_nat(3)
    stop = cpu.run(1000)
    assert cpu.g[10] == 1, "st8.spill put r3's NaT bit into ar.unat bit 0"
    assert cpu.nat >> 16 & 1 and cpu.nat >> 17 & 1 and cpu.nat >> 18 & 1, "fill and propagation"
    assert not cpu.p[6] and not cpu.p[7], "a compare of a NaT clears both predicates"
    assert stop.fault is not None and stop.fault.kind == "nat_consumption", stop


def test_privileged_operation_fault_at_cpl_not_zero() -> None:
    for text, name in (("mov r2 = cr.ifa", "Privileged Operation"), ("rsm psr.i", "Privileged Operation")):
        cpu, stop = run(f"mov r3 = 1\n;;\n{{ .mmi\nnop.m 0\n{text}\nnop.i 0\n;;\n}}", cpl=2)
        assert stop.fault is not None and stop.fault.vector == 0x5400 and stop.fault.name.startswith(name)
        assert (stop.fault.iip, stop.fault.slot) == (CODE + 16, 1) and str(stop.fault.insn) != ""
        assert cpu.g[3] == 1 and cpu.class_counts()["nop"] >= 1, "what retired before the fault is counted"
    cpu, stop = run("mov r2 = ar.k3\n;;\nmov ar.k3 = r2\n;;", cpl=3)
    assert stop.fault is not None and stop.fault.name.startswith("Privileged Register"), "ar.k* read, not written"
    cpu, stop = run("mov r2 = cr.ifa\n;;", psr=PSR_IC)
    assert stop.fault is not None and stop.fault.name.startswith("Illegal Operation"), "interruption CR, psr.ic=1"
    cpu, stop = run("itc.d r2\n;;", psr=PSR_IC)
    assert stop.fault is not None and stop.fault.name.startswith("Illegal Operation"), "itc with psr.ic = 1"


def test_tlb_insert_translate_purge_thash_and_miss_faults() -> None:
    va, pa = 0xA000000000200000, 0x40000
    pte = pa | 0x1 | (1 << 5) | (2 << 9)  # p a, RW, pl 0, not dirty
    source = done(
        f"""
        movl r2 = {va}
        movl r3 = {14 << 2}
        movl r4 = {pte}
        movl r5 = 0x539
        movl r6 = 0xa000000000000000
        movl r7 = 0x01000051
        ;;
        mov rr[r6] = r5
        mov cr.pta = r7
        ;;
        mov cr.ifa = r2
        mov cr.itir = r3
        ;;
        itc.d r4
        ;;
        thash r8 = r2
        ssm psr.dt
        ;;
        srlz.d
        ;;
        ld8 r9 = [r2]
        ;;
        rsm psr.dt
        ;;
        ptc.l r2, r3
        ;;
        ssm psr.dt
        ;;
        ld8 r10 = [r2]
        ;;
        """
    )
    cpu = bare_cpu(source)
    cpu.mem.write_u64(pa, 0xCAFE)
    stop = cpu.run(1000)
    (entry,) = cpu.tlb.dtc or [None]
    assert entry is None, "ptc.l purged the entry"
    assert cpu.g[9] == 0xCAFE, "the load went through the inserted translation"
    assert cpu.g[8] == thash(va, 0x01000051, 0x539) == 0xA000000001000000 | ((0x200000 >> 14) << 3)
    fault = stop.fault
    assert fault is not None and fault.kind == "data_tlb" and fault.ifa == va, "walker on: Data TLB fault"
    cpu.cr[CR_PTA] = 0x01000050
    cpu.mem.write(CODE, assemble("movl r2 = 0xa000000000200000\n;;\nld8 r3 = [r2]\n;;", address=CODE).code)
    cpu.boot(CODE, PSR_DT)
    assert cpu.run(100).fault.kind == "alt_data_tlb"  # type: ignore[union-attr]

    cpu = bare_cpu("movl r2 = 0x20000\n;;\nst8 [r2] = r0\n;;", psr=PSR_DT, cpl=0)
    cpu.tlb.insert_tr("d", 0, TlbEntry(0, 20, 0, 0x1 | (1 << 5) | (2 << 9)))
    assert cpu.run(100).fault.kind == "dirty_bit"  # type: ignore[union-attr]
    cpu = bare_cpu("movl r2 = 0x20000\n;;\nld8 r3 = [r2]\n;;", psr=PSR_DT, cpl=3)
    cpu.tlb.insert_tr("d", 0, TlbEntry(0, 20, 0, RAM_PTE))
    assert cpu.run(100).fault.kind == "data_access_rights"  # type: ignore[union-attr]


def test_interruption_state_rfi_and_cover() -> None:
    ivt = {
        0x0800: "mov r16 = cr.ifa\nmov r17 = cr.itir\nmov r18 = cr.iha\nmov r19 = cr.isr\n;;\nbr.ret.sptk.many b0\n;;"
    }
    cpu = bare_cpu("movl r2 = 0xa000000000200000\n;;\nst8 [r2] = r0\n;;", psr=PSR_KERNEL_BOOT, ivt=ivt)
    cpu.rr[5] = 0x539
    cpu.cr[CR_PTA] = 0x01000051
    stop = cpu.run(100)
    assert stop.reason == "stop"
    assert cpu.g[16:20] == [0xA000000000200000, 0x538, thash(0xA000000000200000, 0x01000051, 0x539), 1 << 33]
    assert cpu.cr[CR_IIP] == CODE + 16 and cpu.cr[CR_IPSR] == PSR_KERNEL_BOOT and cpu.cr[CR_IFS] == 0
    assert not cpu.psr & (PSR_IC | PSR_I | PSR_BN) and cpu.psr & PSR_DT, "ic, i, bn off; dt kept"

    cpu = bare_cpu(done("cover\n;;\nmov r2 = cr.ifs\n;;\nmov cr.iip = r3\nmov cr.ipsr = r4\n;;\nrfi\n;;"))
    cpu.cfm = 0x85
    cpu.g[3], cpu.g[4] = 0xF0000, PSR_RT | (2 << 41) | PSR_BN
    cpu.add_stop(0xF0002, "slot 2")
    stop = cpu.run(100)
    assert cpu.g[2] == 0x85 | IFS_V, "cover saved CFM in cr.ifs (psr.ic was 0)"
    assert cpu.cfm == 0x85, "rfi restored the frame from the valid cr.ifs"
    assert stop.ip == 0xF0002 and cpu.psr == PSR_RT | PSR_BN, "rfi resumes at iip, slot ipsr.ri"


def test_external_interrupt_ivr_and_eoi() -> None:
    ivt = {0x3000: "mov r20 = cr.ivr\n;;\nmov r21 = cr.ivr\nmov cr.eoi = r0\n;;\nbr.ret.sptk.many b0\n;;"}
    cpu = bare_cpu(
        "mov r2 = 0\n;;\nssm psr.i\n;;\nsrlz.d\n;;\n1: br.cond.sptk.many 1b\n;;", psr=PSR_IC | PSR_BN, ivt=ivt
    )
    cpu.cr[CR_TPR] = 0
    cpu.pend_interrupt(0x42)
    stop = cpu.run(1000)
    assert stop.reason == "stop" and cpu.g[20:22] == [0x42, 15], "vector, then spurious"
    assert not cpu.psr & PSR_BN and cpu.bank[4] == 0, "the handler ran in bank 0"
    assert not cpu.in_service and not cpu.pending


def test_code_writes_invalidate_translations() -> None:
    loop = "1:\nadds r3 = 1, r3\n;;\ncmp.ne p6, p0 = r3, r4\n(p6) br.cond.sptk.many 1b\n;;\nbr.ret.sptk.many b0\n;;"
    cpu = bare_cpu(loop)
    cpu.g[4] = 3
    assert cpu.run(1000).reason == "stop" and cpu.g[3] == 3
    assert cpu.translator.compiled == 1 and cpu.blocks[0].ex == [2, 1], "translated once, run three times"
    cpu.mem.write(CODE, assemble(loop.replace("adds r3 = 1,", "adds r3 = 10,"), address=CODE).code)  # a patcher
    cpu.g[3], cpu.g[4] = 0, 30
    cpu.boot(CODE, 0)
    assert cpu.run(1000).reason == "stop" and cpu.g[3] == 30, "new code ran after the write"
    assert cpu.events["code_invalidation"] == 1

    # The guest writes its own code (then fc.i; sync.i; srlz.i as the architecture asks).
    new = assemble("mov r9 = 77\n;;", address=0).code
    lo, hi = int.from_bytes(new[:8], "little"), int.from_bytes(new[8:], "little")
    source = f"""
        movl r2 = {CODE + 0x100}
        movl r3 = {lo}
        movl r4 = {hi}
        ;;
        st8 [r2] = r3, 8
        ;;
        st8 [r2] = r4
        ;;
        fc.i r2
        ;;
        sync.i
        ;;
        srlz.i
        ;;
        br.cond.sptk.many target
        ;;
    """
    cpu = bare_cpu(source, symbols={"target": CODE + 0x100})
    cpu.mem.write(CODE + 0x100, assemble(done("mov r9 = 1\n;;"), address=CODE + 0x100).code)
    cpu.fast[CODE + 0x100]  # translated before the store
    assert cpu.run(1000).reason == "stop" and cpu.g[9] == 77


def _unmodelled(code: bytes) -> list[str]:
    out = []
    for bundle in decode(code):
        for insn in bundle.instructions:
            if not isinstance(insn, Instruction) or insn.form is None or insn.form.fmt not in EMITTED_FORMATS:
                out.append(str(insn))
            elif insn.mnemonic == "epc":
                out.append("epc")
    return out


def test_every_template_and_macro_instruction_is_modelled(tmp_path: Path) -> None:
    templates = [impl.template for op in pvops_ia64.OPS for impl in op.impls.values() if impl.template]
    templates += [
        i.template for op in pvops_ia64.OPS for _n, _t, impls in op.variants for i in impls.values() if i.template
    ]
    assert len(templates) > 200
    assert not [text for code in templates for text in _unmodelled(code)]
    found = tools()
    for instance in ("native", "xen"):
        preprocessed, obj = tmp_path / f"ivt-{instance}.s", tmp_path / f"ivt-{instance}.o"
        command = [found["gcc"], "-E", "-P", "-x", "assembler-with-cpp", f"-DPVGEN_INSTANCE_{instance.upper()}"]
        subprocess.run(
            [*command, "-I", str(HEADERS), str(ROOT / "tests/data/asm/ivt_like.S"), "-o", preprocessed], check=True
        )
        subprocess.run([found["ia64-linux-gnu-as"], "-xnone", preprocessed, "-o", obj], check=True, capture_output=True)
        with open(obj, "rb") as handle:
            text = ELFFile(handle).get_section_by_name(".text").data()
        assert len(text) > 500 and not _unmodelled(text), instance


def test_instruction_counts_and_cost_model() -> None:
    cpu, _stop = run(done("mov r2 = 1\nld8 r3 = [r0]\n;;\ncmp.eq p6, p0 = r2, r3\n;;\nsrlz.d\n;;"))
    counts = cpu.class_counts()
    assert set(counts) == set(CLASSES) == set(cost.CLASS_CYCLES), "every class has exactly one cost"
    assert counts["alu"] == 1 and counts["load"] == 1 and counts["compare"] == 1 and counts["branch"] == 1
    assert counts["serialize"] == 1 and cpu.instructions() == sum(counts.values())
    assert cpu.cycles() == sum(cost.CLASS_CYCLES[name].cycles * n for name, n in counts.items())
    assert all(figure.why for figure in [*cost.CLASS_CYCLES.values(), *cost.EVENT_CYCLES.values()])


def test_faults_are_interruptions_never_python_errors() -> None:
    rng = random.Random(7)
    outcomes = set()
    for trial in range(150):
        cpu = Cpu()
        cpu.mem.add_ram(0, 1 << 20)
        cpu.mem.write(CODE, bytes(rng.randrange(256) for _ in range(256)))
        if trial % 3 == 0:
            cpu.mem.write(IVT, bytes(rng.randrange(256) for _ in range(0x6000)))
            cpu.cr[CR_IVA] = IVT
        cpu.boot(CODE, PSR_KERNEL_BOOT if trial % 2 else PSR_BN, cpl=trial % 4)
        stop = cpu.run(500)
        outcomes.add(stop.reason)
        assert stop.reason in ("fault", "limit"), stop
        assert stop.reason == "limit" or isinstance(stop.fault, Interruption)
    assert "fault" in outcomes


# --- Xen/IA64 model ---------------------------------------------------------------------------------


def test_xsi_layout_matches_reference_and_generated_macros() -> None:
    assert (XSI_IPSR, XSI_IIP, XSI_IFA, XSI_ITIR, XSI_IFS) == (
        0xFFFFFFFFFFF04880,
        0xFFFFFFFFFFF04898,
        0xFFFFFFFFFFF048A0,
        0xFFFFFFFFFFF048A8,
        0xFFFFFFFFFFF048B8,
    )
    assert (XSI_PSR_IC, XSI_PSR_I_ADDR, XSI_BANKNUM) == (0xFFFFFFFFFFF04C10, 0xFFFFFFFFFFF04C18, 0xFFFFFFFFFFF04C4C)
    header = (HEADERS / "inst_xen.h").read_text()
    for macro, address in (("MOV_FROM_IFA", XSI_IFA), ("MOV_FROM_ITIR", XSI_ITIR), ("RSM_PSR_IC", XSI_PSR_IC)):
        body = header.split(f".macro __pvgen_{macro} ")[1].split(".endm")[0]
        assert f"{address:#x}" in body
    breaks = {int(n, 16) for n in re.findall(r"break (0x[0-9a-f]+)", header)}
    assert breaks <= set(HYPERPRIVOP_NUMBERS.values())
    assert HYPERPRIVOP_NUMBERS["RFI"] == 1 and HYPERPRIVOP_NUMBERS["SET_RR0_TO_RR4"] == 0x1A
    assert len(HYPERPRIVOP_NUMBERS) == 26


def test_hyperprivops_act_on_the_virtual_state() -> None:
    source = done(
        """
        movl r8 = 0xa000000000000000
        mov r9 = 0x539
        ;;
        break 0x11
        ;;
        movl r8 = 0xa000000000000000
        ;;
        break 0x10
        ;;
        mov r20 = r8
        movl r8 = 0xa000000000204000
        ;;
        break 0xd
        ;;
        mov r21 = r8
        mov r8 = 3
        mov r9 = 0x77
        ;;
        break 0x12
        ;;
        mov r22 = ar.k3
        break 0x19
        ;;
        mov r23 = r8
        mov r8 = 3
        ;;
        break 0x14
        ;;
        mov r24 = r8
        mov r8 = 0x55
        ;;
        break 0x17
        ;;
        break 0x16
        ;;
        mov r25 = r8
        """
    )
    cpu, xen = xen_guest(source)
    xen.set_vcr(CR_PTA, 0x01000051)
    stop = cpu.run(1000)
    assert stop.reason == "stop", stop
    assert cpu.cpl == 2 and xen.virtual_cpl(cpu) == 0, "the guest kernel is deprivileged"
    assert cpu.g[20] == 0x539 and xen.vrr[5] == 0x539 and cpu.rr[5] >> 8 == 0x10005, "rid moved into the domain"
    assert cpu.g[21] == thash(0xA000000000204000, 0x01000051, 0x539), "THASH uses the virtual pta and rr"
    assert cpu.g[22] == 0x77, "SET_KR also writes the machine ar.k3 (readable natively)"
    assert cpu.g[23] & PSR_IC and cpu.g[23] & PSR_DT and not cpu.g[23] & PSR_I and not (cpu.g[23] >> 32) & 3
    assert cpu.g[24] == cpu.cpuid[3] and cpu.g[25] == 0x55
    assert xen.hyperprivops == {
        "SET_RR": 1,
        "GET_RR": 1,
        "THASH": 1,
        "SET_KR": 1,
        "GET_PSR": 1,
        "GET_CPUID": 1,
        "SET_EFLAG": 1,
        "GET_EFLAG": 1,
    }
    assert cpu.cycles() > 8 * cost.EVENT_CYCLES["xen_hyperprivop_fast"].cycles


def test_itc_ptc_rfi_and_bank_switch_hyperprivops() -> None:
    source = """
        movl r2 = 0xfffffffffff048a0
        movl r3 = 0x40000
        movl r4 = 0xfffffffffff048a8
        mov r5 = 14 << 2
        ;;
        st8 [r2] = r3
        st8 [r4] = r5
        movl r8 = 0x50621
        ;;
        break 0x5
        ;;
        mov r16 = 1616
        movl r8 = 0x40000
        mov r9 = 14 << 2
        ;;
        break 0xe
        ;;
        break 0x1
        ;;
    """
    cpu, xen = xen_guest(source)
    xen.set_vcr(CR_IVA, IVT)
    xen.set_vcr(CR_IIP, 0xF0000)
    xen.set_vcr(CR_IPSR, PSR_KERNEL_BOOT | PSR_I)
    xen.write(XSI_PSR_IC, 0, 4)
    cpu.g[20] = 20
    cpu.set_nat(20)
    xen.switch_bank(cpu, 0)  # as a reflected interruption leaves it: bank 1 parked in the XSI
    assert cpu.g[20] == 0 and not cpu.nat
    cpu.g[16] = 16
    stop = cpu.run(1000)
    assert stop.reason == "stop" and stop.ip == 0xF0000, stop
    assert xen.hyperprivops["ITC_D"] == 1 and xen.hyperprivops["PTC_GA"] == 1
    assert not xen.vtlb.dtc and not [e for e in cpu.tlb.dtc if e.va == 0x40000], "PTC_GA purged both"
    assert cpu.g[16] == 0 and xen.read(XSI_BANKNUM, 4) == 1, "RFI switched back to bank 1"
    assert cpu.g[20] == 20 and cpu.nat == 1 << 20, "with bank 1's NaT bits"
    assert xen.virtual_psr(cpu) & PSR_I and xen.read(xen.read(XSI_PSR_I_ADDR), 1) == 0


def test_hypercalls_and_shutdown() -> None:
    source = """
        movl r34 = 0x30000
        mov r2 = 18
        mov r32 = 0
        mov r33 = 5
        ;;
        break 0x1000
        ;;
        mov r20 = r8
        mov r2 = 17
        mov r32 = 0
        ;;
        break 0x1000
        ;;
        mov r21 = r8
        mov r2 = 1234
        ;;
        break 0x1000
        ;;
        mov r22 = r8
        mov r2 = 29
        mov r32 = 2
        ;;
        break 0x1000
        ;;
    """
    cpu, xen = xen_guest(source)
    cpu.mem.write(0x30000, b"hello")
    stop = cpu.run(1000)
    assert stop.reason == "shutdown"
    assert xen.console == b"hello" and cpu.g[20] == 5 and cpu.g[21] == (3 << 16) | 4 and cpu.g[22] == (-38) & M
    assert xen.hypercalls == {"console_io": 1, "xen_version": 1, "hypercall_1234": 1, "sched_op": 1}


def test_privileged_instructions_trap_and_are_emulated_or_reflected() -> None:
    source = done(
        "movl r2 = 0x8000\n;;\nmov cr.iva = r2\n;;\nmov r3 = cr.iva\nrsm psr.i | psr.ic\n;;\nmov r4 = psr\n;;"
    )
    cpu, xen = xen_guest(source)
    stop = cpu.run(1000)
    assert stop.reason == "stop" and cpu.g[3] == 0x8000 and xen.vcr(CR_IVA) == 0x8000
    assert not cpu.g[4] & (PSR_I | PSR_IC) and cpu.psr & PSR_IC, "virtual psr.ic off, machine psr.ic on"
    assert xen.emulated == {"mov": 3, "rsm": 1} and cpu.fault_counts["general_exception"] == 4
    cpu, xen = xen_guest(source, emulate_privops=False)
    stop = cpu.run(1000)
    assert stop.reason == "crash" and stop.fault is not None and stop.fault.vector == 0x5400


def test_event_pending_is_delivered_by_ssm_i() -> None:
    cpu, xen = xen_guest(done("{ .mii\nbreak.m 0x7\nnop.i 0\nnop.i 0\n;;\n}\nmov r9 = 1\n;;"))
    xen.set_vcr(CR_IVA, IVT)
    cpu.mem.write(IVT + 0x3000, assemble("mov r10 = 3\n;;\nbr.ret.sptk.many b0\n;;", address=IVT + 0x3000).code)
    xen.write(xen.read(XSI_PSR_I_ADDR) - 1, 1, 1)  # an event is pending
    stop = cpu.run(1000)
    assert stop.reason == "stop" and cpu.g[10] == 3 and cpu.g[9] == 0, "the upcall ran, not the next line"
    assert xen.read(XSI_IIP) == CODE and xen.read(XSI_IPSR) >> 41 & 3 == 1, "it returns after the break"
    assert not xen.read(XSI_PSR_IC, 4) and not xen.virtual_psr(cpu) & PSR_I, "delivered as an interruption"


@pytest.mark.parametrize("instance", ["native", "xen"])
def test_bsw_macros_keep_bank1_values_and_nat_bits(instance: str, tmp_path: Path) -> None:
    source = tmp_path / "bsw.S"
    source.write_text(
        "\t.text\n\t.global _start\n_start:\n"
        "\tBSW_0(r2, r3, r8)\n\t;;\n\tmov r16 = 0x666\n\tmov r31 = 0x777\n\t;;\n"
        "\tBSW_1(r2, r3)\n\t;;\n\tbr.ret.sptk.many b0\n\t;;\n"
    )
    image = load_image(build(source, instance, tmp_path))
    machine = boot_image(image, instance)
    cpu = machine.cpu
    for n in range(16, 32):
        cpu.g[n] = n * 0x101
    cpu.set_nat(20)
    cpu.set_nat(31)
    stop = cpu.run(10_000)
    assert stop.reason == "stop", stop
    assert cpu.g[16:32] == [n * 0x101 for n in range(16, 32)]
    assert cpu.nat >> 16 & 0xFFFF == (1 << 4) | (1 << 15), "NaT bits of bank 1 survive the round trip"


# --- patching --------------------------------------------------------------------------------------


def test_stub_shape_and_bundle_patching(images: dict[str, Path]) -> None:
    image = load_image(images["caller"])
    sites = image.bundle_sites()
    assert sites and all(end - start == pvops_ia64.SITE_SIZE for start, end, _ in sites)
    mem = PhysicalMemory()
    mem.add_ram(0, 64 << 20)
    image.place(mem)
    start = sites[0][0]
    reference = ["01100004181010010060000002080084", "0218200418141081450042e030080007"]
    reference += ["10080004181060880480030070008000", "01080020002100000002000000000400"]
    assert [mem.read(start + 16 * n, 16).hex() for n in range(1, 5)] == reference, "reference §6.7 stub"
    fc = next(s for s in sites if s[2] == 1)
    records = patch_bundles(mem, [fc], "native", {})
    assert records[0].kind == "bundle"
    template = pvops_ia64.OPS_BY_INDEX[1].impls["native"].template
    assert mem.read(fc[0], 80) == template + NOP_BUNDLE * 4
    name, decision, _impl = decide(0x10000000 + 3075, "xen", 80, frozenset())
    assert name == "getreg[AR_KR3]" and decision.kind == "inline"
    assert decide(12, "xen", 80, frozenset())[1].kind == pvops_ia64.patch_decision(12, "xen", 80).kind == "call"
    with pytest.raises(PatchError):
        decide(0x10000000 + 1, "native", 80, frozenset())


def test_branch_relocation_range_check_and_brl() -> None:
    mem = PhysicalMemory()
    mem.add_ram(0, 64 << 20)
    site = 0x0100_0000
    mem.write(site, bytes.fromhex("17000600001000000000100000000020"))  # reference §6.6 branch site
    for target in (site - (1 << 24), site + (1 << 24) - 16, site + 0x30):
        relocate_br(mem, site, target)
        (bundle,) = decode(mem.read(site, 16), site)
        insn = bundle.instructions[0]
        assert isinstance(insn, Instruction) and site + insn.operands[0].offset == target  # type: ignore[union-attr]
    before = mem.read(site, 16)
    for target in (site + (1 << 24), site - (1 << 24) - 16, 0x0400_0000_0000):
        with pytest.raises(PatchRangeError, match="16 MiB"):
            relocate_br(mem, site, target)
    assert mem.read(site, 16) == before, "a refused relocation leaves the site alone"
    with pytest.raises(PatchError):
        relocate_br(mem, site | 1, site)

    text = "{ .mlx\nnop.m 0\n[brl_tag:] (p8) brl.cond.dptk.few xen_check_events\n;;\n}"
    code = assemble(text, address=0x2000, symbols={"xen_check_events": 0x2000})
    mem.write(0x2000, code.code)
    target = 0x2000 + (1 << 40)
    assert code.symbols["brl_tag"] == 0x2001, "a tag is bundle address | slot (§4.1)"
    relocate_brl(mem, code.symbols["brl_tag"], target)
    (bundle,) = decode(mem.read(0x2000, 16), 0x2000)
    assert 0x2000 + bundle.instructions[1].operands[0].offset == target  # type: ignore[union-attr]
    with pytest.raises(PatchError):
        relocate_brl(mem, 0x2000, target)


def test_caller_runs_the_same_unpatched_and_patched(images: dict[str, Path]) -> None:
    image = load_image(images["caller"])
    results = image.symbols["results"]
    outcomes = {}
    for hypervisor in ("native", "xen"):
        for patch in (False, True):
            machine = boot_image(image, hypervisor, patch=patch)
            stop = machine.cpu.run(200_000)
            assert stop.reason == "stop" and stop.detail == "exit", stop
            outcomes[hypervisor, patch] = [machine.cpu.mem.read_u64(results + 8 * n) for n in range(12)]
            kinds = {record.kind for record in machine.patches}
            if patch:
                expected = {"bundle", "branch"} | ({"bundle+brl"} if hypervisor == "xen" else set())
                assert kinds == expected, machine.patches
                irq_restore = next(r for r in machine.patches if r.op == "intrin_local_irq_restore")
                if hypervisor == "xen":
                    mlx = decode(machine.cpu.mem.read(irq_restore.site + 64, 16), irq_restore.site + 64)[0]
                    brl = mlx.instructions[1]
                    target = irq_restore.site + 64 + brl.operands[0].offset  # type: ignore[union-attr]
                    assert target == machine.support.symbol("xen_check_events"), "brl relocated (§4.5)"
            else:
                assert not machine.patches
    for hypervisor in ("native", "xen"):
        assert outcomes[hypervisor, False] == outcomes[hypervisor, True]
    native, xen = outcomes["native", True], outcomes["xen", True]
    assert native[:11] == xen[:11] and (native[11], xen[11]) == (0x11, 0x22)
    assert native[:4] == [0, 0x4000, 0, 0x4000] and native[6] == 0x1234567890ABCDEF and native[7] == 0x20


def test_command_line_controls_patching_and_mask(images: dict[str, Path]) -> None:
    machine = boot_image(images["caller"], "native", cmdline="noreplace-paravirt")
    assert not machine.patches
    with pytest.raises(pvops_ia64.MaskError, match="no hardware"):
        boot_image(images["caller"], "xen", cmdline="pv_ops.native=cpu")
    with pytest.raises(ImageError):
        load_image(DATA / "pv_stub.h")


# --- end to end ------------------------------------------------------------------------------------


def test_handler_reaches_the_same_outcome_native_and_under_xen(images: dict[str, Path]) -> None:
    runs = {}
    for instance in ("native", "xen"):
        image = load_image(images[f"tlb-{instance}"])
        machine = boot_image(image, instance)
        stop = machine.cpu.run(200_000)
        assert stop.reason == "stop" and stop.detail == "exit", stop
        memory = {
            name: [machine.cpu.mem.read_u64(image.symbols[name] + 8 * n) for n in range(count)]
            for name, count in (("fault_log", 4), ("context", 5), ("result", 1))
        }
        runs[instance] = (machine, image, memory, report(machine, stop.reason, stop.detail))
    (native, native_image, native_memory, native_report) = runs["native"]
    (xen, xen_image, xen_memory, xen_report) = runs["xen"]
    assert guest_tlb(native) == guest_tlb(xen), "the same translations, as the kernel inserted them"
    entry = next(e for side, e in guest_tlb(native) if side == "dtc")
    assert entry == TlbEntry(0xA000000020000000, 14, 5, 0x01800461, key=5), "D set for the write; key = rid"
    assert native_memory == xen_memory
    assert native_memory["fault_log"] == [3, 0xA000000020000000, 1 << 33, 14] and native_memory["result"] == [8]
    assert native_memory["context"][:3] == [0x0808080808080808, 0x1616161616161616, 0x1919191919191919]
    assert native_memory["context"][3] == 0x3131313131313131 and native_memory["context"][4] >> 14 & 3 == 1
    nregs, xregs = architectural_registers(native), architectural_registers(xen)
    nregs["cr"]["iip"] -= native_image.symbols["faulting_store"]
    xregs["cr"]["iip"] -= xen_image.symbols["faulting_store"]
    assert nregs == xregs, "the same registers: GRs, NaTs, predicates, branch, PSR, CRs, RRs, ARs"
    assert native_report.faults == {"data_tlb": 3} and xen_report.reflections == {"Data TLB fault": 3}
    assert xen_report.hyperprivops["ITC_D"] == 3 and xen_report.hyperprivops["RFI"] == 3
    assert xen_report.cycles > native_report.cycles


def test_native_instance_under_xen_diverges_then_faults(images: dict[str, Path]) -> None:
    emulated = run_image(images["tlb-native"], "xen", max_instructions=100_000)
    assert emulated.privop_emulations["mov"] >= 5 and emulated.privop_emulations["itr.d"] == 1
    assert emulated.reason == "stop" and emulated.detail == "pvgen_fatal"
    assert emulated.registers["gr"][30] == VECTORS["data_nested_tlb"], "the handler's VHPT load missed"
    assert emulated.fault_log[-1].handled == "reflected as data_nested_tlb"
    # thash is not privileged: it ran on the machine with Xen's pta, not the guest's.
    assert emulated.registers["gr"][17] & 0xFFFFFFFFF000000 != 0x01000000
    strict = run_image(images["tlb-native"], "xen", emulate_privops=False)
    assert strict.reason == "crash" and "Privileged Operation" in strict.detail
    (first,) = strict.fault_log
    assert first.vector == 0x5400 and first.iip == load_image(images["tlb-native"]).symbols["set_iva"]


def test_run_image_report(images: dict[str, Path]) -> None:
    result = run_image(images["tlb-xen"], "xen")
    assert result.reason == "stop" and result.instructions == sum(result.by_class.values()) > 0
    assert result.patched == {"bundle": 3} and result.hyperprivops["THASH"] == 4
    instructions = sum(cost.CLASS_CYCLES[k].cycles * v for k, v in result.by_class.items())
    hypervisor = sum(cost.hyperprivop_cycles(name) * n for name, n in result.hyperprivops.items())
    hypervisor += cost.EVENT_CYCLES["xen_reflect"].cycles * sum(result.reflections.values())
    hypervisor += cost.EVENT_CYCLES["xen_privop_emulation"].cycles * sum(result.privop_emulations.values())
    assert result.cycles == instructions + hypervisor, "every cycle comes from a figure in cost.py"
    assert result.events["xen_reflect"] == 3 and result.privop_emulations == {"mov": 2, "itr.d": 1}
    text = result.format()
    assert "hyperprivops: ITC_D 3" in text and "dtc: va 0xa000000020000000" in text
    assert '"hypervisor": "xen"' in result.to_json()
    limited = run_image(images["tlb-native"], "native", max_instructions=50)
    assert limited.reason == "limit" and limited.instructions >= 50
    with pytest.raises(ValueError, match="expected one of: native, xen"):
        run_image(images["tlb-native"], "kvm")


def test_cpu_loop_is_counted_per_class(images: dict[str, Path]) -> None:
    result = run_image(images["tlb-native"], "native")
    by_class = result.by_class
    assert by_class["rfi"] == 3 and by_class["system"] > 0 and by_class["nop"] > 0
    assert result.faults == {"data_tlb": 3}
    assert {k for k, v in result.registers["cr"].items() if v} >= {"iva", "pta", "ifa", "itir", "iha", "isr"}
    assert result.events["interruption"] == 3 and result.cycles > result.instructions // 2
