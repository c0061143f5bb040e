${banner}
/*
 * The ${v.arch} pv_ops layer: op indexes, the ops structs and tables, the prototypes of every
 * implementation, and a call wrapper per op callable from C. A wrapper is a recorded patch
 * site; with PVGEN_NATIVE defined it is the native implementation, inline.
 */
#ifndef ${v.guard}
#define ${v.guard}

% if v.ia64:
/* Patch types: the type field of an op's .paravirt_bundles records. */
% else:
/* Op indexes: an op's slot in struct pv_ops_template (byte offset = index * PV_OP_SLOT_SIZE). */
% endif
% for line in v.index_defines:
${line.text} /* ${line.location} */
% endfor

/* Every op: X(group, op, index, category, transfer, callee_save, clobbers), in struct order. */
% for line in v.ops_macro:
${line}
% endfor

/* Every group: X(group, struct, bit in the forced-native mask). */
% for line in v.groups_macro:
${line}
% endfor

#ifndef __ASSEMBLY__

#ifndef PVGEN_INLINE
#define PVGEN_INLINE static inline __attribute__((__always_inline__))
#endif

/* Kernel types, for a standalone compile; a kernel build defines PVGEN_KERNEL_TYPES. */
#ifndef PVGEN_KERNEL_TYPES
#include <stdbool.h>
% for line in v.types.kernel:
${line}
% endfor
% for line in v.types.typedefs:
${line.text} /* ${line.location} */
% endfor
% for line in v.types.opaque:
${line}
% endfor
#endif
% for name in v.types.qualifiers:
#ifndef ${name}
#define ${name}
#endif
% endfor
% if v.types.structs:

% for line in v.types.structs:
${line}
% endfor
% endif
% for struct in v.structs:

/* ${struct.what}: ${struct.location} */
struct ${struct.name} {
% for member in struct.members:
	${member.text} /* ${member.location} */
% endfor
};
% endfor

% for line in v.externs:
${line}
% endfor
% if v.slot_checks:

% for line in v.slot_checks:
${line}
% endfor
% endif

/*
 * Every implementation named by a `call`, under any hypervisor. A partial image (one that
 * links only the implementations it runs) defines PVGEN_IMPL as __attribute__((weak)):
 * a missing one is then NULL in the tables, and its sites are patched to ud2.
 */
#ifndef PVGEN_IMPL
#define PVGEN_IMPL
#endif
% for line in v.prototypes:
${line.text} /* ${line.location} */
% endfor

% if v.ia64:
/* The pv_cpu_ops calling stub (5 bundles), and a patch site: the stub in a bundle record. */
% else:
/* A patch site: the indirect call through the op's slot, and its .pvgen.sites record. */
% endif
% for line in v.site_macros:
${line}
% endfor
% for w in v.wrappers:

/* ${w.qualname}: ${w.location} */
${w.signature}
{
#ifdef PVGEN_NATIVE
% for line in w.native:
${line}
% endfor
#else
% for line in w.paravirt:
${line}
% endfor
#endif
}
% endfor

#endif /* __ASSEMBLY__ */
#endif /* ${v.guard} */
