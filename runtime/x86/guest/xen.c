/*
 * Xen PV guest: boot (xen_start_kernel), events, time, the pv_cpu_ops and pv_irq_ops of
 * enlighten_pv.c / irq.c / time.c, multicall batching (multicalls.c) and the PV spinlock
 * hooks (spinlock.c). The kernel runs deprivileged: everything privileged goes through
 * the hypercall page or traps to Xen.
 */
#include "xen.h"

struct start_info *xen_start_info;
struct shared_info *HYPERVISOR_shared_info;
unsigned long *xen_p2m_addr;
unsigned long xen_p2m_size;
unsigned long *machine_to_phys_mapping;
unsigned long machine_to_phys_nr;
int xen_have_vcpu_info_placement;

/* Used until the real shared_info page is mapped (Linux's xen_dummy_shared_info). */
static struct shared_info xen_dummy_shared_info __attribute__((aligned(PAGE_SIZE)));

extern void xen_hypervisor_callback(void);
extern void xen_failsafe_callback(void);
extern unsigned long fix_to_virt(unsigned int idx);
extern void xen_set_fixmap(unsigned int idx, phys_addr_t phys, pgprot_t flags);
extern void set_cyc2ns_scale(unsigned long khz);
extern unsigned long tsc_khz;
extern struct desc_ptr idt_descr;

#define FIX_PARAVIRT_BOOTMAP 1

/* -- events -------------------------------------------------------------------------------------- */

void xen_force_evtchn_callback(void)
{
	/* Any hypercall makes Xen deliver pending events on its way back. */
	(void)HYPERVISOR_xen_version(XENVER_version, 0);
}

static void handle_port(struct pvgen_percpu *pc, unsigned int port)
{
	pc->events++;
	if (port < 64)
		pc->port_events[port]++;
	if ((int)port == pc->kicker_port)
		pc->kicks++;
}

/* The event upcall (events_2l.c): scan the two-level pending bitmap, clear and handle each port. */
void xen_evtchn_do_upcall(void)
{
	struct pvgen_percpu *pc = this_cpu();
	struct vcpu_info *vcpu = pc->xen_vcpu;
	struct shared_info *s = HYPERVISOR_shared_info;

	pc->upcalls++;
	do {
		WRITE_ONCE(vcpu->evtchn_upcall_pending, 0);
		unsigned long words = __atomic_exchange_n(&vcpu->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
		while (words) {
			unsigned int word = (unsigned int)__builtin_ctzl(words);
			words &= words - 1;
			unsigned long bits = READ_ONCE(s->evtchn_pending[word]) & ~READ_ONCE(s->evtchn_mask[word]);
			while (bits) {
				unsigned int bit = (unsigned int)__builtin_ctzl(bits);
				bits &= bits - 1;
				__atomic_and_fetch(&s->evtchn_pending[word], ~(1UL << bit), __ATOMIC_SEQ_CST);
				handle_port(pc, word * 64 + bit);
			}
		}
	} while (READ_ONCE(vcpu->evtchn_upcall_pending));
}

static void xen_clear_port_pending(unsigned int port)
{
	__atomic_and_fetch(&HYPERVISOR_shared_info->evtchn_pending[port / 64], ~(1UL << (port % 64)), __ATOMIC_SEQ_CST);
}

/* -- boot ------------------------------------------------------------------------------------- */

static void xen_setup_shared_info(void)
{
	xen_set_fixmap(FIX_PARAVIRT_BOOTMAP, xen_start_info->shared_info, PAGE_KERNEL);
	HYPERVISOR_shared_info = (struct shared_info *)fix_to_virt(FIX_PARAVIRT_BOOTMAP);
}

/* Moves this CPU's vcpu_info into its per-CPU area (xen_vcpu_setup), so %gs reaches it. */
static void xen_vcpu_setup(int cpu)
{
	struct pvgen_percpu *pc = per_cpu_area(cpu);
	struct vcpu_register_vcpu_info info;

	pc->xen_vcpu = &HYPERVISOR_shared_info->vcpu_info[cpu];
	info.mfn = virt_to_mfn(&pc->xen_vcpu_info);
	info.offset = (u32)((unsigned long)&pc->xen_vcpu_info & (PAGE_SIZE - 1));
	info.rsvd = 0;
	if (HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, cpu, &info) == 0) {
		xen_have_vcpu_info_placement = 1;
		pc->xen_vcpu = &pc->xen_vcpu_info;
	}
}

