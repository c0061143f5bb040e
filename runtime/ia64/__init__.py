"""The IA-64 runtime of pvgen: a CPU model, bare hardware and Xen/IA64 models, pv_ops patching.

- `cpu`: architectural state, code caches and the run loop; `system`: system instructions, data
  translation, interrupts and interruption delivery;
- `translate`, `emitters`: IA-64 blocks to Python functions (cached per address, dropped on code
  writes), one emitter per instruction format;
- `tlb`, `memory`, `state`, `faults`: translation, physical memory, register layouts, interruptions;
- `native`, `xen`: the environments a kernel runs in (bare hardware; Xen/IA64 with hyperprivops,
  hypercalls, privileged-operation emulation and the XSI shared area);
- `support`, `patch`: the pv_cpu_ops implementations placed in memory, bundle/branch/brl patching
  from the generated decisions;
- `image`, `run`: loading an IA64 ELF image and `run_image`, the entry point of `pvgen run`.
See docs/ia64-runtime.md.
"""

from pvgen.runtime.ia64.cpu import Cpu, FaultRecord
from pvgen.runtime.ia64.faults import Interruption, MachineCheck, Stop
from pvgen.runtime.ia64.image import Image, ImageError, load_image
from pvgen.runtime.ia64.native import BareMetal
from pvgen.runtime.ia64.patch import PatchError, PatchRangeError, PatchRecord
from pvgen.runtime.ia64.run import Machine, RunReport, boot_image, run_image
from pvgen.runtime.ia64.xen import XenModel

__all__ = [
    "BareMetal",
    "Cpu",
    "FaultRecord",
    "Image",
    "ImageError",
    "Interruption",
    "Machine",
    "MachineCheck",
    "PatchError",
    "PatchRangeError",
    "PatchRecord",
    "RunReport",
    "Stop",
    "XenModel",
    "boot_image",
    "load_image",
    "run_image",
]
