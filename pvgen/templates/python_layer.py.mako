${banner}
"""The ${arch.name} pv_ops layer for pvgen's runtime: op tables, patch decisions, detection, mask.

The constants are the spec's; the tables are rows in pvops_${arch.name}.json beside this
module; the records and the decisions over them are pvgen.layer's, shared by every arch.
"""

from __future__ import annotations

import json
from pathlib import Path

# The records and the error are re-exported: the runtime names them through this module.
from pvgen.layer import Decision as Decision
from pvgen.layer import Hypervisor as Hypervisor
from pvgen.layer import Impl as Impl
from pvgen.layer import Layer
from pvgen.layer import MaskError as MaskError
from pvgen.layer import Op as Op

ARCH = ${repr(arch.name)}
POINTER_SIZE = ${arch.pointer_size}
SITE_SIZE = ${arch.site_size}
DIRECT_CALL_SIZE = ${arch.direct_call_size}
SITE_TYPE_BITS = ${arch.site_type_bits}
NOPS = tuple(bytes.fromhex(nop) for nop in ${repr(nops)})
IDENTITY_TEMPLATE = ${"bytes.fromhex(%r)" % identity if identity else "None"}
# A patched site is padded first with this redundant prefix, at most PAD_PREFIX_LIMIT per
# instruction and only where a template's pad room allows; the rest is NOPs.
PAD_PREFIX = ${"bytes.fromhex(%r)" % arch.pad_prefix if arch.pad_prefix else "None"}
PAD_PREFIX_LIMIT = ${arch.pad_prefix_limit}
CLOBBER_BITS = ${repr(clobber_bits)}
ARG_REGISTERS = ${repr(arch.args)}
RETURN_REGISTERS = ${repr(arch.returns)}


# The tables themselves live beside this module, in pvops_${arch.name}.json (rows, not code).
_TABLES = json.loads(Path(__file__).with_suffix(".json").read_text())
_LAYER = Layer(_TABLES, DIRECT_CALL_SIZE)

CLOBBER_SETS = _LAYER.clobber_sets
OP_ROWS = _LAYER.op_rows
IMPL_ROWS = _LAYER.impl_rows
IDENTITY_PAD = _LAYER.identity_pad
VARIANT_ROWS = _LAYER.variant_rows
OPS = _LAYER.ops
OPS_BY_INDEX = _LAYER.ops_by_index
OPS_BY_NAME = _LAYER.ops_by_name
GROUPS = _LAYER.groups
DATA = _LAYER.data
HYPERVISORS = _LAYER.hypervisors
MASK_CMDLINE = _LAYER.mask_cmdline
MASK_BITS = _LAYER.mask_bits
EFFECTS = _LAYER.effects
YIELDS = _LAYER.yields
IOMMU = _LAYER.iommu

select_hypervisor = _LAYER.select_hypervisor
parse_mask = _LAYER.parse_mask
check_mask = _LAYER.check_mask
effective_impl = _LAYER.effective_impl
out_of_line_symbol = _LAYER.out_of_line_symbol
patch_decision = _LAYER.patch_decision
