"""The README's two commands build .venv themselves: on a disk too small for it, they say so in
one line before pip starts (pip's own error comes minutes in, after a half-built .venv)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_make_refuses_a_disk_too_small_for_the_venv_before_building_it(tmp_path):
    venv = tmp_path / "fresh" / ".venv"
    need = shutil.disk_usage(ROOT).total / 2**30 + 1  # more than this disk could ever free
    done = subprocess.run(
        ["make", "-s", "venv", f"VENV={venv}", f"VENV_GIB={need:.0f}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,  # past the check, make would build a whole .venv
    )
    assert done.returncode != 0
    first = done.stderr.splitlines()[0]
    assert first.startswith("make: ") and f"needs about {need:.0f} GiB" in first and "free some disk" in first
    assert not venv.parent.exists()  # nothing half-built
