/*
 * A paravirtualised .S that masks interrupts with a raw `rsm psr.i` instead of
 * RSM_PSR_I: the checking instance (pvchk) must refuse to assemble it.
 */
#include "inst.h"

	.text
	.global mask_interrupts
mask_interrupts:
	MOV_FROM_IPSR(p0, r16)
	;;
	rsm psr.i
	;;
	br.ret.sptk.many rp
