${view.banner}\
/*
 * ${view.arch} asm macros for hand-written .S files: #include this header from a .S file
 * assembled through cpp (gcc -c -x assembler-with-cpp). The build mode is chosen per object:
% for line in view.modes:
 *   ${line}
% endfor
 *
 * As Linux's PARA_SITE, a site covers the whole sequence: the registers saved before the
 * call (PV_SAVE_REGS: those the op may clobber that the caller's clobbers do not allow),
 * the ${view.site_size}-byte call or jmp through ${view.table}, the move of a result, and the
 * restores (PV_RESTORE_REGS). Each site has a ${view.record_size}-byte record in section ${view.section}:
 *   .balign 8; .quad site; .byte op index; .byte site length; .short clobbers; .balign 8
 * where clobbers holds the CLBR_* bits of the registers the call may clobber (the caller's
 * clobbers and the saved registers). Patching may replace the whole site: an inline
 * template then writes only registers the caller's clobbers allow.
 */
#ifndef ${view.guard}
#define ${view.guard}

#if defined(${view.native_mode}) && !defined(PVGEN_INSTANCE_NATIVE)
#define PVGEN_INSTANCE_NATIVE 1
#endif
#if ${view.instance_test} > 1
#error "pvgen: choose at most one pv instance"
#endif

/* Clobber sets: the CLBR_* bit of each register (arch clobber_bits). */
% for line in view.clobber_defines:
${line}
% endfor

/* Byte offset of each op's slot in ${view.table} (op index * pointer size). */
% for line in view.offset_defines:
${line}
% endfor
% for macro in view.macros:

/*
% for line in macro.comment:
${line}
% endfor
 */
/* ${macro.location} */
${macro.gas_header}
% for line in macro.body:
${line}
% endfor
.endm
% for line in macro.defines:
${line}
% endfor
% endfor

#endif /* ${view.guard} */
