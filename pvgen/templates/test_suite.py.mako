${banner}
"""Generated checks of every ${arch} op under ${hypervisor}, run on pvgen's machine models.

Run with `python -m pytest generated/tests`; each failure names the op and its spec line.
"""

from pathlib import Path

import pytest

from pvgen.runtime import harness

harness.use(Path(__file__).resolve().parent.parent)

ARCH = ${repr(arch)}
HYPERVISOR = ${repr(hypervisor)}
TEMPLATED = ${repr(templated)}
# The templated ops that return to their site (jump-type ops like iret are not run as calls).
RETURNING = ${repr(returning)}
NATIVE_BODIES = ${repr(native_bodies)}
# (op, expression, spec location)
EFFECTS = ${repr(effects)}


@pytest.mark.parametrize("op", TEMPLATED)
def test_template_decodes_to_its_instructions(op):
    if not harness.supports("decodes", ARCH):
        pytest.skip("the {} model cannot run this check yet".format(ARCH))
    harness.check_decodes(ARCH, HYPERVISOR, op)


@pytest.mark.parametrize("op", TEMPLATED)
def test_template_fits_its_site(op):
    if not harness.supports("fits", ARCH):
        pytest.skip("the {} model cannot run this check yet".format(ARCH))
    harness.check_fits(ARCH, HYPERVISOR, op)


@pytest.mark.parametrize("op", RETURNING)
def test_template_respects_its_clobbers(op):
    if not harness.supports("clobbers", ARCH):
        pytest.skip("the {} model cannot run this check yet".format(ARCH))
    harness.check_clobbers(ARCH, HYPERVISOR, op)


@pytest.mark.parametrize("op", RETURNING)
def test_patched_site_matches_the_indirect_call(op):
    if not harness.supports("site", ARCH):
        pytest.skip("the {} model cannot run this check yet".format(ARCH))
    harness.check_site_equivalence(ARCH, HYPERVISOR, op)


@pytest.mark.parametrize("op", NATIVE_BODIES)
def test_native_template_matches_the_native_function(op):
    if not harness.supports("native_body", ARCH):
        pytest.skip("the {} model cannot run this check yet".format(ARCH))
    harness.check_native_body(ARCH, op)


@pytest.mark.parametrize("op, expression, location", EFFECTS)
def test_declared_effect(op, expression, location):
    if not harness.can_check_effect(ARCH, HYPERVISOR, op):
        pytest.skip(f"{op} under {HYPERVISOR} is a call into the guest library; see {location}")
    harness.check_effect(ARCH, HYPERVISOR, op, expression)


def test_mask_and_yielding():
    harness.check_mask_and_yield(ARCH, HYPERVISOR)
