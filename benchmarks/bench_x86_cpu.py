"""Guest instructions per second of the x86-64 CPU model, and the ratio to unicorn.

Builds three kernel-like loops with gcc (the kernel's code model and flags), runs each
on the model after a warm-up run (so translation is not timed) and on unicorn (bare
metal, TLB in virtual mode, also warmed up), checks both return the same value, and
prints the median of several timed runs. The instruction count is the model's retired
count; unicorn runs the same instructions.

    python benchmarks/bench_x86_cpu.py [--runs N] [--scale X]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import unicorn
from pvgen.runtime.x86 import Cpu
from pvgen.runtime.x86.elf import load_elf
from unicorn import x86_const as ux

CFLAGS = (
    "-O2 -mcmodel=kernel -fno-pic -mno-red-zone -ffreestanding -fno-stack-protector -fcf-protection=none "
    "-fno-asynchronous-unwind-tables -mno-sse -mno-mmx -mno-sse2 -mno-3dnow -mno-avx"
).split()
STACK = 0xFFFF_C900_0000_0000
STACK_SIZE = 0x10000
RET = 0xFFFF_FFFF_8F00_0000

SOURCE = r"""
typedef unsigned long u64;
typedef unsigned int u32;

static inline u64 save_fl(void) { u64 f; asm volatile("pushfq; popq %0" : "=r"(f) :: "memory"); return f; }
static inline void restore_fl(u64 f) { asm volatile("pushq %0; popfq" :: "g"(f) : "memory", "cc"); }
static inline void irq_disable(void) { asm volatile("cli" ::: "memory"); }

/* local_irq_save(); critical section; local_irq_restore() */
u64 counter;
u64 irq_loop(u64 n)
{
    u64 sum = 0;
    for (u64 i = 0; i < n; i++) {
        u64 f = save_fl();
        irq_disable();
        counter += i;
        sum += f & 0x200;
        restore_fl(f);
    }
    return sum;
}

/* set_pte() over a page table, reading entries back like a walker. */
u64 ptes[512];
u64 pt_loop(u64 n)
{
    u64 acc = 0;
    for (u64 r = 0; r < n; r++) {
        for (u64 i = 0; i < 512; i++) {
            u64 pte = ((i + r) << 12) | 0x63;
            if (i & 1)
                pte |= 1UL << 63;
            ptes[i] = pte;
            acc ^= ptes[(i * 7) & 511];
        }
    }
    return acc;
}

/* Test-and-set spinlock with pause, around a short critical section. */
volatile u32 lock;
u64 spin_loop(u64 n)
{
    u64 got = 0;
    for (u64 i = 0; i < n; i++) {
        while (__sync_lock_test_and_set(&lock, 1))
            while (lock)
                asm volatile("pause");
        got += i;
        __sync_lock_release(&lock);
    }
    return got;
}
"""

WORKLOADS = (
    ("irq_save_disable_restore", "irq_loop", 200_000),
    ("page_table_update", "pt_loop", 400),
    ("spinlock", "spin_loop", 300_000),
)


def build(workdir: Path) -> Path:
    source, obj, image = workdir / "loops.c", workdir / "loops.o", workdir / "loops.elf"
    source.write_text(SOURCE)
    subprocess.run(["gcc", *CFLAGS, "-c", str(source), "-o", str(obj)], check=True)
    subprocess.run(
        ["ld", "-Ttext=0xffffffff81000000", "-e", "0", "-z", "max-page-size=4096", "-o", str(image), str(obj)],
        check=True,
    )
    return image


def model_runner(image: Path, function: str) -> tuple[Cpu, int]:
    cpu = Cpu()
    symbols = load_elf(cpu.memory, image).symbols
    cpu.memory.map(STACK, STACK_SIZE, "rw")
    return cpu, symbols[function]


def time_model(image: Path, function: str, n: int, runs: int) -> tuple[list[float], int, int]:
    cpu, entry = model_runner(image, function)
    cpu.rflags = 0x202
    cpu.run(entry, STACK + STACK_SIZE, args=(max(1, n // 20),))  # warm-up: translate everything
    times, count, rax = [], 0, 0
    for _ in range(runs):
        cpu.rflags = 0x202
        start = time.perf_counter()
        result = cpu.run(entry, STACK + STACK_SIZE, max_instructions=10**10, args=(n,))
        times.append(time.perf_counter() - start)
        count, rax = result.instructions, result.rax
        assert result.reason == "return"
    return times, count, rax


def time_unicorn(image: Path, function: str, n: int, runs: int) -> tuple[list[float], int]:
    probe = Cpu()
    symbols = load_elf(probe.memory, image).symbols
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
    for region in probe.memory.regions:
        uc.mem_map(region.base, region.size)
        uc.mem_write(region.base, bytes(region.data))
    uc.mem_map(STACK, STACK_SIZE)
    uc.mem_map(RET, 0x1000)
    uc.mem_write(RET, b"\xf4")

    def call(argument: int) -> int:
        sp = STACK + STACK_SIZE - 8
        uc.mem_write(sp, RET.to_bytes(8, "little"))
        uc.reg_write(ux.UC_X86_REG_RSP, sp)
        uc.reg_write(ux.UC_X86_REG_RDI, argument)
        uc.reg_write(ux.UC_X86_REG_RFLAGS, 0x202)
        uc.emu_start(symbols[function], RET)
        return uc.reg_read(ux.UC_X86_REG_RAX)

    call(max(1, n // 20))
    times, rax = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        rax = call(n)
        times.append(time.perf_counter() - start)
    return times, rax


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts")
    options = parser.parse_args()
    print(f"machine: {cpu_name()}, {platform.machine()}, {platform.system()} {platform.release()}")
    gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    print(
        f"python {platform.python_version()} ({sys.implementation.name}); capstone {version('capstone')}; "
        f"unicorn {version('unicorn')}; gcc {gcc}"
    )
    print(f"median of {options.runs} runs after a warm-up run\n")
    header = (
        f"{'workload':26} {'guest insns':>12} {'model s':>9} {'model M/s':>10} {'unicorn s':>10} "
        f"{'unicorn M/s':>12} {'model/unicorn':>14}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        image = build(Path(tmp))
        for label, function, n in WORKLOADS:
            n = max(1, int(n * options.scale))
            model_times, count, model_rax = time_model(image, function, n, options.runs)
            uc_times, uc_rax = time_unicorn(image, function, n, options.runs)
            if model_rax != uc_rax:
                raise SystemExit(f"{label}: model returned {model_rax:#x}, unicorn {uc_rax:#x}")
            model_s, uc_s = statistics.median(model_times), statistics.median(uc_times)
            print(
                f"{label:26} {count:12,} {model_s:9.3f} {count / model_s / 1e6:10.2f} {uc_s:10.3f} "
                f"{count / uc_s / 1e6:12.2f} {uc_s / model_s:14.3f}"
            )


if __name__ == "__main__":
    main()
