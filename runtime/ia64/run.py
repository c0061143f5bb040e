"""`run_image`: boot an IA-64 ELF image on the CPU model, natively or under Xen, and report.

What the runtime does before the first instruction (the boot loader's and Linux's setup_arch work):

1. RAM [0, ram_size) is declared and the image's segments are copied to their physical addresses.
2. The pv_cpu_ops implementations of the chosen hypervisor (forced-native mask from the command
   line applied, `pvops_ia64.parse_mask`/`check_mask`) are placed at `SUPPORT_BASE` and the
   image's `pv_cpu_ops` table, if it has one, is filled with their descriptors; the
   `paravirt_<name>_targ` words get the instance's branch targets (paravirt_cpu_asm_init).
3. Unless `patch=False` or `noreplace-paravirt` is on the command line, bundle sites and branch
   sites are patched (patch.py).
4. RAM is identity-mapped by data translation register 0 (pl 0, RWX; under Xen, the domain
   builder's mapping: the guest sees pl 0, the machine holds pl 2).
5. The entry point runs with psr = ic|dt|rt|it|bn (interrupts off) at cpl 0 natively, or
   deprivileged at machine cpl 2 under the Xen model; gp = __gp, sp = `STACK_TOP`, b0 = `EXIT`.
   Reaching `EXIT`, `pvgen_exit` or `pvgen_fatal` ends the run.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Final

import attrs
from pvgen.generated import pvops_ia64
from pvgen.runtime.ia64.cpu import Cpu, FaultRecord
from pvgen.runtime.ia64.image import Image, load_image
from pvgen.runtime.ia64.memory import PhysicalMemory
from pvgen.runtime.ia64.native import BareMetal
from pvgen.runtime.ia64.patch import BRANCH_NAMES, PatchRecord, patch_branches, patch_bundles
from pvgen.runtime.ia64.state import (
    AR_BSP,
    AR_CCV,
    AR_EC,
    AR_LC,
    AR_PFS,
    AR_UNAT,
    CR_IFA,
    CR_IFS,
    CR_IHA,
    CR_IIM,
    CR_IIP,
    CR_IPSR,
    CR_ISR,
    CR_ITIR,
    CR_IVA,
    CR_PTA,
    CR_TPR,
    PSR_KERNEL_BOOT,
)
from pvgen.runtime.ia64.support import SupportCode, build_support, install_pv_cpu_ops
from pvgen.runtime.ia64.tlb import TlbEntry, rr_rid
from pvgen.runtime.ia64.xen import XenModel

RAM_SIZE: Final = 64 << 20
SUPPORT_BASE: Final = 0x0300_0000
STACK_TOP: Final = 0x0280_0000
EXIT: Final = 0x0FF0_0000
KERNEL_MAP_PS: Final = 26  # one 64 MiB translation register covers RAM
KERNEL_PTE: Final = 0x1 | (1 << 5) | (1 << 6) | (0 << 7) | (3 << 9)  # p, a, d, pl 0, ar RWX
HYPERVISORS: Final = ("native", "xen")
REPORTED_CRS: Final = {
    "iva": CR_IVA,
    "pta": CR_PTA,
    "ipsr": CR_IPSR,
    "isr": CR_ISR,
    "iip": CR_IIP,
    "ifa": CR_IFA,
    "itir": CR_ITIR,
    "ifs": CR_IFS,
    "iim": CR_IIM,
    "iha": CR_IHA,
    "tpr": CR_TPR,
}
REPORTED_ARS: Final = {
    **{f"k{n}": n for n in range(8)},
    "bsp": AR_BSP,
    "ccv": AR_CCV,
    "unat": AR_UNAT,
    "pfs": AR_PFS,
    "lc": AR_LC,
    "ec": AR_EC,
}


@attrs.frozen
class RunReport:
    """The outcome of `run_image`; `registers` holds the architectural (guest-visible) state."""

    image: str
    hypervisor: str
    reason: str  # stop | exit | limit | fault | crash | shutdown
    detail: str
    ip: int
    instructions: int
    by_class: dict[str, int]
    cycles: int
    events: dict[str, int]  # cost-model events: interruption, hyperprivop, xen_reflect, ...
    faults: dict[str, int]
    fault_log: tuple[FaultRecord, ...]
    hyperprivops: dict[str, int]
    hypercalls: dict[str, int]
    privop_emulations: dict[str, int]
    reflections: dict[str, int]
    patched: dict[str, int]
    patches: tuple[PatchRecord, ...]
    registers: dict[str, Any]
    tlb: tuple[tuple[str, TlbEntry], ...]
    console: str

    def format(self) -> str:
        lines = [
            f"{self.image} under {self.hypervisor}: {self.reason}" + (f" ({self.detail})" if self.detail else ""),
            f"  instructions {self.instructions:,} ({', '.join(f'{k} {v:,}' for k, v in self.by_class.items() if v)})",
            f"  cycles {self.cycles:,} (cost model)",
            f"  patched sites: {_counts(self.patched)}",
            f"  faults: {_counts(self.faults)}",
        ]
        if self.hypervisor == "xen":
            lines.append(f"  hyperprivops: {_counts(self.hyperprivops)}")
            lines.append(f"  hypercalls: {_counts(self.hypercalls)}")
            lines.append(f"  privileged operations emulated: {_counts(self.privop_emulations)}")
            lines.append(f"  faults reflected to the guest: {_counts(self.reflections)}")
        lines.append(f"  ip {self.ip:#x} psr {self.registers['psr']:#x}")
        gr = self.registers["gr"]
        lines.append("  " + " ".join(f"r{n}={gr[n]:#x}" for n in range(1, 32) if gr[n]))
        for side, entry in self.tlb:
            lines.append(f"  {side}: {entry.describe()}")
        if self.console:
            lines.append(f"  console: {self.console!r}")
        return "\n".join(lines)

    def to_json(self) -> str:
        def plain(value: Any) -> Any:
            if attrs.has(type(value)):
                return {k: plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
            if isinstance(value, dict):
                return {str(k): plain(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [plain(v) for v in value]
            return value

        return json.dumps(plain(self), indent=1, sort_keys=True)


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items())) or "none"


@attrs.define
class Machine:
    """A booted image: the CPU, its environment, where support code went, what was patched."""

    cpu: Cpu
    env: BareMetal | XenModel
    image: Image
    support: SupportCode
    patches: list[PatchRecord]


def boot_image(
    image: Image | str | Path,
    hypervisor: str = "native",
    *,
    patch: bool = True,
    cmdline: str = "",
    emulate_privops: bool = True,
    ram_size: int = RAM_SIZE,
) -> Machine:
    """Loads, sets up and patches an image, ready to run (see the module docstring)."""
    if hypervisor not in HYPERVISORS:
        raise ValueError(f"unknown hypervisor '{hypervisor}'; expected one of: {', '.join(HYPERVISORS)}")
    if not isinstance(image, Image):
        image = load_image(image)
    masked = pvops_ia64.parse_mask(cmdline)
    pvops_ia64.check_mask(hypervisor, masked)
    mem = PhysicalMemory()
    mem.add_ram(0, ram_size)
    env: BareMetal | XenModel = BareMetal() if hypervisor == "native" else XenModel(emulate_privops=emulate_privops)
    cpu = Cpu(mem, env)
    image.place(mem)
    support = build_support(mem, SUPPORT_BASE, hypervisor, masked, image.gp)
    if "pv_cpu_ops" in image.symbols:
        install_pv_cpu_ops(mem, image.symbols["pv_cpu_ops"], support)
    prefix = "ia64_native" if hypervisor == "native" else "xen"
    for name in BRANCH_NAMES:
        word, target = image.symbols.get(f"paravirt_{name}_targ"), image.symbols.get(f"{prefix}_{name}")
        if word is not None and target is not None:
            mem.write_u64(word, target)
    patches: list[PatchRecord] = []
    if patch and "noreplace-paravirt" not in cmdline.split():
        symbols = {**image.symbols, **support.symbols}
        patches += patch_bundles(mem, image.bundle_sites(), hypervisor, symbols, masked)
        patches += patch_branches(mem, image.branch_sites(), hypervisor, symbols)
    if isinstance(env, XenModel):
        env.install_translation("d", 0, 0, KERNEL_MAP_PS, KERNEL_PTE)
    else:
        cpu.tlb.insert_tr("d", 0, TlbEntry(0, KERNEL_MAP_PS, rr_rid(cpu.rr[0]), KERNEL_PTE))
    cpu.g[1] = image.gp
    cpu.g[12] = STACK_TOP
    cpu.b[0] = EXIT
    cpu.add_stop(EXIT, "exit")
    for name in ("pvgen_exit", "pvgen_fatal"):
        if name in image.symbols:
            cpu.add_stop(image.symbols[name], name)
    if isinstance(env, XenModel):
        env.boot(cpu, image.entry, PSR_KERNEL_BOOT)
    else:
        cpu.boot(image.entry, PSR_KERNEL_BOOT, cpl=0)
    return Machine(cpu, env, image, support, patches)


def architectural_registers(machine: Machine) -> dict[str, Any]:
    """The state the kernel can observe: virtual PSR/CRs/RRs under Xen, the machine's natively."""
    cpu, env = machine.cpu, machine.env
    if isinstance(env, XenModel):
        psr, crs, rrs = env.virtual_psr(cpu), {n: env.vcr(c) for n, c in REPORTED_CRS.items()}, list(env.vrr)
    else:
        psr, crs, rrs = cpu.psr, {n: cpu.cr[c] for n, c in REPORTED_CRS.items()}, list(cpu.rr)
    return {
        "gr": list(cpu.g),
        "nat": cpu.nat,
        "pr": cpu.read_pr(),
        "br": list(cpu.b),
        "psr": psr,
        "cr": crs,
        "rr": rrs,
        "ar": {name: cpu.ar[number] for name, number in REPORTED_ARS.items()},
        "cfm": cpu.cfm,
    }


