"""``scripts/demo.sh`` on a machine whose Python is too old: one line, before pip runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo.sh"


def _fresh_clone(tmp_path: Path) -> Path:
    """The script alone in a directory with no .venv, as in a fresh clone."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "demo.sh")
    return tmp_path / "scripts" / "demo.sh"


def _run(script: Path, python: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script)],
        env={"PATH": "/usr/bin:/bin", "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_python_3_10_is_refused_in_one_line_before_pip(tmp_path: Path) -> None:
    script = _fresh_clone(tmp_path)
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\n# answers the version question as Python 3.10 does\necho 3.10\n")
    old.chmod(0o755)

    result = _run(script, str(old))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: the demo needs Python ≥ 3.11; {old} is Python 3.10 "
        "(set PYTHON=python3.11 or newer)"
    ]
    assert not (tmp_path / ".venv").exists()


def test_a_missing_python_is_one_line(tmp_path: Path) -> None:
    result = _run(_fresh_clone(tmp_path), "python3.99")

    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: cannot run python3.99: the demo needs Python ≥ 3.11 "
        "(set PYTHON=python3.11 or newer)"
    )
