"""Effects: what running an op must do, as a small checked expression a generated test evaluates.

An op may say `effect xen "mask == 1";`: after the op runs under Xen, the expression must
hold. Expressions are Python syntax restricted to comparisons, boolean and bit operators,
integers, strings, and the names and functions of the op's instruction set below, which the
runtime's harness provides. The checker parses each one and rejects anything else.
"""

from __future__ import annotations

import ast

# Names an effect may read, per instruction set: the machine state as the guest kernel sees it.
NAMES = {
    "x86_64": {
        "IF": "the interrupt flag the kernel sees (bare/HVM: RFLAGS.IF; Xen PV: upcall mask clear)",
        "mask": "Xen vcpu_info.evtchn_upcall_mask",
        "pending": "Xen vcpu_info.evtchn_upcall_pending",
        "ret": "the op's return value (rax)",
        "arg0": "first argument",
        "arg1": "second argument",
        "arg2": "third argument",
        "arg3": "fourth argument",
        "cr0": "CR0 as the kernel sees it",
        "cr2": "CR2 as the kernel sees it (Xen PV: vcpu_info.arch.cr2)",
        "cr3": "the page-table base (Xen PV: the guest's baseptr)",
        "cr4": "CR4",
        "hypercalls": "names of the hypercalls the op made",
        "exits": "VM exits and trapped instructions during the op",
        "upcalls": "events delivered during the op",
    },
    "ia64": {
        "psr_i": "the interrupt bit the kernel sees (bare: psr.i; Xen: mask byte clear)",
        "psr_ic": "the interruption collection bit the kernel sees",
        "ret": "the op's return value (r8)",
        "arg0": "first argument (r8)",
        "arg1": "second argument (r9)",
        "arg2": "third argument (r10)",
        "arg3": "fourth argument (r11)",
        "arg4": "fifth argument (r14)",
        "hyperprivops": "names of the Xen hyperprivops the op made",
        "faults": "privileged-operation faults during the op",
    },
}
FUNCTIONS = {
    "x86_64": {"mem8", "mem16", "mem32", "mem64", "flushed"},
    "ia64": {"mem8", "mem64", "rr", "tlb_has"},
}
_NODES = (
    ast.Expression, ast.Compare, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.Invert,
    ast.BinOp, ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift, ast.Add, ast.Sub,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
    ast.Name, ast.Load, ast.Constant, ast.Call,
)  # fmt: skip


def check_effect(isa: str, text: str) -> str | None:
    """None if the expression is a valid effect for the isa, else what is wrong with it."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        return f"effect is not an expression: {error.msg}"
    names, functions = NAMES.get(isa, {}), FUNCTIONS.get(isa, set())
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            return f"effect uses {type(node).__name__.lower()}, which effects do not allow"
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | str):
            return f"effect uses the constant {node.value!r}; only integers and strings are allowed"
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in functions or node.keywords:
                allowed = ", ".join(sorted(functions))
                return f"effect calls something other than one of: {allowed}"
        elif isinstance(node, ast.Name) and node.id not in names and node.id not in functions:
            return f"unknown name '{node.id}' in effect; expected one of: {', '.join(sorted(names))}"
    return None
