/*
 * Xen PV pv_mmu_ops (mmu_pv.c): page-table entries hold machine frames, so values are
 * translated through the P2M/M2P; writes to pinned (Xen-validated) page tables and every
 * CR3/TLB operation go through mmu_update / mmuext_op, batched in lazy MMU mode.
 */
#include "xen.h"

/* -- CR2, CR3 ------------------------------------------------------------------------------------ */

unsigned long xen_read_cr2(void)
{
	return xen_vcpu()->arch.cr2; /* Xen stores the fault address there */
}

void xen_write_cr2(unsigned long cr2)
{
	xen_vcpu()->arch.cr2 = cr2;
}

unsigned long xen_read_cr3(void)
{
	return this_cpu_read_8(PCPU_XEN_CR3);
}

static void set_current_cr3(void *v)
{
	this_cpu_write_8(PCPU_XEN_CURRENT_CR3, (unsigned long)v);
}

void xen_extend_mmuext_op(const struct mmuext_op *op)
{
	struct multicall_space mcs = xen_mc_extend_args(__HYPERVISOR_mmuext_op, sizeof(*op));
	struct mmuext_op *u;

	if (mcs.mc != 0) {
		mcs.mc->args[1]++;
	} else {
		mcs = __xen_mc_entry(sizeof(*op));
		MULTI_mmuext_op(mcs.mc, mcs.args, 1, 0, DOMID_SELF);
	}
	u = mcs.args;
	*u = *op;
}

static void xen_extend_mmu_update(const struct mmu_update *update)
{
	struct multicall_space mcs = xen_mc_extend_args(__HYPERVISOR_mmu_update, sizeof(*update));
	struct mmu_update *u;

	if (mcs.mc != 0) {
		mcs.mc->args[1]++;
	} else {
		mcs = __xen_mc_entry(sizeof(*update));
		MULTI_mmu_update(mcs.mc, mcs.args, 1, 0, DOMID_SELF);
	}
	u = mcs.args;
	*u = *update;
}

static void __xen_write_cr3(int kernel, unsigned long cr3)
{
	struct mmuext_op op;
	unsigned long mfn = cr3 ? pfn_to_mfn(PFN_DOWN(cr3)) : 0;

	op.cmd = kernel ? MMUEXT_NEW_BASEPTR : MMUEXT_NEW_USER_BASEPTR;
	op.arg1.mfn = mfn;
	op.arg2.nr_ents = 0;
	xen_extend_mmuext_op(&op);
	if (kernel) {
		this_cpu_write_8(PCPU_XEN_CR3, cr3);
		/* The current CR3 changes once the batch has reached Xen. */
		xen_mc_callback(set_current_cr3, (void *)cr3);
	}
}

static pgd_t *xen_get_user_pgd(unsigned long cr3);

void xen_write_cr3(unsigned long cr3)
{
	xen_mc_batch();
	this_cpu_write_8(PCPU_XEN_CR3, cr3);
	__xen_write_cr3(1, cr3);
	pgd_t *user_pgd = xen_get_user_pgd(cr3);
	__xen_write_cr3(0, user_pgd ? __pa(user_pgd) : 0);
	xen_mc_issue(PARAVIRT_LAZY_CPU);
}

/* -- TLB ------------------------------------------------------------------------------------------ */

void xen_flush_tlb(void)
{
	struct multicall_space mcs = xen_mc_entry(sizeof(struct mmuext_op));
	struct mmuext_op *op = mcs.args;
	op->cmd = MMUEXT_TLB_FLUSH_LOCAL;
	MULTI_mmuext_op(mcs.mc, op, 1, 0, DOMID_SELF);
	xen_mc_issue(PARAVIRT_LAZY_MMU);
}

void xen_flush_tlb_one_user(unsigned long addr)
{
	struct multicall_space mcs = xen_mc_entry(sizeof(struct mmuext_op));
	struct mmuext_op *op = mcs.args;
	op->cmd = MMUEXT_INVLPG_LOCAL;
	op->arg1.linear_addr = addr & ~(PAGE_SIZE - 1UL);
	MULTI_mmuext_op(mcs.mc, op, 1, 0, DOMID_SELF);
	xen_mc_issue(PARAVIRT_LAZY_MMU);
}

