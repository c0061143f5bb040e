"""pvgen's headline numbers in one command: a table on stdout, plots and a Markdown report on disk.

Sections (each figure is the median of several runs taken in this one run of the command):
1. native overhead: each kernel-like workload built in native mode and in paravirt mode,
   run on bare metal unpatched and patched; instructions and cycles as ratios to native mode;
2. paravirt gain: the native-mode image (whose sensitive instructions trap) against the
   paravirt image under HVM (KVM) and Xen PV; cycles, exits and hypercalls;
3. CPU model speed: guest instructions per second against unicorn on the same images, and IA-64
   instructions per second on the handler loop (the runtime part lives in pvgen.runtime.x86.bench;
   plots: runtime_overhead and runtime_gain, PNG and SVG);
4. compiler: `pvgen check` and `pvgen build` cold and with nothing changed, synthetic specs
   of 1k, 10k and 100k ops with a plot of time against ops, and peak memory.
A figure that misses its target is marked MISS in the table.

Usage: python benchmarks/report.py [--out DIR] [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from synth import write_spec  # noqa: E402

# Progress steps of the runtime part: 4 workloads x (overhead, gain, speed), 3 micro ops, 2 IA-64.
RUNTIME_STEPS = 17


class Progress:
    """A one-line progress bar on stderr for long runs."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = width * self.done // max(1, self.total)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:5.0f}s {label:<40}"
        )
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def console_script() -> list[str]:
    script = Path(sys.executable).with_name("pvgen")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pvgen"]


def _timed_process(command: list[str], cwd: Path, prepare: Callable[[], None] | None = None) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of one run of a command in a fresh process."""
    if prepare is not None:
        prepare()
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, _, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.communicate()
    if process.returncode not in (0, None) and usage is None:
        raise SystemExit(f"{' '.join(command)} failed")
    return elapsed, usage.ru_maxrss


def _median_runs(runs: int, once: Callable[[], tuple[float, int]]) -> tuple[float, float, int]:
    samples = [once() for _ in range(runs)]
    return statistics.median(s[0] for s in samples), min(s[0] for s in samples), max(s[1] for s in samples)


def compiler_section(runs: int, sizes: Iterable[int], progress: Progress) -> dict[str, Any]:
    pvgen = console_script()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        shutil.copytree(ROOT / "spec", work / "spec")
        shutil.copytree(ROOT / "generated", work / "generated")
        stamp = work / "generated" / ".pvgen-stamp.json"
        cache = (work / "generated" / "templates" / "cache.json").read_bytes()

        def wipe() -> None:
            shutil.rmtree(work / "generated")
            (work / "generated" / "templates").mkdir(parents=True)
            (work / "generated" / "templates" / "cache.json").write_bytes(cache)

        cases: list[tuple[str, list[str], Callable[[], None] | None, float | None]] = [
            ("pvgen check (spec/)", [*pvgen, "check"], None, 0.3),
            ("pvgen build, cold (bytes reused)", [*pvgen, "build"], wipe, 1.5),
            ("pvgen build, nothing changed", [*pvgen, "build"], None, 0.3),
            ("pvgen build --check", [*pvgen, "build", "--check"], lambda: stamp.unlink(missing_ok=True), None),
        ]
        for label, command, prepare, target in cases:
            median, best, peak = _median_runs(runs, lambda c=command, p=prepare: _timed_process(c, work, p))
            rows.append({"case": label, "median_s": median, "min_s": best, "peak_mib": peak / 1024, "target_s": target})
            progress.step(label)
        synthetic = []
        for size in sizes:
            directory = work / f"synth{size}"
            root = write_spec(directory, size)
            count = runs if size <= 10_000 else max(2, runs // 3)
            median, best, peak = _median_runs(count, lambda r=root: _timed_process([*pvgen, "check", str(r)], work))
            target = 3.0 if size == 10_000 else None
            synthetic.append(
                {"ops": size, "median_s": median, "min_s": best, "peak_mib": peak / 1024, "target_s": target}
            )
            rows.append(
                {
                    "case": f"pvgen check, synthetic {size:,} ops",
                    "median_s": median,
                    "min_s": best,
                    "peak_mib": peak / 1024,
                    "target_s": target,
                }
            )
            shutil.rmtree(directory)
            progress.step(f"synthetic {size:,} ops")
    return {"rows": rows, "synthetic": synthetic}


def runtime_sections(progress: Progress, quick: bool) -> dict[str, Any]:
    """Native overhead, paravirt gain and CPU model speed, from the runtime's own benchmark module."""
    try:
        from pvgen.runtime.x86 import bench as x86_bench  # type: ignore[attr-defined]
    except ImportError:
        progress.step("runtime (not available)")
        return {}
    result: dict[str, Any] = x86_bench.measure(quick=quick, progress=progress.step)
    return result


def _mark(value: float, target: float | None) -> str:
    if target is None:
        return ""
    return "ok" if value <= target else "MISS"


