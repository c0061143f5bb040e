"""IA-64 CPU model speed: instructions per second on the data-TLB-miss handler loop.

The workload is tests/data/ia64/tlb_miss.S, built per pv instance (cpp -include
generated/asm/ia64/inst_<instance>.h, ia64-linux-gnu-as, ia64-linux-gnu-ld) and booted with
pvgen.runtime.ia64.run.boot_image: each loop iteration purges a translation through the patched
pv ptcga site, stores to the page (a Data TLB fault), runs the handler (macros, thash, itc.d,
interrupts unmasked and masked again, rfi) and loads the value back. `native` runs at cpl 0 on
bare hardware; `xen` is the Xen instance, deprivileged under the Xen model (hyperprivops,
reflection of the miss to the guest's IVT).

Figures are the median of --runs runs (a fresh machine each, translation included, the cyclic
garbage collector off during the timed call as `pvgen` runs), counting every retired instruction
and, separately, those that are not nops (IA-64 code fills unused bundle slots with nops).
Usage: python benchmarks/bench_ia64_cpu.py [--runs N] [--loops N]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pvgen.runtime.ia64.image import Image, load_image  # noqa: E402
from pvgen.runtime.ia64.run import boot_image  # noqa: E402

TARGET = 1_000_000


def build(instance: str, directory: Path) -> Image:
    source = ROOT / "tests" / "data" / "ia64" / "tlb_miss.S"
    header = ROOT / "generated" / "asm" / "ia64" / f"inst_{instance}.h"
    stem = directory / f"tlb_miss-{instance}"
    preprocess = ["gcc", "-E", "-P", "-x", "assembler-with-cpp", "-include", str(header), "-I", str(source.parent)]
    link = ["ia64-linux-gnu-ld", "-static", "-Ttext=0x100000", "-Tdata=0x200000", "-e", "_start"]
    for command in (
        [*preprocess, str(source), "-o", f"{stem}.s"],
        ["ia64-linux-gnu-as", "-xnone", f"{stem}.s", "-o", f"{stem}.o"],
        [*link, f"{stem}.o", "-o", f"{stem}.elf"],
    ):
        subprocess.run(command, check=True, capture_output=True)
    return load_image(f"{stem}.elf")


def measure(image: Image, instance: str, loops: int) -> tuple[float, int, int, int]:
    """(seconds, instructions, non-nop instructions, translated blocks) of one run."""
    machine = boot_image(image, instance)
    machine.cpu.mem.write_u64(image.symbols["loop_count"], loops)
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        stop = machine.cpu.run(10**10)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    assert stop.reason == "stop" and stop.detail == "exit", stop
    counts = machine.cpu.class_counts()
    total = sum(counts.values())
    return elapsed, total, total - counts["nop"], machine.cpu.translator.compiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--loops", type=int, default=20_000, help="handler runs per measurement")
    args = parser.parse_args()
    missing = [tool for tool in ("gcc", "ia64-linux-gnu-as", "ia64-linux-gnu-ld") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"needs {', '.join(missing)} (gcc, binutils-ia64-linux-gnu)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}")
    print(f"python {platform.python_version()} ({platform.python_implementation()})")
    version = subprocess.run(["ia64-linux-gnu-as", "--version"], capture_output=True, text=True).stdout.splitlines()
    print(f"assembler: {version[0] if version else '?'}")
    print(f"median of {args.runs} runs, {args.loops} handler runs each; target {TARGET:,} instructions/s\n")
    print(f"{'instance':<10}{'instructions':>14}{'non-nop':>12}{'seconds':>10}{'insns/s':>14}{'non-nop/s':>14}  blocks")
    with tempfile.TemporaryDirectory() as directory:
        for instance in ("native", "xen"):
            image = build(instance, Path(directory))
            results = [measure(image, instance, args.loops) for _ in range(args.runs)]
            seconds = statistics.median(r[0] for r in results)
            _, total, useful, blocks = results[0]
            print(
                f"{instance:<10}{total:>14,}{useful:>12,}{seconds:>10.3f}"
                f"{total / seconds:>14,.0f}{useful / seconds:>14,.0f}  {blocks}"
                + ("" if useful / seconds >= TARGET else "  (below target)")
            )


if __name__ == "__main__":
    main()