static void xen_setup_runstate_info(int cpu)
{
	struct vcpu_register_runstate_memory_area area;
	area.addr = (unsigned long)&per_cpu_area(cpu)->xen_runstate;
	if (HYPERVISOR_vcpu_op(VCPUOP_register_runstate_memory_area, cpu, &area) != 0)
		BUG();
}

static int register_callback(unsigned int type, const void *func)
{
	struct callback_register callback = {
		.type = (u16)type,
		.flags = type == CALLBACKTYPE_event ? CALLBACKF_mask_events : 0,
		.address = (unsigned long)func,
	};
	return HYPERVISOR_callback_op(CALLBACKOP_register, &callback);
}

static int bind_virq(unsigned int virq, unsigned int cpu)
{
	struct evtchn_bind_virq bind = { .virq = virq, .vcpu = cpu, .port = 0 };
	if (HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &bind) != 0)
		return -1;
	return (int)bind.port;
}

static int bind_ipi(unsigned int cpu)
{
	struct evtchn_bind_ipi bind = { .vcpu = cpu, .port = 0 };
	if (HYPERVISOR_event_channel_op(EVTCHNOP_bind_ipi, &bind) != 0)
		return -1;
	return (int)bind.port;
}

void xen_load_idt(const struct desc_ptr *dtr);

static void xen_console_write(const char *text)
{
	int n = 0;
	while (text[n])
		n++;
	HYPERVISOR_console_io(CONSOLEIO_write, n, text);
}

/*
 * The PV entry (startup_xen jumps here with the start_info page). Linux goes on to
 * start_kernel; the library returns to the runtime once the CPU is set up, with events
 * unmasked as start_kernel's local_irq_enable leaves them.
 */
unsigned long xen_start_kernel(void)
{
	struct pvgen_percpu *pc = &pvgen_percpu[0];
	struct xen_machphys_mapping mapping;
	struct physdev_set_iopl set_iopl = { .iopl = 1 };

	if (!xen_start_info)
		return 0;
	HYPERVISOR_set_segment_base(SEGBASE_GS_KERNEL, (unsigned long)pc);
	xen_p2m_addr = (unsigned long *)xen_start_info->mfn_list;
	xen_p2m_size = xen_start_info->nr_pages;
	machine_to_phys_mapping = (unsigned long *)0xffff800000000000UL;
	machine_to_phys_nr = 0;
	if (HYPERVISOR_memory_op(XENMEM_machphys_mapping, &mapping) == 0) {
		machine_to_phys_mapping = (unsigned long *)mapping.v_start;
		machine_to_phys_nr = mapping.max_mfn + 1;
	}

	HYPERVISOR_shared_info = &xen_dummy_shared_info;
	pc->xen_vcpu = &xen_dummy_shared_info.vcpu_info[0];
	pc->xen_vcpu->evtchn_upcall_mask = 1;
	xen_setup_shared_info();
	xen_vcpu_setup(0);
	xen_setup_runstate_info(0);

	/* The bootstrap page tables Xen built are the first CR3. */
	pc->xen_cr3 = __pa((void *)xen_start_info->pt_base);
	pc->xen_current_cr3 = pc->xen_cr3;

	register_callback(CALLBACKTYPE_event, xen_hypervisor_callback);
	register_callback(CALLBACKTYPE_failsafe, xen_failsafe_callback);
	xen_load_idt(&idt_descr);
	HYPERVISOR_physdev_op(PHYSDEVOP_set_iopl, &set_iopl);
	pc->timer_port = bind_virq(VIRQ_TIMER, 0);
	pc->kicker_port = bind_ipi(0);
	pc->tss.io_bitmap_base = sizeof(struct x86_hw_tss);
	set_cyc2ns_scale(tsc_khz);
	xen_console_write("pvgen: Xen PV guest up\n");

	xen_irq_enable();
	return (unsigned long)pc;
}

