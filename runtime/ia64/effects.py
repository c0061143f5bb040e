"""Runs one IA-64 op on the CPU model under bare metal or the Xen model, for the generated suites.

A machine is RAM with the hypervisor's pv_cpu_ops implementations and descriptors placed
(support.py) and a pv_cpu_ops table filled; code goes at CODE and returns through b0 to a stop.
Three shapes of code: the site patched with the op's template (patch.py, brl re-aimed), the
unpatched 5-bundle stub (reference §2.2, as tests/data/ia64/pv_stub.h emits it) calling through
the descriptor, and either of them seeded with random registers for the clobber checks.
"""

from __future__ import annotations

import random
from typing import Any

from pvgen.runtime.ia64.cpu import Cpu
from pvgen.runtime.ia64.memory import PhysicalMemory
from pvgen.runtime.ia64.native import BareMetal
from pvgen.runtime.ia64.patch import NOP_BUNDLE, patch_bundles, relocate_brl
from pvgen.runtime.ia64.run import KERNEL_MAP_PS, KERNEL_PTE, SUPPORT_BASE
from pvgen.runtime.ia64.state import PSR_I, PSR_IC, PSR_KERNEL_BOOT
from pvgen.runtime.ia64.support import build_support, cpu_ops, install_pv_cpu_ops
from pvgen.runtime.ia64.tlb import TlbEntry, rr_rid
from pvgen.runtime.ia64.xen import XenModel

from pvgen.ia64.encoder import assemble

RAM = 64 << 20
TABLE = 0x0010_0000
DATA = 0x0020_0000
CODE = 0x0040_0000
EXIT = 0x0050_0000
ARGS = (8, 9, 10, 11, 14)
M64 = (1 << 64) - 1
RETURN = assemble("{ .mib\nnop.m 0\nnop.i 0\nbr.ret.sptk.many b0\n;;\n}").code
STUB = """
{{ .mlx
nop.m 0
movl r2 = {slot}
;;
}}
{{ .mii
ld8 r2 = [r2]
mov r17 = ip
mov r16 = gp
;;
}}
{{ .mii
ld8 r3 = [r2], 8
adds r17 = 48, r17
;;
mov b7 = r3
}}
{{ .mib
ld8 gp = [r2]
mov b6 = r17
br.cond.sptk.few b7
}}
{{ .mii
mov gp = r16
nop.i 0
nop.i 0
;;
}}
"""


def arguments(op: Any, rng: random.Random) -> list[int]:
    """Values the kernel would pass: region addresses, legal region-register values, small indices."""
    values = []
    for name in op.params:
        if name in ("index",) and op.name in ("get_cpuid", "get_pmd"):
            values.append(rng.randrange(4))
        elif name == "size":
            values.append(rng.choice((12, 14, 16)) << 2)
        elif name.startswith("val"):  # a region register: rid, preferred page size, ve
            values.append(rng.randrange(1, 0x8000) << 8 | 14 << 2 | rng.randrange(2))
        elif name == "flags":
            values.append(rng.choice((0, PSR_I)))  # Linux passes flags & IA64_PSR_I
        else:  # an address (index of get_rr/set_rr is an address whose top bits are the region)
            values.append(rng.randrange(8) << 61 | rng.getrandbits(40) & ~7)
    return values


LAYER: list[Any] = []  # the generated layer under test (harness.layer("ia64")), set by use()


def use(layer: Any) -> None:
    """support.py and patch.py read the repository's layer; the harness points them at the one under test."""
    from pvgen.runtime.ia64 import patch, support

    LAYER[:] = [layer]
    patch.pvops_ia64 = support.pvops_ia64 = layer


def _machine(hypervisor: str, code: bytes) -> tuple[Cpu, Any, Any]:
    mem = PhysicalMemory()
    mem.add_ram(0, RAM)
    env: Any = BareMetal() if hypervisor == "native" else XenModel()
    cpu = Cpu(mem, env)
    support = build_support(mem, SUPPORT_BASE, hypervisor)
    install_pv_cpu_ops(mem, TABLE, support)
    mem.write(CODE, code + RETURN)
    if isinstance(env, XenModel):
        env.install_translation("d", 0, 0, KERNEL_MAP_PS, KERNEL_PTE)
    else:
        cpu.tlb.insert_tr("d", 0, TlbEntry(0, KERNEL_MAP_PS, rr_rid(cpu.rr[0]), KERNEL_PTE))
    cpu.b[0] = EXIT
    cpu.add_stop(EXIT, "exit")
    if isinstance(env, XenModel):
        env.boot(cpu, CODE, PSR_KERNEL_BOOT)
    else:
        cpu.boot(CODE, PSR_KERNEL_BOOT, cpl=0)
    return cpu, env, support


