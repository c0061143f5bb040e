"""Paravirt yielding at boot: which subsystems step aside for the hypervisor, and the IOMMU init run.

Arch-independent: it reads a generated layer module (`pvgen.generated.pvops_<arch>`). The
IOMMU table there is already in dependency order; a boot runs each detect routine in turn,
the early init of each entry found, and stops after a found entry marked finish (Linux's
IOMMU_FINISH_IF_DETECTED); late init then runs for every entry found. Whether a detect
routine finds its IOMMU is the platform model's answer, declared per entry (`found_under`).
"""

from __future__ import annotations

from types import ModuleType

import attrs


@attrs.frozen
class IommuStep:
    """One IOMMU_INIT entry as the boot saw it."""

    detect: str
    found: bool
    early_init: str | None  # ran (None: not found, or no early init)
    late_init: str | None
    finished_scan: bool


@attrs.frozen
class YieldReport:
    hypervisor: str
    paravirt_enabled: bool
    yielded: tuple[tuple[str, str], ...]  # (rule, function that bailed out)
    kept: tuple[tuple[str, str], ...]  # rules that did not apply: the subsystem ran
    iommu: tuple[IommuStep, ...]  # in run order, up to and including the finishing entry
    skipped: tuple[str, ...]  # entries after the scan stopped
    buses_with_iommu: tuple[str, ...]

    def iommu_present(self, bus: str) -> bool:
        """Linux's iommu_present(bus): some IOMMU that was found registered iommu_ops on the bus."""
        return bus in self.buses_with_iommu

    def to_json(self) -> dict[str, object]:
        return {
            "hypervisor": self.hypervisor,
            "paravirt_enabled": self.paravirt_enabled,
            "yielded": [{"rule": r, "function": f} for r, f in self.yielded],
            "kept": [{"rule": r, "function": f} for r, f in self.kept],
            "iommu": [attrs.asdict(step) for step in self.iommu],
            "iommu_skipped": list(self.skipped),
            "iommu_present": {bus: True for bus in self.buses_with_iommu},
        }


def boot_yielding(layer: ModuleType, hypervisor: str) -> YieldReport:
    """The yield decisions and the IOMMU init run of one boot under `hypervisor`."""
    environment = layer.HYPERVISORS[hypervisor]
    yielded, kept = [], []
    for name, function, when, hypervisors in layer.YIELDS:
        applies = when == "paravirt_enabled" and environment.paravirt_enabled
        assert applies == (hypervisor in hypervisors), f"generated yield rule {name} disagrees with {hypervisor}"
        (yielded if applies else kept).append((name, function))
    steps: list[IommuStep] = []
    skipped: list[str] = []
    buses: set[str] = set()
    stopped = False
    for detect, _depends, early_init, late_init, finish, entry_buses, found_under in layer.IOMMU:
        if stopped:
            skipped.append(detect)
            continue
        found = hypervisor in found_under
        steps.append(
            IommuStep(
                detect=detect,
                found=found,
                early_init=early_init if found else None,
                late_init=late_init if found else None,
                finished_scan=found and finish,
            )
        )
        if found:
            buses.update(entry_buses)
            stopped = finish
    return YieldReport(
        hypervisor=hypervisor,
        paravirt_enabled=environment.paravirt_enabled,
        yielded=tuple(yielded),
        kept=tuple(kept),
        iommu=tuple(steps),
        skipped=tuple(skipped),
        buses_with_iommu=tuple(sorted(buses)),
    )