/* -- time (time.c) ----------------------------------------------------------------------------- */

unsigned long long xen_clocksource_read(void)
{
	return pvclock_read(&xen_vcpu()->time);
}

static void xen_get_runstate_snapshot_cpu(struct vcpu_runstate_info *res, int cpu)
{
	volatile struct vcpu_runstate_info *state = &per_cpu_area(cpu)->xen_runstate;
	u64 entry;
	do {
		entry = state->state_entry_time;
		barrier();
		res->state = state->state;
		res->state_entry_time = state->state_entry_time;
		for (int i = 0; i < 4; i++)
			res->time[i] = state->time[i];
		barrier();
	} while ((entry & XEN_RUNSTATE_UPDATE) || state->state_entry_time != entry);
}

unsigned long long xen_steal_clock(int cpu)
{
	struct vcpu_runstate_info state;
	xen_get_runstate_snapshot_cpu(&state, cpu);
	return state.time[RUNSTATE_runnable] + state.time[RUNSTATE_offline];
}

/* -- multicalls (multicalls.c) ----------------------------------------------------------------- */

#define MC_BATCH 32
#define MC_ARGS (MC_BATCH * 16)

struct mc_buffer {
	unsigned int mcidx, argidx, cbidx;
	struct multicall_entry entries[MC_BATCH];
	unsigned char args[MC_ARGS] __attribute__((aligned(8)));
	struct {
		void (*fn)(void *);
		void *data;
	} callbacks[MC_BATCH];
	unsigned long irq_flags;
};

static struct mc_buffer mc_buffers[NR_CPUS];

static struct mc_buffer *this_mc(void)
{
	return &mc_buffers[smp_processor_id()];
}

void xen_mc_flush(void)
{
	struct mc_buffer *b = this_mc();
	unsigned long flags = xen_save_fl();
	int failed = 0;

	xen_irq_disable();
	switch (b->mcidx) {
	case 0:
		BUG_ON(b->argidx != 0);
		break;
	case 1: {
		/* A single entry goes straight to its hypercall. */
		struct multicall_entry *mc = &b->entries[0];
		mc->result = xen_single_call(mc->op, mc->args[0], mc->args[1], mc->args[2], mc->args[3], mc->args[4]);
		failed = mc->result < 0;
		break;
	}
	default:
		if (HYPERVISOR_multicall(b->entries, b->mcidx) != 0)
			BUG();
		for (unsigned int i = 0; i < b->mcidx; i++)
			failed += b->entries[i].result < 0;
	}
	BUG_ON(failed);
	b->mcidx = 0;
	b->argidx = 0;
	for (unsigned int i = 0; i < b->cbidx; i++)
		b->callbacks[i].fn(b->callbacks[i].data);
	b->cbidx = 0;
	xen_restore_fl(flags);
}

struct multicall_space __xen_mc_entry(unsigned long args)
{
	struct mc_buffer *b = this_mc();
	struct multicall_space ret;
	unsigned int argidx = (b->argidx + 7) & ~7U;

	if (b->mcidx == MC_BATCH || argidx + args >= MC_ARGS) {
		xen_mc_flush();
		argidx = (b->argidx + 7) & ~7U;
	}
	ret.mc = &b->entries[b->mcidx];
	b->mcidx++;
	ret.args = &b->args[argidx];
	b->argidx = argidx + (unsigned int)args;
	BUG_ON(b->argidx >= MC_ARGS);
	return ret;
}