def site(op: Any, hypervisor: str, patched: bool) -> tuple[Cpu, Any]:
    """A machine whose code is the op's call site: the stub, patched by patch.py or not."""
    member = [o.name for o in cpu_ops()].index(op.name)
    stub = assemble(STUB.format(slot=TABLE + 8 * member), address=CODE).code
    cpu, env, support = _machine(hypervisor, stub)
    if patched:
        records = patch_bundles(cpu.mem, [(CODE, CODE + len(stub), op.index)], hypervisor, support.symbols)
        assert records[0].kind != "unpatched", f"the patcher left {op.name} under {hypervisor}: {records[0].detail}"
    return cpu, env


def template(op: Any, hypervisor: str) -> tuple[Cpu, Any]:
    """A machine whose code is the op's template alone, NOP-padded to the site, its brl aimed."""
    impl = op.impls[hypervisor]
    code = impl.template + NOP_BUNDLE * ((80 - len(impl.template)) // 16)
    cpu, env, support = _machine(hypervisor, code)
    for offset, kind, symbol in impl.relocations:
        if kind == "brl":
            relocate_brl(cpu.mem, CODE + offset, support.symbols[symbol])
    return cpu, env


def seed(cpu: Cpu, op: Any, rng: random.Random, *, registers: bool) -> list[int]:
    """Random general, predicate and branch registers (with `registers`), then the arguments."""
    if registers:
        for n in range(1, 32):
            if n != 12:
                cpu.g[n] = rng.getrandbits(64)
        for n in range(1, 64):
            cpu.p[n] = bool(rng.getrandbits(1))
        for n in range(1, 8):
            cpu.b[n] = rng.getrandbits(60) << 4
    args = arguments(op, rng)
    for register, value in zip(ARGS, args, strict=False):
        cpu.g[register] = value
    return args


def run(cpu: Cpu, what: str) -> None:
    stop = cpu.run(20_000)
    assert stop.reason == "stop" and cpu.ip == EXIT, f"{what}: ended by {stop}"


def state(cpu: Cpu, env: Any, clobbers: frozenset[str]) -> dict[str, Any]:
    """GR, PR and BR outside the clobbers, and the interrupt state the kernel sees."""
    out: dict[str, Any] = {}
    out.update({f"r{n}": cpu.g[n] for n in range(1, 32) if f"r{n}" not in clobbers})
    out.update({f"p{n}": cpu.p[n] for n in range(1, 64) if f"p{n}" not in clobbers})
    out.update({f"b{n}": cpu.b[n] for n in range(8) if f"b{n}" not in clobbers})
    psr = env.virtual_psr(cpu) if isinstance(env, XenModel) else cpu.psr
    out["psr.i"], out["psr.ic"] = bool(psr & PSR_I), bool(psr & PSR_IC)
    out["rr"] = list(env.vrr) if isinstance(env, XenModel) else list(cpu.rr)
    return out


def effect_names(layer: Any, op: Any, hypervisor: str, seed_value: int, *, irqs_on: bool) -> dict[str, Any]:
    """Runs the op at a patched site (or through the stub, if the patcher leaves it) and reads the names."""
    rng = random.Random(seed_value)
    cpu, env = site(op, hypervisor, patched=True)
    xen = isinstance(env, XenModel)
    args = seed(cpu, op, rng, registers=False)
    if xen:
        env.set_virtual_psr(cpu, (env.virtual_psr(cpu) & ~PSR_I) | (PSR_I if irqs_on else 0))
    else:
        cpu.set_psr((cpu.psr & ~PSR_I) | (PSR_I if irqs_on else 0))
    faults = len(cpu.fault_log)
    before = dict(env.hyperprivops) if xen else {}
    run(cpu, f"{op.name} under {hypervisor}")
    psr = env.virtual_psr(cpu) if xen else cpu.psr
    rrs = env.vrr if xen else cpu.rr
    names: dict[str, Any] = {
        "psr_i": int(bool(psr & PSR_I)),
        "psr_ic": int(bool(psr & PSR_IC)),
        "ret": cpu.g[8],
        "hyperprivops": tuple(sorted(k for k, v in env.hyperprivops.items() if v != before.get(k, 0))) if xen else (),
        "faults": len(cpu.fault_log) - faults,
        "rr": lambda n: rrs[n & 7],
        "mem8": lambda a: cpu.mem.read(a, 1)[0],
        "mem64": lambda a: int.from_bytes(cpu.mem.read(a, 8), "little"),
        "tlb_has": lambda a: any(e.va >> e.ps == a >> e.ps for _side, e in cpu.tlb.entries()),
    }
    names.update({f"arg{i}": value for i, value in enumerate(args)})
    return names
