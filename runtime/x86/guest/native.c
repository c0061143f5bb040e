/*
 * The native implementations of the pv ops: what a kernel runs on bare metal, and under
 * KVM wherever KVM keeps the native op. Each is the instruction (or store) Linux's
 * native_* helper executes; privileged ones trap when a hypervisor intercepts them.
 *
 * Fault-tolerant MSR accesses carry __ex_table entries {insn, fixup, handler}: the
 * runtime's exception delivery plays Linux's fixup_exception (handler 0: jump to the
 * fixup; 1: rdmsr_unsafe, zero %rax/%rdx and skip; 2: wrmsr_unsafe, skip).
 */
#include "guest.h"

#define EX_HANDLER_DEFAULT 0
#define EX_HANDLER_RDMSR_UNSAFE 1
#define EX_HANDLER_WRMSR_UNSAFE 2
#define __stringify_1(x) #x
#define __stringify(x) __stringify_1(x)
#define ASM_EXTABLE(from, to, handler)                               \
	".pushsection __ex_table, \"a\"\n\t"                         \
	".balign 8\n\t"                                              \
	".quad " #from ", " #to ", " __stringify(handler) "\n\t"     \
	".popsection\n\t"

extern u32 cyc2ns_mul, cyc2ns_shift;
extern struct desc_ptr idt_descr;

/* -- time ------------------------------------------------------------------------------------- */

unsigned long long native_sched_clock(void)
{
	u64 cycles = native_rdtsc();
	return (u64)(((unsigned __int128)cycles * cyc2ns_mul) >> cyc2ns_shift);
}

unsigned long long native_steal_clock(int cpu)
{
	(void)cpu;
	return 0; /* no hypervisor steals time from bare metal */
}

/* -- debug registers -------------------------------------------------------------------- */

unsigned long native_get_debugreg(int regno)
{
	unsigned long val = 0;

	switch (regno) {
	case 0: asm volatile("mov %%db0, %0" : "=r"(val)); break;
	case 1: asm volatile("mov %%db1, %0" : "=r"(val)); break;
	case 2: asm volatile("mov %%db2, %0" : "=r"(val)); break;
	case 3: asm volatile("mov %%db3, %0" : "=r"(val)); break;
	case 6: asm volatile("mov %%db6, %0" : "=r"(val)); break;
	case 7: asm volatile("mov %%db7, %0" : "=r"(val)); break;
	default: BUG();
	}
	return val;
}

void native_set_debugreg(int regno, unsigned long value)
{
	switch (regno) {
	case 0: asm volatile("mov %0, %%db0" : : "r"(value)); break;
	case 1: asm volatile("mov %0, %%db1" : : "r"(value)); break;
	case 2: asm volatile("mov %0, %%db2" : : "r"(value)); break;
	case 3: asm volatile("mov %0, %%db3" : : "r"(value)); break;
	case 6: asm volatile("mov %0, %%db6" : : "r"(value)); break;
	case 7: asm volatile("mov %0, %%db7" : : "r"(value)); break;
	default: BUG();
	}
}

/* -- control registers ------------------------------------------------------------------- */

unsigned long native_read_cr0(void)
{
	unsigned long val;
	asm volatile("mov %%cr0, %0" : "=r"(val) : : "memory");
	return val;
}

void native_write_cr0(unsigned long cr0)
{
	asm volatile("mov %0, %%cr0" : : "r"(cr0) : "memory");
}

static unsigned long native_read_cr4(void)
{
	unsigned long val;
	asm volatile("mov %%cr4, %0" : "=r"(val) : : "memory");
	return val;
}

void native_write_cr4(unsigned long cr4)
{
	asm volatile("mov %0, %%cr4" : : "r"(cr4) : "memory");
}

unsigned long native_read_cr8(void)
{
	unsigned long val;
	asm volatile("mov %%cr8, %0" : "=r"(val) : : "memory");
	return val;
}

void native_write_cr8(unsigned long cr8)
{
	asm volatile("mov %0, %%cr8" : : "r"(cr8) : "memory");
}

void native_write_cr2(unsigned long cr2)
{
	asm volatile("mov %0, %%cr2" : : "r"(cr2) : "memory");
}

static unsigned long native_read_cr3(void)
{
	unsigned long val;
	asm volatile("mov %%cr3, %0" : "=r"(val) : : "memory");
	return val;
}

static void native_write_cr3(unsigned long val)
{
	asm volatile("mov %0, %%cr3" : : "r"(val) : "memory");
}

/* -- descriptor tables ------------------------------------------------------------------------ */

#define GDT_ENTRY_TSS 8
#define GDT_ENTRY_LDT 10

void native_load_tr_desc(void)
{
	asm volatile("ltr %w0" : : "q"(GDT_ENTRY_TSS * 8));
}

void native_load_gdt(const struct desc_ptr *dtr)
{
	asm volatile("lgdt %0" : : "m"(*dtr));
}

