"""Boots a kernel-style x86-64 image under a hypervisor model, runs it and reports what it cost.

    report = run_image(Path("sched.elf"), "xen", cmdline="pv_ops.native=lock")
    print(format_report(report)); json.dumps(report.to_json())

The steps are a kernel's: load the ELF; let the environment take the CPU (bare metal at
CPL 0, KVM at CPL 0 under VM exits, Xen PV at CPL 3 entered through its ELF note);
detect the hypervisor (CPUID 0x40000000 executed on the model, and the Xen PV boot
entry) with the generated layer's select_hypervisor; run the guest's early boot
(native_start_kernel, kvm_guest_init or startup_xen/xen_start_kernel); parse and check
the forced-native mask from the command line; fill pv_ops and copy pv_info; patch every
site (boot.py); then call `workload_entry` on a runtime stack until it returns or
halts. RAX is the result. Counters come from the CPU model (instructions per class and
per address) and the environment (exits, traps, hypercalls, events), priced with
hv/costs.py. The JSON schema is documented in docs/x86-runtime.md.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from pvgen.generated import pvops_x86_64 as layer
from pvgen.runtime.x86 import boot
from pvgen.runtime.x86.boot import BootError
from pvgen.runtime.x86.cpu import Cpu, RunResult
from pvgen.runtime.x86.elf import ElfError, load_elf
from pvgen.runtime.x86.faults import ArchFault
from pvgen.runtime.x86.hv import costs
from pvgen.runtime.x86.hv.base import Environment, ExEntry, GuestCrash, GuestImage, Stats, counter_dict
from pvgen.runtime.x86.hv.xen import START_INFO_VA, XenPv
from pvgen.runtime.x86.memory import AddressError
from pvgen.runtime.x86.sensitive import classify
from pvgen.runtime.yielding import boot_yielding

SCHEMA = "pvgen-x86-run/1"
STACK_BASE = 0xFFFF_C900_0010_0000
STACK_SIZE = 0x10000
STACK_TOP = STACK_BASE + STACK_SIZE
SCRATCH = 0xFFFF_C900_0020_0000  # runtime stubs (the CPUID probe)
DEFAULT_BUDGET = 20_000_000
ENTRY_SYMBOL = "workload_entry"
X86_EFLAGS_IF = 0x200
PV_INFO_SIZE = 24  # struct pv_info: u32 kernel_rpl, int shared_kernel_pmd, int paravirt_enabled, u16, name


# -- the report ------------------------------------------------------------------------------


@attrs.frozen
class OpRecord:
    """One op in a run: the implementation chosen, its sites and how often it ran."""

    hypervisor: str  # whose implementation ("native" when masked)
    kind: str  # asm | call | nop | identity
    symbol: str  # what the slot holds ("" if the image lacks it)
    sites: dict[str, int]  # patch kind -> sites
    calls: int | None  # site executions (paravirt), or entries of the implementation (native images)
    entries: int | None  # executions of the implementation's first instruction


@attrs.frozen
class RunReport:
    """Everything a run measured; `to_json()` is the stable, documented form."""

    image: str
    hypervisor: str
    detected: str
    cpuid_signature: str | None
    boot_entry: str | None
    execution: str
    cpl: int
    options: dict[str, Any]
    cmdline: str
    patched: bool
    mask: tuple[str, ...]
    mask_cost: dict[str, float] | None
    reason: str
    rax: int
    fault: str | None
    irqs_enabled: bool
    instructions: int
    by_class: dict[str, int]
    cycles: float
    cycles_by_source: dict[str, float]
    stats: Stats
    exact: bool
    boot_instructions: int
    boot_cycles: float
    boot_stats: Stats
    sites: dict[str, int]
    ops: dict[str, OpRecord]
    pv_info: dict[str, Any] | None
    console: str

    def to_json(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "schema": SCHEMA,
            "cost_model": costs.COST_MODEL,
            "image": self.image,
            "hypervisor": self.hypervisor,
            "detected": self.detected,
            "detection": {"cpuid_signature": self.cpuid_signature, "boot_entry": self.boot_entry},
            "environment": {"execution": self.execution, "cpl": self.cpl, "options": dict(self.options)},
            "cmdline": self.cmdline,
            "patched": self.patched,
            "yielding": boot_yielding(layer, self.detected).to_json(),
            "mask": {
                "groups": list(self.mask),
                "bits": sum(1 << layer.MASK_BITS[g] for g in self.mask),
                "cost": dict(self.mask_cost) if self.mask_cost is not None else None,
            },
            "result": {
                "reason": self.reason,
                "rax": self.rax,
                "rax_hex": f"{self.rax:#x}",
                "fault": self.fault,
                "irqs_enabled": self.irqs_enabled,
            },
            "counts": {
                "instructions": self.instructions,
                "by_class": dict(self.by_class),
                "cycles": round(self.cycles, 1),
                "cycles_by_source": {k: round(v, 1) for k, v in self.cycles_by_source.items()},
                "vm_exits": _tally(stats.vm_exits, "by_reason"),
                "traps": _tally(stats.traps, "by_kind"),
                "hypercalls": _tally(stats.hypercalls, "by_name"),
                "guest_exceptions": _tally(stats.guest_exceptions, "by_kind"),
                "events": {"raised": stats.events_raised, "delivered": stats.events_delivered},
                "exact": self.exact,
            },
            "boot": {
                "instructions": self.boot_instructions,
                "cycles": round(self.boot_cycles, 1),
                "vm_exits": _tally(self.boot_stats.vm_exits, "by_reason"),
                "traps": _tally(self.boot_stats.traps, "by_kind"),
                "hypercalls": _tally(self.boot_stats.hypercalls, "by_name"),
            },
            "sites": {"total": sum(self.sites.values()), "by_kind": dict(self.sites)},
            "ops": {
                name: {
                    "implementation": {"hypervisor": op.hypervisor, "kind": op.kind, "symbol": op.symbol},
                    "sites": dict(op.sites),
                    "calls": op.calls,
                    "entries": op.entries,
                }
                for name, op in self.ops.items()
            },
            "pv_info": self.pv_info,
            "console": self.console,
        }


def _tally(counter: Mapping[str, float], key: str) -> dict[str, Any]:
    items = counter_dict(counter)
    return {"total": int(sum(items.values())), key: {k: int(v) for k, v in items.items()}}


def format_report(report: RunReport) -> str:
    """The report as text, for the command line."""
    data = report.to_json()
    counts = data["counts"]
    lines = [
        f"image       {report.image}",
        f"hypervisor  {report.hypervisor} ({report.execution}, CPL {report.cpl}); detected {report.detected}"
        + (f" by CPUID '{report.cpuid_signature}'" if report.cpuid_signature else "")
        + (f" and boot entry {report.boot_entry}" if report.boot_entry else ""),
        f"cmdline     {report.cmdline!r}; sites {'patched' if report.patched else 'left as indirect calls'}",
        f"mask        {','.join(report.mask) or 'none'}",
        f"result      {report.reason}, rax = {report.rax} ({report.rax:#x})"
        + (f"; fault: {report.fault}" if report.fault else "")
        + f"; interrupts {'enabled' if report.irqs_enabled else 'disabled'} at exit",
        f"cycles      {counts['cycles']:,.0f} ({costs.COST_MODEL})",
    ]
    for source, value in counts["cycles_by_source"].items():
        lines.append(f"  {source:<14}{value:>14,.0f}")
    lines.append(f"instructions {counts['instructions']:,}" + ("" if report.exact else " (per-address counts partial)"))
    lines.append("  " + ", ".join(f"{k} {v:,}" for k, v in counts["by_class"].items() if v))
    for title, key, sub in (
        ("VM exits", "vm_exits", "by_reason"),
        ("traps", "traps", "by_kind"),
        ("hypercalls", "hypercalls", "by_name"),
        ("guest exceptions", "guest_exceptions", "by_kind"),
    ):
        tally = counts[key]
        if tally["total"]:
            detail = ", ".join(f"{k} {v}" for k, v in tally[sub].items())
            lines.append(f"{title:<12}{tally['total']}: {detail}")
    if counts["events"]["raised"] or counts["events"]["delivered"]:
        lines.append(f"events      raised {counts['events']['raised']}, delivered {counts['events']['delivered']}")
    yielding = boot_yielding(layer, report.detected)
    yielded = ", ".join(f"{rule} ({function})" for rule, function in yielding.yielded) or "nothing"
    iommus = ", ".join(step.detect for step in yielding.iommu if step.found) or "none"
    lines.append(f"yielding    paravirt_enabled() {'true' if yielding.paravirt_enabled else 'false'}; yields {yielded}")
    lines.append(f"iommu       found {iommus}; iommu_present(pci) {yielding.iommu_present('pci')}")
    if report.mask_cost is not None:
        cost = ", ".join(f"{k} {v:+,.0f}" for k, v in report.mask_cost.items())
        lines.append(f"mask cost   {cost} (against the same run without the mask)")
    lines.append(f"sites       {sum(report.sites.values())}: " + ", ".join(f"{k} {v}" for k, v in report.sites.items()))
    active = {name: op for name, op in report.ops.items() if op.sites or op.calls or op.entries}
    if active:
        lines.append("ops         calls  implementation")
        for name, op in active.items():
            calls = "-" if op.calls is None else str(op.calls)
            where = ", ".join(f"{k} {v}" for k, v in op.sites.items())
            lines.append(f"  {name:<28}{calls:>6}  {op.hypervisor}:{op.kind} {op.symbol or '(none)'}  [{where}]")
    lines.append(
        f"boot        {report.boot_instructions:,} instructions, {report.boot_cycles:,.0f} cycles, "
        f"hypercalls {sum(report.boot_stats.hypercalls.values())}, VM exits {sum(report.boot_stats.vm_exits.values())}"
    )
    if report.console:
        lines.append("console     " + report.console.rstrip().replace("\n", "\n            "))
    return "\n".join(lines)


# -- loading ---------------------------------------------------------------------------------------


def load_guest_image(cpu: Cpu, path: Path) -> GuestImage:
    """Maps the image and reads what the environments need: symbols, Xen notes, __ex_table."""
    try:
        loaded = load_elf(cpu.memory, path)
    except (ElfError, OSError, struct.error, IndexError, ValueError) as error:
        raise BootError(f"{path}: not a well-formed ELF image (truncated or malformed: {error})") from None
    notes: dict[int, bytes] = {}
    ex_table: dict[int, ExEntry] = {}
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        with Path(path).open("rb") as stream:
            elf = ELFFile(stream)
            section = elf.get_section_by_name(".note.Xen")
            if section is not None:
                notes = _parse_notes(section.data())
            section = elf.get_section_by_name("__ex_table")
            if section is not None:
                data = section.data()
                for offset in range(0, len(data) - len(data) % 24, 24):
                    insn, fixup, handler = struct.unpack_from("<QQQ", data, offset)
                    ex_table[insn] = ExEntry(insn, fixup, handler)
    except (ELFError, OSError, struct.error, ValueError) as error:
        raise BootError(f"{path}: cannot read the ELF sections: {error}") from None
    return GuestImage(Path(path), loaded.entry, dict(loaded.symbols), loaded.segments, notes, ex_table)


def _parse_notes(data: bytes) -> dict[int, bytes]:
    notes = {}
    offset = 0
    while offset + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from("<III", data, offset)
        offset += 12
        name = data[offset : offset + namesz].rstrip(b"\0")
        offset += (namesz + 3) & ~3
        desc = data[offset : offset + descsz]
        offset += (descsz + 3) & ~3
        if name == b"Xen":
            notes[kind] = desc
    return notes


# -- running ----------------------------------------------------------------------------------------


class Machine:
    """One CPU, one image, one environment; `call` runs a guest function to completion."""

    def __init__(self, path: Path, hypervisor: str, env: Environment) -> None:
        self.cpu = Cpu()
        self.env = env
        self.image = load_guest_image(self.cpu, path)
        self.cpu.memory.map(STACK_BASE, STACK_SIZE, "rw", name="runtime stack")
        self.cpu.memory.map(SCRATCH, 0x1000, "rx", b"\x0f\xa2\xc3", name="runtime stubs")  # cpuid; ret
        env.attach(self.cpu, self.image)
        self.hypervisor = hypervisor

    def symbol(self, name: str) -> int:
        address = self.image.symbols.get(name)
        if address is None:
            raise BootError(f"{self.image.path}: no symbol '{name}'")
        return address

    def call(self, address: int, args: tuple[int, ...] = (), budget: int = DEFAULT_BUDGET) -> RunResult:
        """Runs a guest function on the runtime stack; timers tick between chunks; GuestCrash on a fault."""
        cpu, env = self.cpu, self.env
        if not cpu.memory.probe(address, 1, 4):
            raise BootError(f"{self.image.path}: entry {address:#x} is not in executable memory")
        total = 0
        deadline = env.next_deadline(cpu)
        chunk = min(budget, deadline) if deadline else budget
        try:
            result = cpu.run(address, STACK_TOP, chunk, args)
            total += result.instructions
            while result.reason == "limit" and total < budget:
                deadline = env.next_deadline(cpu)
                if deadline is not None and deadline <= 1:
                    env.tick(cpu)
                    deadline = env.next_deadline(cpu)
                left = budget - total
                result = cpu.resume(min(left, deadline) if deadline else left)
                total += result.instructions
        except ArchFault as fault:
            raise GuestCrash(fault, self.image.symbol_at(fault.rip)) from None
        return RunResult(result.reason, result.rax, total, result.rip)

    def probe_cpuid(self, leaf: int) -> tuple[int, int, int, int]:
        """Executes CPUID on the model, at the guest's privilege, under the environment."""
        cpu = self.cpu
        cpu.set_reg("rax", leaf)
        cpu.set_reg("rcx", 0)
        self.call(SCRATCH, budget=100)
        return cpu.reg("rax"), cpu.reg("rbx"), cpu.reg("rcx"), cpu.reg("rdx")