def table(compiler: dict[str, Any]) -> str:
    lines = [f"{'case':<40}{'median s':>10}{'min s':>10}{'peak MiB':>10}{'target':>9}{'':>6}"]
    for row in compiler["rows"]:
        target = f"< {row['target_s']:g}" if row["target_s"] else ""
        lines.append(
            f"{row['case']:<40}{row['median_s']:>10.3f}{row['min_s']:>10.3f}{row['peak_mib']:>10.1f}{target:>9}"
            f"{_mark(row['median_s'], row['target_s']):>6}"
        )
    return "\n".join(lines)


def plot_synthetic(synthetic: list[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [s["ops"] for s in synthetic]
    seconds = [s["median_s"] for s in synthetic]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(ops, seconds, "o-", label="pvgen check (median)")
    if len(ops) > 1:
        per_op = seconds[-1] / ops[-1]
        axes.plot(ops, [per_op * n for n in ops], "--", color="grey", label="linear through the largest")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("ops in the spec")
    axes.set_ylabel("seconds")
    axes.set_title("Checking time against spec size")
    axes.legend()
    figure.tight_layout()
    names = _save(figure, out, "compiler_scaling")
    plt.close(figure)
    return names


def _save(figure: Any, out: Path, stem: str) -> list[str]:
    names = []
    for suffix in ("png", "svg"):
        path = out / f"{stem}.{suffix}"
        figure.savefig(path, **({"metadata": {"Date": None}} if suffix == "svg" else {}))
        names.append(path.name)
    return names


def plot_runtime(data: dict[str, Any] | None, out: Path) -> list[str]:
    """Section 1: cycle ratios per workload; section 2: cycles of both images under KVM and Xen."""
    if not data or not data.get("native_overhead"):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "pvgen"
    names: list[str] = []
    rows = data["native_overhead"]
    workloads = [r["workload"] for r in rows]
    x = list(range(len(workloads)))
    figure, axes = plt.subplots(figsize=(7, 4))
    width = 0.38
    axes.bar([i - width / 2 for i in x], [r["cycle_ratio_unpatched"] for r in rows], width, label="unpatched")
    axes.bar([i + width / 2 for i in x], [r["cycle_ratio_patched"] for r in rows], width, label="patched")
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.axhline(data.get("overhead_target", 1.005), color="red", linestyle="--", linewidth=0.8, label="target")
    axes.set_xticks(x, workloads)
    axes.set_ylim(bottom=0.9)
    axes.set_ylabel("cycles / native-mode image")
    axes.set_title("Native overhead on bare metal (paravirt image / native-mode image)")
    axes.legend()
    figure.tight_layout()
    names += _save(figure, out, "runtime_overhead")
    plt.close(figure)

    gain = data.get("paravirt_gain") or []
    if gain:
        labels = [f"{r['workload']}\n{r['hypervisor']}" for r in gain]
        x = list(range(len(gain)))
        figure, axes = plt.subplots(figsize=(9, 4))
        axes.bar([i - width / 2 for i in x], [r["native_image"]["cycles"] for r in gain], width, label="native-mode")
        axes.bar([i + width / 2 for i in x], [r["paravirt_image"]["cycles"] for r in gain], width, label="paravirt")
        axes.set_xticks(x, labels)
        axes.set_yscale("log")
        axes.set_ylabel("cycles (cost model)")
        axes.set_title("Native-mode vs paravirt image under KVM and Xen PV")
        axes.legend()
        figure.tight_layout()
        names += _save(figure, out, "runtime_gain")
        plt.close(figure)
    return names


def machine() -> str:
    versions = []
    for tool in (["gcc", "--version"], ["as", "--version"]):
        try:
            versions.append(subprocess.run(tool, capture_output=True, text=True).stdout.splitlines()[0])
        except (OSError, IndexError):
            pass
    from importlib.metadata import version

    packages = ", ".join(f"{p} {version(p)}" for p in ("lark", "capstone", "unicorn", "black"))
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; Python {platform.python_version()}; "
        f"{packages}; {'; '.join(versions)}"
    )


def write_report(out: Path, compiler: dict[str, Any], runtime: dict[str, Any], plots: list[str], about: str) -> None:
    lines = ["# pvgen benchmark report", "", f"Machine and versions: {about}", "", "## Compiler", "", "```"]
    lines += [table(compiler), "```", ""]
    lines += [f"![checking time against spec size]({p})" for p in plots if p == "compiler_scaling.png"]
    if runtime.get("markdown"):
        lines += ["", runtime["markdown"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(
        json.dumps({"machine": about, "compiler": compiler, "runtime": runtime.get("data")}, indent=1) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1k and 10k ops only, fewer runs")
    args = parser.parse_args()
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    runs = 3 if args.quick else args.runs
    args.out.mkdir(parents=True, exist_ok=True)
    progress = Progress(4 + len(sizes) + RUNTIME_STEPS)
    compiler = compiler_section(runs, sizes, progress)
    runtime = runtime_sections(progress, args.quick)
    plots = plot_synthetic(compiler["synthetic"], args.out) + plot_runtime(runtime.get("data"), args.out)
    about = machine()
    print(f"Machine and versions: {about}\n")
    print(table(compiler))
    if runtime.get("table"):
        print()
        print(runtime["table"])
    write_report(args.out, compiler, runtime, plots, about)
    print(f"\nreport: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