/* Appends to the arguments of the last entry if it is the same hypercall (batched updates). */
struct multicall_space xen_mc_extend_args(unsigned long op, unsigned long size)
{
	struct mc_buffer *b = this_mc();
	struct multicall_space ret = { 0, 0 };

	if (b->mcidx == 0 || b->entries[b->mcidx - 1].op != op)
		return ret;
	if (b->argidx + size >= MC_ARGS)
		return ret;
	ret.mc = &b->entries[b->mcidx - 1];
	ret.args = &b->args[b->argidx];
	b->argidx += (unsigned int)size;
	return ret;
}

void xen_mc_callback(void (*fn)(void *), void *data)
{
	struct mc_buffer *b = this_mc();
	if (b->cbidx == MC_BATCH)
		xen_mc_flush();
	b->callbacks[b->cbidx].fn = fn;
	b->callbacks[b->cbidx].data = data;
	b->cbidx++;
}

void xen_mc_batch(void)
{
	/* Events stay masked until the entry is complete. */
	unsigned long flags = xen_save_fl();
	xen_irq_disable();
	this_mc()->irq_flags = flags;
}

void xen_mc_issue(u32 mode)
{
	if ((paravirt_get_lazy_mode() & mode) == 0)
		xen_mc_flush();
	xen_restore_fl(this_mc()->irq_flags);
}

/* -- pv_cpu_ops (enlighten_pv.c) ---------------------------------------------------------------- */

#define X86_CR0_TS (1UL << 3)
#define X86_CR4_PSE (1UL << 4)
#define X86_CR4_PGE (1UL << 7)
#define X86_CR4_PCE (1UL << 8)

unsigned long xen_get_debugreg(int reg)
{
	return HYPERVISOR_get_debugreg(reg);
}

void xen_set_debugreg(int reg, unsigned long val)
{
	HYPERVISOR_set_debugreg(reg, val);
}

unsigned long xen_read_cr0(void)
{
	unsigned long cr0 = this_cpu_read_8(PCPU_XEN_CR0_VALUE);
	if (unlikely(cr0 == 0)) {
		asm volatile("mov %%cr0, %0" : "=r"(cr0)); /* traps once; Xen emulates it */
		this_cpu_write_8(PCPU_XEN_CR0_VALUE, cr0);
	}
	return cr0;
}

void xen_write_cr0(unsigned long cr0)
{
	this_cpu_write_8(PCPU_XEN_CR0_VALUE, cr0);
	/* Only CR0.TS is the guest's to change. */
	struct multicall_space mcs = xen_mc_entry(0);
	MULTI_fpu_taskswitch(mcs.mc, (cr0 & X86_CR0_TS) != 0);
	xen_mc_issue(PARAVIRT_LAZY_CPU);
}

void xen_write_cr4(unsigned long cr4)
{
	cr4 &= ~(X86_CR4_PGE | X86_CR4_PSE | X86_CR4_PCE);
	asm volatile("mov %0, %%cr4" : : "r"(cr4) : "memory"); /* traps; Xen validates */
}

/* PV guests have no local APIC: the TPR accesses trap and Xen emulates them. */
unsigned long xen_read_cr8(void)
{
	unsigned long val;
	asm volatile("mov %%cr8, %0" : "=r"(val));
	return val;
}

void xen_write_cr8(unsigned long cr8)
{
	asm volatile("mov %0, %%cr8" : : "r"(cr8) : "memory");
}