def _signature(values: tuple[int, int, int, int]) -> str | None:
    text = struct.pack("<III", values[1] & 0xFFFF_FFFF, values[2] & 0xFFFF_FFFF, values[3] & 0xFFFF_FFFF)
    signature = text.rstrip(b"\0").decode("latin-1")
    return signature or None


def _execution_counts(cpu: Cpu, env: Environment) -> tuple[Counter[int], dict[int, tuple[str, str | None]]]:
    """Executions per instruction address: the translated blocks' exit counters, plus fault prefixes."""
    counts: Counter[int] = Counter(env.fault_prefix)
    info: dict[int, tuple[str, str | None]] = {}
    for block in cpu.translator.blocks + cpu.translator.retired_blocks:
        for insn, klass in zip(block.insns, block.classes, strict=True):
            if insn.address not in info:
                info[insn.address] = (klass, classify(insn))
        n = len(block.insns)
        ending = [0] * (n + 2)
        for position, hits in zip(block.exit_positions, block.hits, strict=True):
            if hits:
                ending[min(position, n)] += hits
        running = 0
        for p in range(n - 1, -1, -1):
            running += ending[p + 1]
            if running:
                counts[block.insns[p].address] += running
    return counts, info


def _price(
    counts: Mapping[int, int], info: Mapping[int, tuple[str, str | None]], stats: Stats, by_class: Mapping[str, int]
) -> float:
    """Cycles of the retired instructions: per address where known, per class for the rest.

    The prefix of a block cut short by a fault is counted by class only (cpu.py keeps no
    per-address record of it); those instructions are priced by class. Instructions an
    exit or trap replaced are taken out: the environment charged for them.
    """
    total = 0.0
    derived: Counter[str] = Counter()
    for address, n in counts.items():
        klass, kind = info.get(address, ("alu", None))
        derived[klass] += n
        total += n * costs.instruction_cycles(klass, kind)
    for klass, n in by_class.items():
        if n > derived[klass]:
            total += (n - derived[klass]) * costs.instruction_cycles(klass, None)
    for kind, n in stats.replaced.items():
        total -= n * costs.instruction_cycles("system", kind)
    return max(total, 0.0)


