/*
 * xen_patch: Xen's pv_init_ops.patch. Its own templates where they fit (the direct irq
 * bodies need more room than a 6-byte site has), native templates for a group forced
 * native, the default patcher otherwise.
 */
#include "guest.h"
#include "lazy.h"
#include "x86_64/xen.h" /* generated/templates: the Xen patch templates */

extern const struct pv_ops_template pv_ops_xen __attribute__((weak));
extern const struct pv_ops_template pv_ops_native __attribute__((weak));

unsigned xen_patch(u8 type, u16 clobbers, void *insnbuf, unsigned long addr, unsigned len)
{
	unsigned count = sizeof(pvgen_templates_x86_64_xen) / sizeof(pvgen_templates_x86_64_xen[0]);
	if (pvgen_slot_is(&pv_ops_xen, type)) {
		for (unsigned i = 0; i < count; i++) {
			const struct pvgen_template *t = &pvgen_templates_x86_64_xen[i];
			if (t->index == type && !t->out_of_line && t->length <= len) {
				for (unsigned j = 0; j < t->length; j++)
					((unsigned char *)insnbuf)[j] = t->bytes[j];
				return t->length;
			}
		}
	}
	/* A group forced native (pv_ops.native=) keeps its native templates. */
	if (pvgen_slot_is(&pv_ops_native, type)) {
		int used = pvgen_patch_native_template(type, insnbuf, len);
		if (used >= 0)
			return (unsigned)used;
	}
	return paravirt_patch_default(type, clobbers, insnbuf, addr, len);
}