void xen_flush_tlb_others(const struct cpumask *cpus, const struct flush_tlb_info *info)
{
	struct {
		struct mmuext_op op;
		unsigned long mask[1];
	} *args;
	int self = smp_processor_id();
	unsigned long online = 0;

	if (cpus->bits[0] == 0)
		return;
	for (int cpu = 0; cpu < NR_CPUS; cpu++)
		if (per_cpu_area(cpu)->online)
			online |= 1UL << cpu;
	struct multicall_space mcs = xen_mc_entry(sizeof(*args));
	args = mcs.args;
	args->op.arg2.vcpumask = args->mask;
	/* Leave out ourselves and any offline CPU. */
	args->mask[0] = cpus->bits[0] & online & ~(1UL << self);
	args->op.cmd = MMUEXT_TLB_FLUSH_MULTI;
	if (info->end != TLB_FLUSH_ALL && info->end - info->start <= PAGE_SIZE) {
		args->op.cmd = MMUEXT_INVLPG_MULTI;
		args->op.arg1.linear_addr = info->start;
	}
	MULTI_mmuext_op(mcs.mc, &args->op, 1, 0, DOMID_SELF);
	xen_mc_issue(PARAVIRT_LAZY_MMU);
}

/* -- page-table values: PFN <-> MFN ---------------------------------------------------------------- */

pteval_t pte_mfn_to_pfn(pteval_t val)
{
	if (val & _PAGE_PRESENT) {
		unsigned long mfn = (val & PTE_PFN_MASK) >> PAGE_SHIFT;
		unsigned long pfn = mfn_to_pfn(mfn);
		pteval_t flags = val & PTE_FLAGS_MASK;
		if (unlikely(pfn == ~0UL))
			val = flags & ~_PAGE_PRESENT;
		else
			val = ((pteval_t)pfn << PAGE_SHIFT) | flags;
	}
	return val;
}

pteval_t pte_pfn_to_mfn(pteval_t val)
{
	if (val & _PAGE_PRESENT) {
		unsigned long pfn = (val & PTE_PFN_MASK) >> PAGE_SHIFT;
		pteval_t flags = val & PTE_FLAGS_MASK;
		unsigned long mfn = pfn_to_mfn(pfn);
		/* A frame with no machine backing becomes not-present rather than mapping someone else's. */
		if (unlikely(mfn == INVALID_P2M_ENTRY)) {
			mfn = 0;
			flags = 0;
		}
		val = ((pteval_t)mfn << PAGE_SHIFT) | flags;
	}
	return val;
}

pteval_t xen_pte_val(pte_t pte)
{
	return pte_mfn_to_pfn(pte);
}

pte_t xen_make_pte(pteval_t pte)
{
	return pte_pfn_to_mfn(pte);
}

pmdval_t xen_pmd_val(pmd_t pmd)
{
	return pte_mfn_to_pfn(pmd);
}

pmd_t xen_make_pmd(pmdval_t pmd)
{
	return pte_pfn_to_mfn(pmd);
}

pudval_t xen_pud_val(pud_t pud)
{
	return pte_mfn_to_pfn(pud);
}

pud_t xen_make_pud(pudval_t pud)
{
	return pte_pfn_to_mfn(pud);
}

p4dval_t xen_p4d_val(p4d_t p4d)
{
	return pte_mfn_to_pfn(p4d);
}

p4d_t xen_make_p4d(p4dval_t p4d)
{
	return pte_pfn_to_mfn(p4d);
}

pgdval_t xen_pgd_val(pgd_t pgd)
{
	return pte_mfn_to_pfn(pgd);
}

pgd_t xen_make_pgd(pgdval_t pgd)
{
	return pte_pfn_to_mfn(pgd);
}

/* -- pinned page tables ------------------------------------------------------------------------ */

/* Frames Xen has validated and pinned (Linux keeps PG_pinned in struct page). */
#define MAX_PINNED 64
static unsigned long pinned_pfns[MAX_PINNED];
static unsigned int nr_pinned;

static int pfn_pinned(unsigned long pfn)
{
	for (unsigned int i = 0; i < nr_pinned; i++)
		if (pinned_pfns[i] == pfn)
			return 1;
	return 0;
}

int xen_page_pinned(const volatile void *ptr)
{
	return pfn_pinned(PFN_DOWN(__pa(ptr)));
}

static void mark_pinned(unsigned long pfn, int pinned)
{
	for (unsigned int i = 0; i < nr_pinned; i++) {
		if (pinned_pfns[i] == pfn) {
			if (!pinned)
				pinned_pfns[i] = pinned_pfns[--nr_pinned];
			return;
		}
	}
	if (pinned) {
		BUG_ON(nr_pinned == MAX_PINNED);
		pinned_pfns[nr_pinned++] = pfn;
	}
}

static void pin_pagetable_pfn(unsigned int cmd, unsigned long pfn)
{
	struct mmuext_op op;
	op.cmd = cmd;
	op.arg1.mfn = pfn_to_mfn(pfn);
	op.arg2.nr_ents = 0;
	if (HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF) < 0)
		BUG();
	mark_pinned(pfn, cmd != MMUEXT_UNPIN_TABLE);
}