def _strip_mask(cmdline: str) -> str:
    return " ".join(w for w in cmdline.split() if not w.startswith(f"{layer.MASK_CMDLINE}="))


def run_image(
    path: Path,
    hypervisor: str,
    *,
    patch: bool = True,
    cmdline: str = "",
    max_instructions: int = DEFAULT_BUDGET,
    options: Mapping[str, Any] | None = None,
    compare_mask: bool = True,
) -> RunReport:
    """Boots `path` under the named hypervisor model ('native', 'kvm', 'xen') and runs workload_entry.

    Raises BootError for an image or command line that cannot boot as asked (bad ELF, bad
    site, missing symbol, refused or unknown mask). A guest that faults at run time is a
    report with reason "crash". With a mask, the same run without it is made too (unless
    `compare_mask` is False) and the difference is the mask's cost.
    """
    report = _run(Path(path), hypervisor, patch, cmdline, max_instructions, dict(options or {}))
    if report.mask and compare_mask:
        baseline = _run(Path(path), hypervisor, patch, _strip_mask(cmdline), max_instructions, dict(options or {}))
        cost = {
            "cycles": report.cycles - baseline.cycles,
            "instructions": float(report.instructions - baseline.instructions),
            "vm_exits": float(sum(report.stats.vm_exits.values()) - sum(baseline.stats.vm_exits.values())),
            "traps": float(sum(report.stats.traps.values()) - sum(baseline.stats.traps.values())),
            "hypercalls": float(sum(report.stats.hypercalls.values()) - sum(baseline.stats.hypercalls.values())),
        }
        report = attrs.evolve(report, mask_cost=cost)
    return report


