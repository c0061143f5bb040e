"""Exit codes and usage errors of the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, run_cli


def test_check_clean_spec_exits_0() -> None:
    assert run_cli("check") == (0, "", "")
    assert run_cli("check", "spec")[0] == 0
    assert run_cli("check", "spec/pvops.pvspec")[0] == 0


def test_check_spec_error_exits_1() -> None:
    code, _, err = run_cli("check", "tests/errors/unknown_category.pvspec")
    assert code == 1 and err.endswith("1 error generated.\n")


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run_cli("check", "no/such/file.pvspec")
    assert code == 2 and "no such file or directory: no/such/file.pvspec" in err
    code, _, err = run_cli("check", cwd=tmp_path)
    assert code == 2 and "no such file or directory: spec" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("check", "empty", cwd=tmp_path)
    assert code == 2 and "no .pvspec files" in err


def test_unknown_command_and_option_exit_2() -> None:
    assert run_cli("frobnicate")[0] == 2
    assert run_cli("check", "--bogus")[0] == 2
    assert run_cli("dump")[0] == 2  # --json is required


def test_non_utf8_file_is_located(tmp_path: Path) -> None:
    (tmp_path / "bad.pvspec").write_bytes(b"arch a {\n  x \xff;\n}\n")
    code, _, err = run_cli("check", "bad.pvspec", cwd=tmp_path)
    assert code == 1 and err.startswith("bad.pvspec:2:5: error: file is not valid UTF-8")


def test_python_dash_m_and_console_script_agree() -> None:
    result = subprocess.run([sys.executable, "-m", "pvgen", "check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_disasm_x86_and_errors() -> None:
    code, out, _ = run_cli("disasm", "--arch", "x86_64", "--hex", "fa 9c58 0f22df")
    assert code == 0 and out.splitlines()[0].endswith("cli") and "movq %rdi, %cr3" in out
    assert run_cli("disasm", "--arch", "ia64", "--hex", "0180")[0] == 1
    assert run_cli("disasm", "--arch", "ia64", "--hex", "zz")[0] == 2
    assert run_cli("disasm", "--arch", "sparc", "--hex", "00")[0] == 2


def test_disasm_ia64_matches_objdump(tmp_path: Path) -> None:
    import shutil

    if shutil.which("ia64-linux-gnu-objdump") is None:
        import pytest

        pytest.skip("ia64-linux-gnu-objdump is not installed (Debian: binutils-ia64-linux-gnu)")
    code_hex = json.loads((ROOT / "generated" / "templates" / "ia64" / "xen.json").read_text())["templates"][0]["bytes"]
    blob = tmp_path / "code.bin"
    blob.write_bytes(bytes.fromhex(code_hex))
    code, out, _ = run_cli("disasm", "--arch", "ia64", str(blob))
    assert code == 0
    dump = subprocess.run(
        ["ia64-linux-gnu-objdump", "-D", "-b", "binary", "-m", "ia64", str(blob)], capture_output=True, text=True
    ).stdout
    theirs = [line for line in dump.splitlines() if re.match(r"\s+[0-9a-f]+:\t", line)]
    assert out.splitlines() == theirs


def test_run_refuses_bad_images_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "text.elf").write_text("not an image\n")
    code, _, err = run_cli("run", "text.elf", cwd=tmp_path)
    assert code == 1 and err == "pvgen: error: text.elf is not an ELF image\n"
    for machine, name in ((62, "x86.elf"), (50, "ia64.elf")):
        # A truncated ELF64 header: ident, e_type ET_EXEC, e_machine, and nothing after.
        header = b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")
        (tmp_path / name).write_bytes(header + bytes(10))
        code, _, err = run_cli("run", name, cwd=tmp_path)
        assert code == 1 and err.startswith(f"pvgen: error: {name}: ") and "Traceback" not in err
    assert run_cli("run", "missing.elf", cwd=tmp_path)[0] == 2
    assert run_cli("run", "ia64.elf", "--hypervisor", "kvm", cwd=tmp_path)[0] == 2