void native_load_idt(const struct desc_ptr *dtr)
{
	asm volatile("lidt %0" : : "m"(*dtr));
}

unsigned long native_store_tr(void)
{
	unsigned long tr;
	asm volatile("str %0" : "=r"(tr));
	return tr;
}

static void copy_bytes(void *dst, const void *src, unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		((volatile u8 *)dst)[i] = ((const u8 *)src)[i];
}

void native_write_ldt_entry(struct desc_struct *ldt, int entrynum, const void *desc)
{
	copy_bytes(&ldt[entrynum], desc, 8);
}

void native_write_gdt_entry(struct desc_struct *gdt, int entrynum, const void *desc, int type)
{
	/* System descriptors (TSS, LDT) take two slots in long mode. */
	copy_bytes(&gdt[entrynum], desc, type == DESC_TSS || type == DESC_LDT ? 16 : 8);
}

void native_write_idt_entry(gate_desc *idt, int entrynum, const gate_desc *gate)
{
	copy_bytes(&idt[entrynum], gate, sizeof(*gate));
}

void native_set_ldt(const void *addr, unsigned int entries)
{
	if (entries == 0) {
		asm volatile("lldt %w0" : : "q"(0));
		return;
	}
	/* A 16-byte LDT descriptor in the CPU's GDT, then lldt. */
	unsigned long base = (unsigned long)addr, limit = entries * 8 - 1;
	u32 desc[4];
	desc[0] = (u32)((limit & 0xffff) | ((base & 0xffff) << 16));
	desc[1] = (u32)(((base >> 16) & 0xff) | (DESC_LDT << 8) | (1 << 15) | (limit & 0xf0000) | (base & 0xff000000));
	desc[2] = (u32)(base >> 32);
	desc[3] = 0;
	native_write_gdt_entry(this_cpu()->gdt, GDT_ENTRY_LDT, desc, DESC_LDT);
	asm volatile("lldt %w0" : : "q"(GDT_ENTRY_LDT * 8));
}

void native_load_tls(struct thread_struct *t, unsigned int cpu)
{
	struct desc_struct *gdt = per_cpu_area((int)cpu)->gdt;
	for (unsigned int i = 0; i < GDT_ENTRY_TLS_ENTRIES; i++)
		gdt[GDT_ENTRY_TLS_MIN + i] = t->tls_array[i];
}

/* Loads the user %gs selector: swapgs around the load keeps the kernel's GS base (entry_64.S). */
void native_load_gs_index(unsigned int idx)
{
	unsigned long flags = native_save_fl();
	native_irq_disable();
	asm volatile("swapgs\n\tmovl %0, %%gs\n\tswapgs" : : "r"(idx) : "memory");
	native_restore_fl(flags);
}

/* -- the TSS and I/O privilege ---------------------------------------------------------------------- */

void native_load_sp0(unsigned long sp0)
{
	this_cpu_write_8(PCPU_TSS + 4, sp0); /* cpu_tss_rw.x86_tss.sp0 */
}

void native_set_iopl_mask(unsigned int mask)
{
	unsigned long reg;
	asm volatile("pushfq\n\tpopq %0\n\tandq %1, %0\n\torq %2, %0\n\tpushq %0\n\tpopfq"
		     : "=&r"(reg)
		     : "i"(~X86_EFLAGS_IOPL), "r"((unsigned long)mask)
		     : "memory", "cc");
}

/* -- CPUID, MSRs, counters ---------------------------------------------------------------- */

void native_cpuid(unsigned int *eax, unsigned int *ebx, unsigned int *ecx, unsigned int *edx)
{
	native_cpuid_raw(eax, ebx, ecx, edx);
}

u64 native_read_msr(unsigned int msr)
{
	u32 low, high;
	asm volatile("1: rdmsr\n"
		     "2:\n\t"
		     ASM_EXTABLE(1b, 2b, EX_HANDLER_RDMSR_UNSAFE)
		     : "=a"(low), "=d"(high)
		     : "c"(msr));
	return ((u64)high << 32) | low;
}

void native_write_msr(unsigned int msr, unsigned int low, unsigned int high)
{
	asm volatile("1: wrmsr\n"
		     "2:\n\t"
		     ASM_EXTABLE(1b, 2b, EX_HANDLER_WRMSR_UNSAFE)
		     : : "c"(msr), "a"(low), "d"(high) : "memory");
}

u64 native_read_msr_safe(unsigned int msr, int *err)
{
	u32 low, high;
	int error;
	asm volatile("2: rdmsr ; xorl %[err], %[err]\n"
		     "1:\n\t"
		     ".pushsection .fixup, \"ax\"\n\t"
		     "3: movl %[fault], %[err]\n\t"
		     "xorl %%eax, %%eax\n\t"
		     "xorl %%edx, %%edx\n\t"
		     "jmp 1b\n\t"
		     ".popsection\n\t"
		     ASM_EXTABLE(2b, 3b, EX_HANDLER_DEFAULT)
		     : [err] "=r"(error), "=a"(low), "=d"(high)
		     : "c"(msr), [fault] "i"(-EIO));
	*err = error;
	return ((u64)high << 32) | low;
}

