${banner}
/*
 * The ${arch} pv_ops tables: the live ones (native at boot) and a constant one per
 * hypervisor, with the asm bodies, shared helpers and callee-save thunks they point at.
 */
#include "pvops.h"
<%def name="function(f)">\

/* ${f.what}: ${f.location} */
${f.declaration}
% for line in f.lines:
${"asm(" if loop.first else "    "}${line}${");" if loop.last else ""}
% endfor
</%def>\
% if helpers:

/* Shared bodies of `nop` and `identity` implementations. */
% for f in helpers:
${function(f)}\
% endfor
% endif
% if bodies:

/* Out-of-line bodies of `asm` implementations: the template, then the return. */
% for f in bodies:
${function(f)}\
% endfor
% endif
% if thunks:

/* Callee-save thunks: the call target may clobber more than the result register. */
% for f in thunks:
${function(f)}\
% endfor
% endif
% for table in tables:

/* ${table.what} */
${table.declaration} = {
% for group in table.groups:
% if group.member:
	.${group.member} = {
% for field in group.fields:
		${field.text} /* ${field.location} */
% endfor
	},
% else:
% for field in group.fields:
	${field.text} /* ${field.location} */
% endfor
% endif
% endfor
};
% endfor
