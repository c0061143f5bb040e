"""Build integration: determinism, write-if-changed, atomicity, --check, depfiles, the template cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

REFERENCE = ROOT.parent / "shared" / "reference"


def test_generated_matches_spec() -> None:
    """CI's proof that generated/ was rebuilt from spec/ and committed."""
    code, out, err = run_cli("build", "--check")
    assert code == 0, out + err


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    """A copy of spec/ and generated/ to build in."""
    shutil.copytree(ROOT / "spec", tmp_path / "spec")
    shutil.copytree(ROOT / "generated", tmp_path / "generated")
    return tmp_path


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every generated file with its mtime (the local build stamp aside)."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".pvgen-stamp.json"
    }


def test_unchanged_build_writes_nothing(workspace: Path) -> None:
    before = _snapshot(workspace / "generated")
    code, out, err = run_cli("build", cwd=workspace)
    assert code == 0, err
    assert out == ""
    assert _snapshot(workspace / "generated") == before


def test_output_is_identical_across_hash_seeds(tmp_path: Path) -> None:
    outputs = []
    for seed in ("0", "1", "12345"):
        target = tmp_path / f"out{seed}"
        shutil.copytree(ROOT / "generated" / "templates", target / "templates")  # the template cache
        environment = dict(os.environ, PYTHONHASHSEED=seed)
        result = subprocess.run(
            [sys.executable, "-m", "pvgen", "build", "-o", str(target)],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        outputs.append({k: v[0] for k, v in _snapshot(target).items()})
    assert outputs[0] == outputs[1] == outputs[2]
    assert {k: v[0] for k, v in _snapshot(ROOT / "generated").items()} == outputs[0]


def test_spec_error_writes_nothing(workspace: Path) -> None:
    irq = workspace / "spec" / "x86_64" / "irq.pvspec"
    irq.write_text(irq.read_text().replace("category patchable;", "category patchabel;", 1))
    (workspace / "spec" / "x86_64" / "cpu.pvspec").write_text(
        (workspace / "spec" / "x86_64" / "cpu.pvspec").read_text().replace('"wbinvd"', '"wbinvd; cli"')
    )
    before = _snapshot(workspace / "generated")
    code, _, err = run_cli("build", cwd=workspace)
    assert code == 1
    assert "unknown category 'patchabel'" in err and "nothing written to generated" in err
    assert _snapshot(workspace / "generated") == before


def test_template_error_is_located_and_writes_nothing(workspace: Path) -> None:
    irq = workspace / "spec" / "x86_64" / "irq.pvspec"
    irq.write_text(irq.read_text().replace('native asm "sti";', 'native asm "sti; movq %rbx, %rcx";'))
    irq.write_text(irq.read_text().replace('native asm "cli";', 'native asm "cli; nonsense %rax";'))
    before = _snapshot(workspace / "generated")
    code, _, err = run_cli("build", cwd=workspace)
    assert code == 1, err
    assert "spec/x86_64/irq.pvspec:" in err and "the assembler rejects this template" in err
    assert _snapshot(workspace / "generated") == before
    irq.write_text(irq.read_text().replace('native asm "cli; nonsense %rax";', 'native asm "cli";'))
    code, _, err = run_cli("build", cwd=workspace)
    assert code == 1
    assert "spec/x86_64/irq.pvspec:" in err and "writes rcx, outside the op's clobbers (rax)" in err


def test_check_reports_stale_outputs(workspace: Path) -> None:
    manifest = workspace / "generated" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"irq_disable"', '"irq_disabled"'))
    (workspace / "generated" / "python" / "pvops_x86_64.py").unlink()
    code, out, _ = run_cli("build", "--check", cwd=workspace)
    assert code == 1
    assert "differs: generated/manifest.json" in out
    assert "missing: generated/python/pvops_x86_64.py" in out
    assert "is stale" in out
    code, out, _ = run_cli("build", cwd=workspace)
    assert code == 0 and "wrote generated/manifest.json" in out
    assert run_cli("build", "--check", cwd=workspace)[0] == 0


def test_depfile_lists_spec_files_and_templates(workspace: Path) -> None:
    code, _, err = run_cli("build", "-M", "build.d", cwd=workspace)
    assert code == 0, err
    depfile = (workspace / "build.d").read_text()
    targets, _, deps = depfile.partition(":")
    assert "generated/manifest.json" in targets
    for spec_file in sorted((workspace / "spec").rglob("*.pvspec")):
        assert str(spec_file.relative_to(workspace)) in deps
    assert "python_layer.py.mako" in deps


def test_a_hand_edited_cache_entry_is_assembled_again(workspace: Path) -> None:
    """A malformed template cache entry is a miss, not a traceback: the text is assembled again."""
    cache = workspace / "generated" / "templates" / "cache.json"
    document = json.loads(cache.read_text())
    entries = document["templates"]["x86_64 as --64"]
    text = next(iter(entries))
    entries[text]["prefixable"] = [[1, 2]]  # two fields where three belong
    cache.write_text(json.dumps(document))
    code, _, err = run_cli("build", cwd=workspace)
    assert code == 0, err
    assert "Traceback" not in err
    assert json.loads(cache.read_text())["templates"]["x86_64 as --64"][text]["prefixable"] != [[1, 2]]


def test_cached_templates_need_no_assembler(workspace: Path) -> None:
    """With every template text in the cache, the build runs on a machine without binutils."""
    environment = dict(os.environ, PATH=str(Path(sys.executable).parent))
    result = subprocess.run(
        [sys.executable, "-m", "pvgen", "build", "--check"],
        cwd=workspace,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cpu = workspace / "spec" / "ia64" / "cpu.pvspec"
    cpu.write_text(cpu.read_text().replace('native asm "fc r8";', 'native asm "fc r9";'))
    result = subprocess.run(
        [sys.executable, "-m", "pvgen", "build"], cwd=workspace, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "spec/ia64/cpu.pvspec:" in result.stderr
    assert "install the Debian package binutils-ia64-linux-gnu" in result.stderr


def test_templates_match_the_reference_bytes() -> None:
    reference = {t["asm"]: t["bytes"] for t in json.loads((REFERENCE / "x86_native_templates.json").read_text())}
    templates = json.loads((ROOT / "generated" / "templates" / "x86_64" / "native.json").read_text())["templates"]
    matched = 0
    for template in templates:
        if template["asm"] in reference:
            assert template["bytes"] == reference[template["asm"]], template["owner"]
            matched += 1
    assert matched >= 15
    identity = next(t for t in templates if t["owner"] == "(identity)")
    assert identity["bytes"] == "4889f8"
    manifest = json.loads((ROOT / "generated" / "manifest.json").read_text())
    assert manifest["format"] == "pvgen-manifest"
    irq_disable = next(
        e for e in manifest["entries"] if (e["arch"], e["op"], e["hypervisor"]) == ("x86_64", "irq_disable", "native")
    )
    assert irq_disable["bytes"] == "fa" and irq_disable["location"].startswith("spec/x86_64/irq.pvspec:")


def test_every_generated_file_has_a_banner() -> None:
    for path in (ROOT / "generated").rglob("*"):
        if path.is_file() and path.suffix in (".h", ".c", ".py", ".S"):
            head = path.read_text()[:400]
            assert "Generated by pvgen" in head and "spec/" in head, path


def test_black_runs_only_on_changed_python(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pvgen import build

    formatted: list[str] = []
    original = build._black

    def counting(texts: list[str]) -> list[str]:
        formatted.extend(texts)
        return original(texts)

    monkeypatch.setattr(build, "_black", counting)
    assert run_cli("build", cwd=workspace)[0] == 0
    assert formatted == []  # nothing changed since the committed build
    arches = workspace / "spec" / "arches.pvspec"
    text = arches.read_text()
    assert ',\n        "0f1f840000000000";' in text
    arches.write_text(text.replace(',\n        "0f1f840000000000";', ";", 1))
    code, out, _ = run_cli("build", cwd=workspace)
    assert code == 0 and "wrote generated/python/pvops_x86_64.py" in out
    assert len(formatted) == 1 and "0f1f840000000000" not in formatted[0]  # ia64's layer was not reformatted


def test_up_to_date_build_is_skipped_and_notices_edits(workspace: Path) -> None:
    assert run_cli("build", cwd=workspace)[0] == 0
    assert (workspace / "generated" / ".pvgen-stamp.json").is_file()
    assert run_cli("build", cwd=workspace) == (0, "", "")
    manifest = workspace / "generated" / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")
    code, out, _ = run_cli("build", cwd=workspace)
    assert code == 0 and out == "wrote generated/manifest.json\n"


def test_removed_outputs_are_deleted(workspace: Path) -> None:
    extra = workspace / "generated" / "c" / "old_arch" / "pvops.h"
    extra.parent.mkdir(parents=True)
    extra.write_text("/* from an arch the spec no longer has */\n")
    listing = workspace / "generated" / "outputs.txt"
    listing.write_text(listing.read_text() + "c/old_arch/pvops.h\n")
    code, out, _ = run_cli("build", "--check", cwd=workspace)
    assert code == 1 and "extra:   generated/c/old_arch/pvops.h" in out
    code, out, _ = run_cli("build", cwd=workspace)
    assert code == 0 and "wrote generated/c/old_arch/pvops.h" in out
    assert not extra.exists()
