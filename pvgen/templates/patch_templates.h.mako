${banner}
/* Patch templates of ${arch} under ${hypervisor}: the bytes the patcher may copy into a site. */
#ifndef ${guard}
#define ${guard}

struct pvgen_template {
	long index;			/* op slot (x86) or patch type (IA64); -1: the identity template */
	const unsigned char *bytes;
	unsigned int length;
	unsigned char fits_site;	/* fits an unpatched call site */
	unsigned char out_of_line;	/* never inlined: always called */
};

% for v in views:
/* ${v.owner}: ${"; ".join(v.instructions)} (${v.location}, ${v.impl_location}) */
static const unsigned char ${v.symbol}[${v.length}] = {
	${", ".join(v.code)}
};

% endfor
static const struct pvgen_template ${table}[] = {
% for v in views:
	{ ${v.index}, ${v.symbol}, ${v.length}, ${1 if v.fits_site else 0}, ${1 if v.out_of_line else 0} },
% endfor
};

#endif /* ${guard} */
