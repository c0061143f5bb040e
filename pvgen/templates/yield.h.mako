${banner}
/*
 * Paravirt yielding on ${arch}: where Linux leaves a job to the hypervisor. The IOMMU_INIT
 * table is already in dependency order (each entry after the one whose detect routine it
 * depends on), so a boot runs it front to back: detect, early init if detected, and stop
 * after a detected entry marked IOMMU_FINISH_IF_DETECTED.
 */
#ifndef ${guard}
#define ${guard}

#ifndef __ASSEMBLY__

#define IOMMU_FINISH_IF_DETECTED ${finish_flag}

struct iommu_table_entry {
	int (*detect)(void);
	int (*depend)(void);
	void (*early_init)(void);
	void (*late_init)(void);
	int flags;
};

% for name in detects:
int ${name}(void) __attribute__((weak));
% endfor
% for name in inits:
void ${name}(void) __attribute__((weak));
% endfor

static const struct iommu_table_entry pvgen_iommu_table[] = {
% for e in entries:
	/* ${e.detect}: ${e.note} (${e.location}) */
	{ ${e.detect}, ${e.depends}, ${e.early_init}, ${e.late_init}, ${e.flags} },
% endfor
};

% for y in yields:
/* ${y.name}: ${y.function} bails out when paravirt_enabled(); yields under: ${y.hypervisors} (${y.location}) */
static inline int pvgen_yield_${y.name}(int paravirt_enabled)
{
	return paravirt_enabled != 0;
}

% endfor
#endif /* __ASSEMBLY__ */

#endif /* ${guard} */
