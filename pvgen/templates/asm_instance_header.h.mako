${view.banner}\
/*
 * ${view.arch} asm macros, ${view.instance} instance, for the .S files that are assembled once
 * per pv instance (cpp, then the assembler). Include exactly one inst_*.h (or inst.h).
% for line in view.description:
 * ${line}
% endfor
 */
#ifndef ${view.guard}
#define ${view.guard}

#ifdef PVGEN_ASM_INSTANCE
#error "pvgen: two pv instance headers in one .S"
#endif
#define PVGEN_ASM_INSTANCE ${view.instance}
% for macro in view.macros:

/*
% for line in macro.comment:
${line}
% endfor
 */
/* ${macro.location} */
% if macro.gas_header:
${macro.gas_header}
% for line in macro.body:
${line}
% endfor
.endm
% endif
% for line in macro.defines:
${line}
% endfor
% endfor
% if view.poisons:

/* Sensitive instructions and registers may not appear raw in a paravirtualised .S. */
% for token, message in view.poisons:
#define ${token} ; .error "${message}" ;
% endfor
% endif

#endif /* ${view.guard} */
