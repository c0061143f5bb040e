/*
 * Kernel-style C that calls pv_ops through the generated x86-64 wrappers. Built twice by
 * tests/test_backend_c.py: as a paravirt kernel (every wrapper a recorded patch site) and
 * with -DPVGEN_NATIVE (the native implementations inline, no sites).
 */
#include "pvops.h"

unsigned long irq_save_disable_restore(void)
{
	unsigned long flags = pv_save_fl();

	pv_irq_disable();
	pv_restore_fl(flags);
	return flags;
}

void irq_enable_and_halt(void)
{
	pv_irq_enable();
	pv_safe_halt();
}

void switch_page_table(unsigned long cr3, unsigned long addr)
{
	pv_write_cr3(cr3);
	pv_flush_tlb_one_user(addr);
}

unsigned long fault_address(void)
{
	return pv_read_cr2();
}

void spin_unlock(struct qspinlock *lock)
{
	pv_queued_spin_unlock(lock);
}

bool vcpu_preempted(long cpu)
{
	return pv_vcpu_is_preempted(cpu);
}

pteval_t pte_value(pte_t pte)
{
	return pv_pte_val(pte);
}

void gdt_entry(struct desc_struct *gdt, int entry, const void *desc)
{
	pv_write_gdt_entry(gdt, entry, desc, 9);
}

void map_pte(struct mm_struct *mm, unsigned long addr, pte_t *ptep, pte_t pte)
{
	pv_set_pte_at(mm, addr, ptep, pte);
}

unsigned int patch_site(void *buffer, unsigned long addr)
{
	return pv_patch(PV_OP_IRQ_IRQ_DISABLE, 0x1, buffer, addr, 6);
}

u64 read_msr(unsigned int msr)
{
	return pv_read_msr(msr);
}
