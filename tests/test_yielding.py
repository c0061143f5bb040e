"""Paravirt yielding: the microcode loader steps aside, and the IOMMU init order and its run."""

from __future__ import annotations

import re
import subprocess

from pvgen.generated import pvops_x86_64 as layer
from pvgen.runtime.yielding import boot_yielding

from tests.conftest import ROOT


def test_microcode_yields_exactly_where_paravirt_enabled() -> None:
    assert boot_yielding(layer, "native").yielded == ()
    for hypervisor in ("xen", "kvm"):
        report = boot_yielding(layer, hypervisor)
        assert report.paravirt_enabled
        assert report.yielded == (("microcode_loader", "microcode_init"),)


def test_iommu_table_is_in_dependency_order() -> None:
    order = [entry[0] for entry in layer.IOMMU]
    assert order[0] == "pci_xen_swiotlb_detect"
    for detect, depends, *_ in layer.IOMMU:
        if depends:
            assert order.index(depends) < order.index(detect)
    header = (ROOT / "generated" / "c" / "x86_64" / "pvops_yield.h").read_text()
    assert re.findall(r"^\t\{ (\w+),", header, re.M) == order


def test_only_the_xen_iommu_runs_under_xen_pv() -> None:
    report = boot_yielding(layer, "xen")
    assert [s.detect for s in report.iommu] == ["pci_xen_swiotlb_detect"]
    assert report.iommu[0].found and report.iommu[0].finished_scan
    assert report.iommu[0].early_init == "pci_xen_swiotlb_init"
    assert len(report.skipped) == len(layer.IOMMU) - 1
    assert not report.iommu_present("pci")


def test_hardware_iommus_run_on_bare_metal() -> None:
    report = boot_yielding(layer, "native")
    found = [s.detect for s in report.iommu if s.found]
    assert found == ["pci_swiotlb_detect_4gb", "detect_intel_iommu"]
    assert report.skipped == ()  # nothing found that finishes the scan
    assert report.iommu_present("pci") and not report.iommu_present("isa")
    assert report.to_json()["iommu_present"] == {"pci": True}


def test_yield_header_compiles() -> None:
    header = ROOT / "generated" / "c" / "x86_64" / "pvops_yield.h"
    result = subprocess.run(
        ["gcc", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c", str(header)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