int native_write_msr_safe(unsigned int msr, unsigned int low, unsigned int high)
{
	int err;
	asm volatile("2: wrmsr ; xorl %[err], %[err]\n"
		     "1:\n\t"
		     ".pushsection .fixup, \"ax\"\n\t"
		     "3: movl %[fault], %[err] ; jmp 1b\n\t"
		     ".popsection\n\t"
		     ASM_EXTABLE(2b, 3b, EX_HANDLER_DEFAULT)
		     : [err] "=a"(err)
		     : "c"(msr), "0"(low), "d"(high), [fault] "i"(-EIO)
		     : "memory");
	return err;
}

u64 native_read_pmc(int counter)
{
	u32 low, high;
	asm volatile("rdpmc" : "=a"(low), "=d"(high) : "c"(counter));
	return ((u64)high << 32) | low;
}

/* -- TLB ---------------------------------------------------------------------------------------- */

#define X86_CR4_PGE (1UL << 7)

void native_flush_tlb(void)
{
	/* Reloading CR3 drops every non-global translation. */
	native_write_cr3(native_read_cr3());
}

void native_flush_tlb_global(void)
{
	/* Toggling CR4.PGE drops global translations too; interrupts off so no one sees PGE clear. */
	unsigned long flags = native_save_fl();
	native_irq_disable();
	unsigned long cr4 = native_read_cr4();
	native_write_cr4(cr4 ^ X86_CR4_PGE);
	native_write_cr4(cr4);
	native_restore_fl(flags);
}

/* Sends the flush IPI (x2APIC ICR, fixed delivery) to every other online CPU in the mask. */
void native_flush_tlb_others(const struct cpumask *cpus, const struct flush_tlb_info *info)
{
	(void)info;
	int self = smp_processor_id();
	for (int cpu = 0; cpu < NR_CPUS; cpu++) {
		if (cpu == self || !(cpus->bits[0] & (1UL << cpu)) || !per_cpu_area(cpu)->online)
			continue;
		native_wrmsr(MSR_X2APIC_ICR, ((u64)cpu << 32) | 0xfd /* CALL_FUNCTION_VECTOR */);
	}
}

/* -- page tables ------------------------------------------------------------------------------------ */

int __paravirt_pgd_alloc(struct mm_struct *mm)
{
	(void)mm;
	return 0; /* nothing beyond the page itself on bare metal */
}

void native_set_pte(pte_t *ptep, pte_t pteval)
{
	WRITE_ONCE(*ptep, pteval);
}

void native_set_pte_at(struct mm_struct *mm, unsigned long addr, pte_t *ptep, pte_t pteval)
{
	(void)mm;
	(void)addr;
	native_set_pte(ptep, pteval);
}

void native_set_pmd(pmd_t *pmdp, pmd_t pmdval)
{
	WRITE_ONCE(*pmdp, pmdval);
}

void native_set_pud(pud_t *pudp, pud_t pudval)
{
	WRITE_ONCE(*pudp, pudval);
}

void native_set_p4d(p4d_t *p4dp, p4d_t p4dval)
{
	WRITE_ONCE(*p4dp, p4dval);
}

void native_set_pgd(pgd_t *pgdp, pgd_t pgdval)
{
	WRITE_ONCE(*pgdp, pgdval);
}

/* Clears the entry while it is being modified, so no hardware update races with the change. */
pte_t __ptep_modify_prot_start(struct mm_struct *mm, unsigned long addr, pte_t *ptep)
{
	(void)mm;
	(void)addr;
	return __atomic_exchange_n(ptep, 0, __ATOMIC_SEQ_CST);
}

void __ptep_modify_prot_commit(struct mm_struct *mm, unsigned long addr, pte_t *ptep, pte_t pte)
{
	pv_set_pte_at(mm, addr, ptep, pte);
}

/* The fixmap: one page of PTEs for the top of the address space (FIXADDR_TOP downwards). */
#define FIXADDR_TOP 0xffffffffff5ff000UL
#define FIX_ENTRIES 512
pte_t bm_pte[FIX_ENTRIES] __attribute__((aligned(PAGE_SIZE)));

unsigned long fix_to_virt(unsigned int idx)
{
	return FIXADDR_TOP - ((unsigned long)idx << PAGE_SHIFT);
}

void native_set_fixmap(unsigned int idx, phys_addr_t phys, pgprot_t flags)
{
	BUG_ON(idx >= FIX_ENTRIES);
	native_set_pte(&bm_pte[idx], ((phys >> PAGE_SHIFT) << PAGE_SHIFT) | flags);
	asm volatile("invlpg (%0)" : : "r"(fix_to_virt(idx)) : "memory");
}