def guest_tlb(machine: Machine) -> list[tuple[str, TlbEntry]]:
    """The translations as the kernel inserted them (Xen: its virtual TLB)."""
    env = machine.env
    return env.guest_tlb() if isinstance(env, XenModel) else machine.cpu.tlb.entries()


def report(machine: Machine, reason: str, detail: str) -> RunReport:
    cpu, env = machine.cpu, machine.env
    xen = env if isinstance(env, XenModel) else None
    by_class = cpu.class_counts()
    return RunReport(
        image=machine.image.path,
        hypervisor=env.name,
        reason=reason,
        detail=detail,
        ip=cpu.ip,
        instructions=sum(by_class.values()),
        by_class=by_class,
        cycles=cpu.cycles(),
        events=dict(cpu.events),
        faults=dict(cpu.fault_counts),
        fault_log=tuple(cpu.fault_log),
        hyperprivops=dict(xen.hyperprivops) if xen else {},
        hypercalls=dict(xen.hypercalls) if xen else {},
        privop_emulations=dict(xen.emulated) if xen else {},
        reflections=dict(xen.reflected) if xen else {},
        patched=dict(Counter(record.kind for record in machine.patches)),
        patches=tuple(machine.patches),
        registers=architectural_registers(machine),
        tlb=tuple(guest_tlb(machine)),
        console=xen.console.decode("latin-1") if xen else "",
    )


def run_image(
    path: str | Path,
    hypervisor: str = "native",
    *,
    patch: bool = True,
    cmdline: str = "",
    max_instructions: int = 50_000_000,
    emulate_privops: bool = True,
    ram_size: int = RAM_SIZE,
) -> RunReport:
    """Boots the IA-64 ELF image at `path` under `hypervisor` ("native" or "xen") and runs it.

    Raises ImageError for a file that is not an IA-64 executable, ValueError (MaskError) for a bad
    `pv_ops.native=` mask or one the hypervisor cannot honour; everything the guest does, faults
    included, ends up in the report.
    """
    machine = boot_image(
        path, hypervisor, patch=patch, cmdline=cmdline, emulate_privops=emulate_privops, ram_size=ram_size
    )
    stop = machine.cpu.run(max_instructions)
    return report(machine, stop.reason, stop.detail)