void xen_cpuid(unsigned int *ax, unsigned int *bx, unsigned int *cx, unsigned int *dx)
{
	unsigned int leaf = *ax, maskebx = ~0U, maskecx = ~0U, maskedx = ~0U;

	if (leaf == 1) {
		/* What a PV guest must not use: x2APIC and MONITOR/MWAIT; APIC, ACPI, ACC, MTRR, MCE, MCA. */
		maskecx = ~((1U << 21) | (1U << 3));
		maskedx = ~((1U << 9) | (1U << 22) | (1U << 29) | (1U << 12) | (1U << 7) | (1U << 14));
	} else if (leaf == 0xb) {
		maskebx = 0; /* no extended topology */
	}
	/* XEN_EMULATE_PREFIX: ud2a; .ascii "xen"; then cpuid, so Xen filters the result. */
	asm volatile(".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e\n\tcpuid"
		     : "=a"(*ax), "=b"(*bx), "=c"(*cx), "=d"(*dx)
		     : "0"(*ax), "2"(*cx));
	*bx &= maskebx;
	*cx &= maskecx;
	*dx &= maskedx;
}

void xen_load_gdt(const struct desc_ptr *dtr)
{
	unsigned long va = dtr->address, size = dtr->size + 1UL;
	unsigned long pages = (size + PAGE_SIZE - 1) / PAGE_SIZE;
	unsigned long frames[16];

	BUG_ON(pages > 16);
	for (unsigned long f = 0; f < pages; f++) {
		unsigned long page = (va & ~(PAGE_SIZE - 1)) + f * PAGE_SIZE;
		frames[f] = virt_to_mfn((void *)page);
		/* Xen only takes read-only GDT frames. */
		HYPERVISOR_update_va_mapping(page, (frames[f] << PAGE_SHIFT) | PAGE_KERNEL_RO, 0);
	}
	if (HYPERVISOR_set_gdt(frames, (int)(size / sizeof(struct desc_struct))))
		BUG();
}

/* Translates one IDT gate into a trap_info entry; returns 0 for a gate Xen should not see. */
static int cvt_gate_to_trap(int vector, const gate_desc *val, struct trap_info *info)
{
	if (!val->p || (val->type != 0xe && val->type != 0xf)) /* 64-bit interrupt or trap gate */
		return 0;
	info->address = ((unsigned long)val->offset_high << 32) | ((unsigned long)val->offset_middle << 16) |
			val->offset_low;
	info->cs = val->segment;
	info->flags = (u8)val->dpl;
	if (val->type == 0xe)
		info->flags |= 1 << 2; /* interrupt gate: mask events on entry */
	info->vector = (u8)vector;
	return 1;
}

static struct trap_info trap_table[257];
static struct desc_ptr xen_current_idt;

void xen_load_idt(const struct desc_ptr *dtr)
{
	const gate_desc *desc = (const gate_desc *)dtr->address;
	unsigned int count = (dtr->size + 1U) / sizeof(gate_desc), n = 0;

	xen_current_idt = *dtr;
	for (unsigned int i = 0; i < count && i < 256; i++)
		n += cvt_gate_to_trap((int)i, &desc[i], &trap_table[n]);
	trap_table[n].address = 0;
	if (HYPERVISOR_set_trap_table(trap_table))
		BUG();
}

void xen_write_idt_entry(gate_desc *dt, int entrynum, const gate_desc *g)
{
	struct trap_info info[2];
	extern void native_write_idt_entry(gate_desc *idt, int entrynum, const gate_desc *gate);

	native_write_idt_entry(dt, entrynum, g);
	if ((unsigned long)dt >= xen_current_idt.address &&
	    (unsigned long)dt < xen_current_idt.address + xen_current_idt.size + 1) {
		info[1].address = 0;
		if (cvt_gate_to_trap(entrynum, g, &info[0]))
			if (HYPERVISOR_set_trap_table(info))
				BUG();
	}
}

void xen_set_ldt(const void *addr, unsigned int entries)
{
	struct multicall_space mcs = xen_mc_entry(sizeof(struct mmuext_op));
	struct mmuext_op *op = mcs.args;
	op->cmd = MMUEXT_SET_LDT;
	op->arg1.linear_addr = (unsigned long)addr;
	op->arg2.nr_ents = entries;
	MULTI_mmuext_op(mcs.mc, op, 1, 0, DOMID_SELF);
	xen_mc_issue(PARAVIRT_LAZY_CPU);
}