static void make_page_prot(unsigned long pfn, pgprot_t prot)
{
	unsigned long va = (unsigned long)__va(pfn << PAGE_SHIFT);
	if (HYPERVISOR_update_va_mapping(va, (pfn_to_mfn(pfn) << PAGE_SHIFT) | prot, 0))
		BUG();
}

/* A new page-table page of a pinned mm must be read-only (and an L1 pinned) before use. */
static void xen_alloc_ptpage(struct mm_struct *mm, unsigned long pfn, int level)
{
	if (mm && mm->pinned) {
		make_page_prot(pfn, PAGE_KERNEL_RO);
		if (level == 1)
			pin_pagetable_pfn(MMUEXT_PIN_L1_TABLE, pfn);
		else
			mark_pinned(pfn, 1);
	}
}

void xen_alloc_pte(struct mm_struct *mm, unsigned long pfn)
{
	xen_alloc_ptpage(mm, pfn, 1);
}

void xen_alloc_pmd(struct mm_struct *mm, unsigned long pfn)
{
	xen_alloc_ptpage(mm, pfn, 2);
}

void xen_alloc_pud(struct mm_struct *mm, unsigned long pfn)
{
	xen_alloc_ptpage(mm, pfn, 3);
}

static void xen_release_ptpage(unsigned long pfn, int level)
{
	if (pfn_pinned(pfn)) {
		if (level == 1)
			pin_pagetable_pfn(MMUEXT_UNPIN_TABLE, pfn);
		else
			mark_pinned(pfn, 0);
		make_page_prot(pfn, PAGE_KERNEL);
	}
}

void xen_release_pte(unsigned long pfn)
{
	xen_release_ptpage(pfn, 1);
}

void xen_release_pmd(unsigned long pfn)
{
	xen_release_ptpage(pfn, 2);
}

void xen_release_pud(unsigned long pfn)
{
	xen_release_ptpage(pfn, 3);
}

/* -- whole address spaces: pgd alloc/free, pin/unpin -------------------------------------------- */

#define MAX_USER_PGDS 8
static struct {
	unsigned long kernel_pgd_pa;
	pgd_t *user_pgd;
} user_pgds[MAX_USER_PGDS];

static pgd_t *xen_get_user_pgd(unsigned long cr3)
{
	for (unsigned int i = 0; i < MAX_USER_PGDS; i++)
		if (user_pgds[i].user_pgd && user_pgds[i].kernel_pgd_pa == (cr3 & PTE_PFN_MASK))
			return user_pgds[i].user_pgd;
	return 0;
}

/* On 64-bit a PV mm has a second top level for user mode (Xen switches on kernel entry/exit). */
int xen_pgd_alloc(struct mm_struct *mm)
{
	unsigned long page = pvgen_get_free_page();
	if (!page)
		return -ENOMEM;
	mm->user_pgd = (pgd_t *)page;
	for (unsigned int i = 0; i < MAX_USER_PGDS; i++) {
		if (!user_pgds[i].user_pgd) {
			user_pgds[i].kernel_pgd_pa = __pa(mm->pgd) & PTE_PFN_MASK;
			user_pgds[i].user_pgd = mm->user_pgd;
			return 0;
		}
	}
	pvgen_free_page(page);
	mm->user_pgd = 0;
	return -ENOMEM;
}

void xen_pgd_free(struct mm_struct *mm, pgd_t *pgd)
{
	(void)pgd;
	for (unsigned int i = 0; i < MAX_USER_PGDS; i++)
		if (user_pgds[i].user_pgd == mm->user_pgd)
			user_pgds[i].user_pgd = 0;
	pvgen_free_page((unsigned long)mm->user_pgd);
	mm->user_pgd = 0;
}

static void xen_pgd_pin(struct mm_struct *mm)
{
	xen_mc_batch();
	make_page_prot(PFN_DOWN(__pa(mm->pgd)), PAGE_KERNEL_RO);
	pin_pagetable_pfn(MMUEXT_PIN_L4_TABLE, PFN_DOWN(__pa(mm->pgd)));
	if (mm->user_pgd) {
		make_page_prot(PFN_DOWN(__pa(mm->user_pgd)), PAGE_KERNEL_RO);
		pin_pagetable_pfn(MMUEXT_PIN_L4_TABLE, PFN_DOWN(__pa(mm->user_pgd)));
	}
	mm->pinned = 1;
	xen_mc_issue(0);
}

