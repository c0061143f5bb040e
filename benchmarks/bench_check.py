"""Compiler speed: `pvgen check` on spec/ and on synthetic specs of 1k, 10k and 100k ops.

Each figure is the median wall time of several runs of the console script in a fresh
process (interpreter start included), plus peak memory from the kernel's rusage.
Usage: python benchmarks/bench_check.py [--runs N] [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from synth import write_spec  # noqa: E402


def console_script() -> list[str]:
    """The installed `pvgen` next to this interpreter (not a pyenv shim, which adds its own start-up)."""
    script = Path(sys.executable).with_name("pvgen")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pvgen"]


def time_command(command: list[str], runs: int, cwd: Path) -> tuple[float, float, int]:
    """(median seconds, min seconds, peak RSS in KiB) over runs."""
    times = []
    peak = 0
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    return statistics.median(times), min(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    pvgen = console_script()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    bytecode = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    print(f"command: {' '.join(pvgen)} check   (PYTHONDONTWRITEBYTECODE={bytecode!r})")
    print(f"{'input':<28}{'median s':>10}{'min s':>10}{'peak MiB':>10}{'target':>10}")
    median, best, peak = time_command([*pvgen, "check"], args.runs, ROOT)
    print(f"{'spec/':<28}{median:>10.3f}{best:>10.3f}{peak / 1024:>10.1f}{'< 0.3':>10}")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    per_op = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            directory = Path(scratch) / f"s{size}"
            root = write_spec(directory, size)
            runs = args.runs if size <= 10_000 else max(3, args.runs // 2)
            median, best, peak = time_command([*pvgen, "check", str(root)], runs, ROOT)
            per_op.append((size, median))
            target = "< 3" if size == 10_000 else ""
            print(f"{f'synthetic {size:,} ops':<28}{median:>10.3f}{best:>10.3f}{peak / 1024:>10.1f}{target:>10}")
            shutil.rmtree(directory)
    if len(per_op) > 1:
        rates = ", ".join(f"{size:,}: {seconds / size * 1e6:.0f} us/op" for size, seconds in per_op)
        print(f"time per op ({rates})")


if __name__ == "__main__":
    main()