unsigned long xen_store_tr(void)
{
	return 0; /* Xen keeps the TSS; a PV guest has no task register */
}

static void load_TLS_descriptor(struct thread_struct *t, unsigned int cpu, unsigned int i)
{
	struct desc_struct *gdt = per_cpu_area((int)cpu)->gdt;
	u64 maddr = virt_to_machine(&gdt[GDT_ENTRY_TLS_MIN + i]);
	struct multicall_space mc = __xen_mc_entry(0);
	u64 desc;
	__builtin_memcpy(&desc, &t->tls_array[i], sizeof(desc));
	MULTI_update_descriptor(mc.mc, maddr, desc);
}

void xen_load_tls(struct thread_struct *t, unsigned int cpu)
{
	xen_mc_batch();
	for (unsigned int i = 0; i < GDT_ENTRY_TLS_ENTRIES; i++)
		load_TLS_descriptor(t, cpu, i);
	xen_mc_issue(PARAVIRT_LAZY_CPU);
}

void xen_load_gs_index(unsigned int idx)
{
	if (HYPERVISOR_set_segment_base(SEGBASE_GS_USER_SEL, idx))
		BUG();
}

void xen_write_ldt_entry(struct desc_struct *dt, int entrynum, const void *ptr)
{
	u64 mach_lp = virt_to_machine(&dt[entrynum]);
	if (HYPERVISOR_update_descriptor(mach_lp, *(const u64 *)ptr))
		BUG();
}

void xen_write_gdt_entry(struct desc_struct *dt, int entry, const void *desc, int type)
{
	switch (type) {
	case DESC_LDT:
	case DESC_TSS:
		break; /* Xen owns the TSS and installs LDTs with MMUEXT_SET_LDT */
	default: {
		u64 maddr = virt_to_machine(&dt[entry]);
		if (HYPERVISOR_update_descriptor(maddr, *(const u64 *)desc))
			BUG();
	}
	}
}

static void set_aliased_prot(void *v, pgprot_t prot)
{
	unsigned long va = (unsigned long)v & ~(PAGE_SIZE - 1);
	pte_t pte = (virt_to_mfn((void *)va) << PAGE_SHIFT) | prot;
	if (HYPERVISOR_update_va_mapping(va, pte, 0))
		BUG();
}

/* LDT pages must be read-only before Xen accepts them. */
void xen_alloc_ldt(struct desc_struct *ldt, unsigned int entries)
{
	const unsigned int per_page = PAGE_SIZE / sizeof(struct desc_struct);
	for (unsigned int i = 0; i < entries; i += per_page)
		set_aliased_prot(ldt + i, PAGE_KERNEL_RO);
}

void xen_free_ldt(struct desc_struct *ldt, unsigned int entries)
{
	const unsigned int per_page = PAGE_SIZE / sizeof(struct desc_struct);
	for (unsigned int i = 0; i < entries; i += per_page)
		set_aliased_prot(ldt + i, PAGE_KERNEL);
}

void xen_load_sp0(unsigned long sp0)
{
	struct multicall_space mcs = xen_mc_entry(0);
	MULTI_stack_switch(mcs.mc, __KERNEL_DS, sp0);
	xen_mc_issue(PARAVIRT_LAZY_CPU);
	this_cpu_write_8(PCPU_TSS + 4, sp0);
}

void xen_set_iopl_mask(unsigned int mask)
{
	struct physdev_set_iopl set_iopl;
	/* Force the change at ring 0. */
	set_iopl.iopl = (mask == 0) ? 1 : (mask >> 12) & 3;
	HYPERVISOR_physdev_op(PHYSDEVOP_set_iopl, &set_iopl);
}