static void xen_pgd_unpin(struct mm_struct *mm)
{
	xen_mc_batch();
	pin_pagetable_pfn(MMUEXT_UNPIN_TABLE, PFN_DOWN(__pa(mm->pgd)));
	make_page_prot(PFN_DOWN(__pa(mm->pgd)), PAGE_KERNEL);
	if (mm->user_pgd) {
		pin_pagetable_pfn(MMUEXT_UNPIN_TABLE, PFN_DOWN(__pa(mm->user_pgd)));
		make_page_prot(PFN_DOWN(__pa(mm->user_pgd)), PAGE_KERNEL);
	}
	mm->pinned = 0;
	xen_mc_issue(0);
}

void xen_activate_mm(struct mm_struct *prev, struct mm_struct *next)
{
	(void)prev;
	if (!next->pinned)
		xen_pgd_pin(next);
}

void xen_dup_mmap(struct mm_struct *oldmm, struct mm_struct *mm)
{
	(void)oldmm;
	xen_pgd_pin(mm);
}

void xen_exit_mmap(struct mm_struct *mm)
{
	if (mm->pinned)
		xen_pgd_unpin(mm);
}

/* -- entry updates ------------------------------------------------------------------------------- */

static int xen_batched_set_pte(pte_t *ptep, pte_t pteval)
{
	struct mmu_update u;

	if (paravirt_get_lazy_mode() != PARAVIRT_LAZY_MMU)
		return 0;
	xen_mc_batch();
	u.ptr = virt_to_machine(ptep) | MMU_NORMAL_PT_UPDATE;
	u.val = pteval;
	xen_extend_mmu_update(&u);
	xen_mc_issue(PARAVIRT_LAZY_MMU);
	return 1;
}

static void __xen_set_pte(pte_t *ptep, pte_t pteval)
{
	if (!xen_batched_set_pte(ptep, pteval)) {
		/* A native store would trap and be emulated; the hypercall is cheaper. */
		struct mmu_update u;
		u.ptr = virt_to_machine(ptep) | MMU_NORMAL_PT_UPDATE;
		u.val = pteval;
		if (HYPERVISOR_mmu_update(&u, 1, 0, DOMID_SELF) < 0)
			BUG();
	}
}

void xen_set_pte(pte_t *ptep, pte_t pteval)
{
	__xen_set_pte(ptep, pteval);
}

void xen_set_pte_at(struct mm_struct *mm, unsigned long addr, pte_t *ptep, pte_t pteval)
{
	(void)mm;
	(void)addr;
	__xen_set_pte(ptep, pteval);
}

static void xen_set_entry_hyper(unsigned long *ptr, unsigned long val)
{
	struct mmu_update u;
	xen_mc_batch();
	u.ptr = virt_to_machine(ptr) | MMU_NORMAL_PT_UPDATE;
	u.val = val;
	xen_extend_mmu_update(&u);
	xen_mc_issue(PARAVIRT_LAZY_MMU);
}

/* Upper levels: a page Xen has not pinned is ordinary memory; a pinned one needs mmu_update. */
void xen_set_pmd(pmd_t *ptr, pmd_t val)
{
	if (!xen_page_pinned(ptr)) {
		WRITE_ONCE(*ptr, val);
		return;
	}
	xen_set_entry_hyper(ptr, val);
}

void xen_set_pud(pud_t *ptr, pud_t val)
{
	if (!xen_page_pinned(ptr)) {
		WRITE_ONCE(*ptr, val);
		return;
	}
	xen_set_entry_hyper(ptr, val);
}

void xen_set_p4d(p4d_t *ptr, p4d_t val)
{
	if (!xen_page_pinned(ptr)) {
		WRITE_ONCE(*ptr, val);
		return;
	}
	xen_set_entry_hyper(ptr, val);
}

void xen_leave_lazy_mmu(void)
{
	xen_mc_flush();
	paravirt_leave_lazy_mmu();
}

/* Fixmap slots that name machine frames (the shared_info page) take the MFN as is. */
#define FIX_PARAVIRT_BOOTMAP 1
extern unsigned long fix_to_virt(unsigned int idx);
extern pte_t bm_pte[];

void xen_set_fixmap(unsigned int idx, phys_addr_t phys, pgprot_t prot)
{
	unsigned long frame = phys >> PAGE_SHIFT;
	pte_t pte;

	if (idx == FIX_PARAVIRT_BOOTMAP)
		pte = (frame << PAGE_SHIFT) | prot; /* already a machine frame */
	else
		pte = (pfn_to_mfn(frame) << PAGE_SHIFT) | prot;
	if (HYPERVISOR_update_va_mapping(fix_to_virt(idx), pte, UVMF_INVLPG))
		BUG();
	bm_pte[idx] = pte;
}
