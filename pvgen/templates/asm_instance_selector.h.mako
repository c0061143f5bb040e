${view.banner}\
/*
 * ${view.arch}: includes the pv instance header chosen by -D, as Linux's paravirt_inst.h did.
 */
% for line in view.lines:
${line}
% endfor
