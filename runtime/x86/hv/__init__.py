"""Hypervisor models for the x86-64 runtime: bare metal, KVM (HVM, VMX) and Xen PV.

Each is an `Environment` (base.py) that the CPU model calls as its exit handler. Every
cost figure lives in costs.py.
"""

from __future__ import annotations

from typing import Any

from pvgen.runtime.x86.hv.base import Environment, GuestCrash, GuestImage, Stats
from pvgen.runtime.x86.hv.kvm import Kvm
from pvgen.runtime.x86.hv.native import BareMetal
from pvgen.runtime.x86.hv.xen import XenPv

ENVIRONMENTS: dict[str, type[Environment]] = {"kvm": Kvm, "native": BareMetal, "xen": XenPv}


def make_environment(name: str, **options: Any) -> Environment:
    """The environment named like the spec's hypervisors ('native', 'kvm', 'xen')."""
    try:
        cls = ENVIRONMENTS[name]
    except KeyError:
        raise ValueError(f"unknown hypervisor '{name}'; expected one of: {', '.join(sorted(ENVIRONMENTS))}") from None
    return cls(**options)


__all__ = [
    "ENVIRONMENTS",
    "BareMetal",
    "Environment",
    "GuestCrash",
    "GuestImage",
    "Kvm",
    "Stats",
    "XenPv",
    "make_environment",
]
