/*
 * Generic paravirt helpers (arch/x86/kernel/paravirt.c): the lazy-mode bookkeeping every
 * backend shares, and the patchers `native_patch` / `paravirt_patch_default` that turn a
 * site into inline code, a direct call or NOPs.
 */
#include "guest.h"
#include "lazy.h"
#include "x86_64/native.h" /* generated/templates: the native patch templates */

/* -- lazy modes ------------------------------------------------------------------------------- */

static void enter_lazy(u32 mode)
{
	BUG_ON(this_cpu_read_4(PCPU_LAZY_MODE) != PARAVIRT_LAZY_NONE);
	this_cpu_write_4(PCPU_LAZY_MODE, mode);
}

static void leave_lazy(u32 mode)
{
	BUG_ON(this_cpu_read_4(PCPU_LAZY_MODE) != mode);
	this_cpu_write_4(PCPU_LAZY_MODE, PARAVIRT_LAZY_NONE);
}

u32 paravirt_get_lazy_mode(void)
{
	return this_cpu_read_4(PCPU_LAZY_MODE);
}

void paravirt_enter_lazy_mmu(void)
{
	enter_lazy(PARAVIRT_LAZY_MMU);
}

void paravirt_leave_lazy_mmu(void)
{
	leave_lazy(PARAVIRT_LAZY_MMU);
}

void paravirt_flush_lazy_mmu(void)
{
	if (paravirt_get_lazy_mode() == PARAVIRT_LAZY_MMU) {
		pv_lazy_mode_leave();
		pv_lazy_mode_enter();
	}
}

/*
 * A context switch runs in lazy CPU mode. Lazy MMU mode is suspended across it and
 * resumed when the task that was in it runs again (Linux keeps TIF_LAZY_MMU_UPDATES in
 * the task; the library keeps the task pointer per CPU, so it never writes the caller's
 * task structure).
 */
void paravirt_start_context_switch(struct task_struct *prev)
{
	if (paravirt_get_lazy_mode() == PARAVIRT_LAZY_MMU) {
		pv_lazy_mode_leave();
		this_cpu_write_8(PCPU_LAZY_MMU_TASK, (unsigned long)prev);
	}
	enter_lazy(PARAVIRT_LAZY_CPU);
}

void paravirt_end_context_switch(struct task_struct *next)
{
	leave_lazy(PARAVIRT_LAZY_CPU);
	if (this_cpu_read_8(PCPU_LAZY_MMU_TASK) == (unsigned long)next && next) {
		this_cpu_write_8(PCPU_LAZY_MMU_TASK, 0);
		pv_lazy_mode_enter();
	}
}

/* -- patching ------------------------------------------------------------------------------------ */

/* Present only in images that link the pv_ops tables (paravirt mode). */
extern struct pv_ops_template pv_ops __attribute__((weak));
extern void pvgen_nop(void) __attribute__((weak));
extern void pvgen_ident_64(void) __attribute__((weak));

static unsigned patch_insns(void *insnbuf, unsigned len, const unsigned char *start, unsigned size)
{
	if (size > len)
		return len; /* does not fit: leave the site alone */
	for (unsigned i = 0; i < size; i++)
		((unsigned char *)insnbuf)[i] = start[i];
	return size;
}

static unsigned patch_branch(void *insnbuf, unsigned char opcode, unsigned long target, unsigned long addr, unsigned len)
{
	unsigned char *b = insnbuf;
	long delta = (long)(target - (addr + 5));
	if (len < 5 || delta != (long)(int)delta)
		return len; /* too small for a rel32 branch: keep the indirect call */
	b[0] = opcode;
	for (int i = 0; i < 4; i++)
		b[1 + i] = (unsigned char)((unsigned long)delta >> (8 * i));
	return 5;
}

/*
 * paravirt_patch_default: the op's slot decides. NULL becomes ud2, the nop function
 * nothing, the identity function `mov %rdi,%rax`, a jump-type op a `jmp rel32`, anything
 * else a `call rel32`. Returns the bytes written; the caller pads with NOPs.
 */
unsigned paravirt_patch_default(u8 type, u16 clobbers, void *insnbuf, unsigned long addr, unsigned len)
{
	(void)clobbers;
	if (&pv_ops == 0)
		return len;
	void *opfunc = ((void **)&pv_ops)[type];
	if (opfunc == 0) {
		static const unsigned char ud2[2] = { 0x0f, 0x0b };
		return patch_insns(insnbuf, len, ud2, sizeof(ud2));
	}
	if (opfunc == (void *)pvgen_nop)
		return 0;
	if (opfunc == (void *)pvgen_ident_64)
		return patch_insns(insnbuf, len, pvgen_template_native_identity, sizeof(pvgen_template_native_identity));
	if (type == PV_OP_CPU_IRET || type == PV_OP_CPU_USERGS_SYSRET64)
		return patch_branch(insnbuf, 0xe9, (unsigned long)opfunc, addr, len);
	return patch_branch(insnbuf, 0xe8, (unsigned long)opfunc, addr, len);
}

/* Whether an op's slot still holds what a table names for it (Linux: pv_is_native_spin_unlock). */
int pvgen_slot_is(const struct pv_ops_template *table, u8 type)
{
	if (&pv_ops == 0 || table == 0)
		return 0;
	return ((void *const *)table)[type] == ((void **)&pv_ops)[type];
}

/* The native template of an op, if it has one that fits; -1 otherwise. */
int pvgen_patch_native_template(u8 type, void *insnbuf, unsigned len)
{
	unsigned count = sizeof(pvgen_templates_x86_64_native) / sizeof(pvgen_templates_x86_64_native[0]);
	for (unsigned i = 0; i < count; i++) {
		const struct pvgen_template *t = &pvgen_templates_x86_64_native[i];
		if (t->index == type && !t->out_of_line && t->length <= len)
			return (int)patch_insns(insnbuf, len, t->bytes, t->length);
	}
	return -1;
}

extern const struct pv_ops_template pv_ops_native __attribute__((weak));

/*
 * native_patch: an op whose slot still holds its native implementation gets the native
 * template inline where it fits (a hypervisor's own function in the slot, as KVM's
 * io_delay, is called instead); everything else goes to the default patcher.
 */
unsigned native_patch(u8 type, u16 clobbers, void *insnbuf, unsigned long addr, unsigned len)
{
	if (pvgen_slot_is(&pv_ops_native, type)) {
		int used = pvgen_patch_native_template(type, insnbuf, len);
		if (used >= 0)
			return (unsigned)used;
	}
	return paravirt_patch_default(type, clobbers, insnbuf, addr, len);
}
