/*
 * A page-table walk and update: map a run of pages in a four-level table built in
 * memory, read entries back through the accessors, flush each changed translation, and
 * switch to the new root every few updates, as the kernel's mapping paths do.
 */
#include "workload.h"

#define ENTRIES 512
#define UPDATES 256
#define PRESENT 0x1UL
#define WRITE 0x2UL
#define FRAME_MASK 0x000ffffffffff000UL
/* A table entry holds a frame address; the kernel reaches the frame through its direct
 * map. Here the "physical" frame is the kernel address without its sign extension. */
#define FRAME_TO_VIRT(entry) ((entry & FRAME_MASK) | 0xfff0000000000000UL)

static pte_t ptes[ENTRIES] __attribute__((aligned(4096)));
static unsigned long pmds[ENTRIES] __attribute__((aligned(4096)));
static unsigned long root[ENTRIES] __attribute__((aligned(4096)));

WORKLOAD_ENTRY
{
	unsigned long seed = 12345, checksum = 0;
	unsigned long old_root = pv_read_cr3();

	root[0] = ((unsigned long)pmds & FRAME_MASK) | PRESENT | WRITE;
	pmds[0] = ((unsigned long)ptes & FRAME_MASK) | PRESENT | WRITE;
	for (unsigned int i = 0; i < UPDATES; i++) {
		seed = mix(seed);
		unsigned int index = seed % ENTRIES;
		unsigned long frame = (seed >> 12) & 0xfffffUL;
		/* Walk the upper levels the way a fault handler would. */
		unsigned long *pmd = (unsigned long *)FRAME_TO_VIRT(root[0]);
		pte_t *table = (pte_t *)FRAME_TO_VIRT(pmd[0]);
		pte_t entry = pv_make_pte((frame << 12) | PRESENT | WRITE);
		pv_set_pte(&table[index], entry);
		checksum += pv_pte_val(table[index]) >> 12;
		pv_flush_tlb_one_user((unsigned long)index << 12);
		if ((i & 31) == 31)
			pv_write_cr3(((unsigned long)root & FRAME_MASK) + (i & 32));
	}
	pv_write_cr3(old_root);
	return checksum;
}