extern u64 native_read_msr_safe(unsigned int msr, int *err);
extern int native_write_msr_safe(unsigned int msr, unsigned int low, unsigned int high);
extern u64 native_read_pmc(int counter);

u64 xen_read_msr_safe(unsigned int msr, int *err)
{
	u64 val = native_read_msr_safe(msr, err);
	if (msr == MSR_IA32_APICBASE) {
		unsigned int ax = 1, bx, cx = 0, dx;
		xen_cpuid(&ax, &bx, &cx, &dx);
		if (!(cx & (1U << 21)))
			val &= ~X2APIC_ENABLE;
	}
	return val;
}

int xen_write_msr_safe(unsigned int msr, unsigned int low, unsigned int high)
{
	unsigned long base = ((u64)high << 32) | low;
	int ret = 0, which;

	switch (msr) {
	case MSR_FS_BASE:
		which = SEGBASE_FS;
		goto set;
	case MSR_KERNEL_GS_BASE:
		which = SEGBASE_GS_USER;
		goto set;
	case MSR_GS_BASE:
		which = SEGBASE_GS_KERNEL;
	set:
		if (HYPERVISOR_set_segment_base(which, base) != 0)
			ret = -EIO;
		break;
	case MSR_STAR:
	case MSR_CSTAR:
	case MSR_LSTAR:
	case MSR_SYSCALL_MASK:
	case MSR_IA32_SYSENTER_CS:
	case MSR_IA32_SYSENTER_ESP:
	case MSR_IA32_SYSENTER_EIP:
		break; /* Xen owns the fast system-call entry */
	default:
		ret = native_write_msr_safe(msr, low, high);
	}
	return ret;
}

u64 xen_read_msr(unsigned int msr)
{
	int err;
	return xen_read_msr_safe(msr, &err);
}

void xen_write_msr(unsigned int msr, unsigned int low, unsigned int high)
{
	xen_write_msr_safe(msr, low, high);
}

u64 xen_read_pmc(int counter)
{
	return native_read_pmc(counter); /* no PV PMU: Xen emulates rdpmc */
}

void xen_end_context_switch(struct task_struct *next)
{
	xen_mc_flush();
	paravirt_end_context_switch(next);
}

/* -- pv_irq_ops (irq.c) --------------------------------------------------------------------------- */

void xen_safe_halt(void)
{
	/* Blocking unmasks events, so a wake-up cannot be lost between the two. */
	if (HYPERVISOR_sched_op(SCHEDOP_block, 0) != 0)
		BUG();
}

void xen_halt(void)
{
	if (xen_save_fl() == 0) /* events masked: nothing can wake us, so the vCPU goes down */
		HYPERVISOR_vcpu_op(VCPUOP_down, smp_processor_id(), 0);
	else
		xen_safe_halt();
}

/* -- pv_lock_ops (spinlock.c) ---------------------------------------------------------------------- */

void xen_qlock_kick(int cpu)
{
	int port = per_cpu_area(cpu)->kicker_port;
	if (port < 0)
		return; /* the kicker is not set up yet */
	struct evtchn_send send = { .port = (u32)port };
	HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
}

void xen_qlock_wait(u8 *byte, u8 val)
{
	int port = this_cpu()->kicker_port;
	if (port < 0)
		return; /* no kicker yet: just spin */
	xen_clear_port_pending((unsigned int)port);
	barrier();
	/* Check after clearing, so a kick that came in between is not lost. */
	if (READ_ONCE(*byte) != val)
		return;
	u32 ports[1] = { (u32)port };
	struct sched_poll poll = { .ports = ports, .nr_ports = 1, .timeout = 0 };
	HYPERVISOR_sched_op(SCHEDOP_poll, &poll);
}

bool xen_vcpu_stolen(long vcpu)
{
	return per_cpu_area((int)vcpu)->xen_runstate.state == RUNSTATE_runnable;
}
