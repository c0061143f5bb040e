/* Lazy modes shared by the generic paravirt code and the Xen backend. */
#ifndef PVGEN_GUEST_LAZY_H
#define PVGEN_GUEST_LAZY_H

#define PARAVIRT_LAZY_NONE 0
#define PARAVIRT_LAZY_MMU 1
#define PARAVIRT_LAZY_CPU 2

u32 paravirt_get_lazy_mode(void);
void paravirt_leave_lazy_mmu(void);
void paravirt_end_context_switch(struct task_struct *next);
int pvgen_slot_is(const struct pv_ops_template *table, u8 type);
int pvgen_patch_native_template(u8 type, void *insnbuf, unsigned len);
unsigned paravirt_patch_default(u8 type, u16 clobbers, void *insnbuf, unsigned long addr, unsigned len);

#endif