def boot_machine(
    path: Path, hypervisor: str, *, patch: bool = True, cmdline: str = "", options: Mapping[str, Any] | None = None
) -> tuple[Machine, dict[str, Any]]:
    """Everything up to the workload: load, detect, early boot, mask, tables, patching."""
    from pvgen.runtime.x86.hv import make_environment

    environment_options = dict(options or {})
    if hypervisor == "xen":
        environment_options.setdefault("cmdline", cmdline)
    try:
        env = make_environment(hypervisor, **environment_options)
    except (ValueError, TypeError) as error:
        raise BootError(str(error)) from None
    machine = Machine(path, hypervisor, env)
    cpu, image = machine.cpu, machine.image
    state: dict[str, Any] = {}
    before = env.stats.copy()

    # Detection: what the environment shows the kernel.
    try:
        signature = _signature(machine.probe_cpuid(0x4000_0000))
    except GuestCrash as crash:
        raise BootError(f"the CPUID probe faulted: {crash}") from None
    entry_symbol = env.boot_entry()
    boot_entry = entry_symbol if entry_symbol is not None and entry_symbol in image.symbols else None
    detected = layer.select_hypervisor(cpuid_signature=signature, boot_entry=boot_entry)
    state.update(signature=signature, boot_entry=boot_entry, detected=detected)

    # The kernel's early boot, for the environment it found.
    try:
        if isinstance(env, XenPv):
            entry = image.note_address(1)
            assert entry is not None
            machine.call(entry, (START_INFO_VA, START_INFO_VA))
        else:
            if "native_start_kernel" in image.symbols:
                machine.call(image.symbols["native_start_kernel"])
            if detected == "kvm" and "kvm_guest_init" in image.symbols:
                machine.call(image.symbols["kvm_guest_init"])
    except GuestCrash as crash:
        raise BootError(f"early boot faulted: {crash}") from None

    # The forced-native mask.
    try:
        masked = layer.parse_mask(cmdline)
        layer.check_mask(detected, masked)
    except layer.MaskError as error:
        raise BootError(str(error)) from None
    state["masked"] = masked

    # pv_ops and pv_info.
    sites = boot.read_sites(path)
    symbols = _boot_symbols(image.symbols)
    table: dict[str, str] = {}
    if boot.TABLE_SYMBOL in image.symbols:
        table = boot.fill_table(layer, detected, masked, symbols, cpu.memory.write_u64)
    elif sites:
        raise BootError(f"{path}: the image has {len(sites)} patch sites but no '{boot.TABLE_SYMBOL}' table")
    state["pv_info"] = _install_pv_info(cpu, image, detected)

    # Patching.
    def read(address: int, size: int) -> bytes:
        try:
            return cpu.memory.read(address, size)
        except AddressError:
            raise BootError(f"site at {address:#x} is outside the image") from None

    writes: list[tuple[int, bytes]] = []

    def write(address: int, data: bytes) -> None:
        writes.append((address, data))

    folds = boot.read_folds(path)
    report = boot.patch_sites(layer, detected, masked, sites, symbols, read, write, table, folds)
    if patch:
        for address, data in writes:
            cpu.memory.write(address, data)
        state["sites"] = report.by_kind
        state["site_kinds"] = report.by_op
        state["site_anchors"] = {address: fold.start for address, fold in report.folded.items()}
        state["site_folds"] = report.folded
    else:
        state["sites"] = {"indirect": len(sites)} if sites else {}
        state["site_kinds"] = {name: {"indirect": sum(k.values())} for name, k in report.by_op.items()}
        state["site_anchors"] = {}
        state["site_folds"] = {}
    state["site_records"] = sites
    state["table"] = table
    state["boot_stats"] = env.stats.since(before)
    return machine, state


def _boot_symbols(symbols: Mapping[str, int]) -> dict[str, int]:
    """The image's symbols, as boot resolves table slots and direct calls against them."""
    return dict(symbols)


def _install_pv_info(cpu: Cpu, image: GuestImage, hypervisor: str) -> dict[str, Any] | None:
    live, chosen = image.symbols.get("pv_info"), image.symbols.get(f"pv_info_{hypervisor}")
    if live is None or chosen is None:
        return None
    data = cpu.memory.read(chosen, PV_INFO_SIZE)
    cpu.memory.write(live, data)
    kernel_rpl, shared_kernel_pmd, paravirt_enabled, extra_cs, name_ptr = struct.unpack("<IiiH2xQ", data)
    name = b""
    try:
        name = cpu.memory.read(name_ptr, 64).split(b"\0")[0]
    except AddressError:
        pass
    return {
        "name": name.decode("latin-1"),
        "kernel_rpl": kernel_rpl,
        "shared_kernel_pmd": shared_kernel_pmd,
        "paravirt_enabled": paravirt_enabled,
        "extra_user_64bit_cs": extra_cs,
    }


def _run(path: Path, hypervisor: str, patch: bool, cmdline: str, budget: int, options: dict[str, Any]) -> RunReport:
    machine, state = boot_machine(path, hypervisor, patch=patch, cmdline=cmdline, options=options)
    cpu, env, image = machine.cpu, machine.env, machine.image
    entry = image.symbols.get(ENTRY_SYMBOL, image.entry)
    boot_instructions = cpu.retired()
    boot_counts, boot_info = _execution_counts(cpu, env)
    boot_price = _price(boot_counts, boot_info, state["boot_stats"], cpu.counts())
    boot_cycles = boot_price + sum(state["boot_stats"].cycles.values())

    # The workload, in a kernel context with interrupts on.
    if env.execution != "pv":
        cpu.rflags |= X86_EFLAGS_IF
    cpu.translator.fold_retired()
    stats_before = env.stats.copy()
    classes_before = cpu.counts()
    retired_before = cpu.retired()
    folded_before = cpu.translator.retired_total
    counts_before, _ = _execution_counts(cpu, env)
    emulated_before = Counter(env.emulated)
    fault = None
    try:
        result = machine.call(entry, budget=budget)
        reason, rax = result.reason, result.rax
    except GuestCrash as crash:
        reason, rax, fault = "crash", cpu.reg("rax"), str(crash)
    instructions = cpu.retired() - retired_before
    by_class = dict(cpu.counts() - classes_before)
    counts_after, info = _execution_counts(cpu, env)
    counts = counts_after - counts_before
    exact = cpu.translator.retired_total == folded_before and sum(counts.values()) == instructions
    stats = env.stats.since(stats_before)
    cycles_by_source = {"instructions": _price(counts, info, stats, by_class)}
    for source, value in sorted(stats.cycles.items()):
        cycles_by_source[source] = value

    # An op whose instruction trapped and was emulated ran too, though it did not retire.
    ops = _op_records(state, image, counts + (env.emulated - emulated_before))
    return RunReport(
        image=str(path),
        hypervisor=hypervisor,
        detected=state["detected"],
        cpuid_signature=state["signature"],
        boot_entry=state["boot_entry"],
        execution=env.execution,
        cpl=env.cpl,
        options=env.options(),
        cmdline=cmdline,
        patched=patch,
        mask=tuple(sorted(state["masked"])),
        mask_cost=None,
        reason=(env.halted_reason or reason) if reason == "hlt" else reason,
        rax=rax,
        fault=fault,
        irqs_enabled=env.irqs_enabled(cpu),
        instructions=instructions,
        by_class={k: by_class.get(k, 0) for k in ("alu", "mem", "branch", "muldiv", "string", "system")},
        cycles=sum(cycles_by_source.values()),
        cycles_by_source=cycles_by_source,
        stats=stats,
        exact=exact,
        boot_instructions=boot_instructions,
        boot_cycles=boot_cycles,
        boot_stats=state["boot_stats"],
        sites=dict(state["sites"]),
        ops=ops,
        pv_info=state["pv_info"],
        console="".join(env.console),
    )


def _op_records(state: Mapping[str, Any], image: GuestImage, counts: Mapping[int, int]) -> dict[str, OpRecord]:
    """Per op: the implementation chosen, its sites, and its executions in the workload run."""
    detected, masked, table = state["detected"], state["masked"], state["table"]
    site_executions: Counter[str] = Counter()
    for site in state["site_records"]:
        op = layer.OPS_BY_INDEX.get(site.index)
        if op is not None:
            anchor = state["site_anchors"].get(site.address, site.address)
            site_executions[f"{op.group}.{op.name}"] += counts.get(anchor, 0)
    records = {}
    for op in layer.OPS:
        name = f"{op.group}.{op.name}"
        if table:
            owner = "native" if op.group in masked else detected
            impl = layer.effective_impl(op, detected, masked)
            symbol = table.get(name, "")
        else:
            # A native image has no table: the native implementation is compiled in (a function or inline).
            owner, impl = "native", op.impls["native"]
            symbol = impl.symbol or "" if impl.kind == "call" else ""
        address = image.symbols.get(symbol) if symbol else None
        entries = counts.get(address, 0) if address is not None else None
        sites = dict(state["site_kinds"].get(name, {}))
        calls = site_executions[name] if sites else entries
        records[name] = OpRecord(owner, impl.kind, symbol, sites, calls, entries)
    return records
