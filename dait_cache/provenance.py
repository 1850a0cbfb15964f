"""Where a number came from: package versions, the tool's git commit, host, workspace and device,
recorded in every ``config.json`` (nothing time-dependent: the same command writes the same bytes)."""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "timm", "open_clip_torch", "h5py", "numpy", "dait-cache")


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes to tracked files), or None when
    the tool does not run from a git checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name with its family and model numbers (Linux's ``cpuinfo``: a cloud
    machine may name two generations alike, "AMD EPYC" for Zen 1 and Zen 3, whose float results
    differ), else what :mod:`platform` knows."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if fields:  # the first processor's block ends
                    break
                continue
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    numbers = [
        f"{label} {fields[key]}" for label, key in (("family", "cpu family"), ("model", "model")) if fields.get(key)
    ]
    return f"{name} ({', '.join(numbers)})" if numbers else name


def cpu_kernels() -> str:
    """The instruction set torch's CPU kernels use here (AVX512, AVX2, ...): float results of CPU
    training differ between them, and a few ulps grow into other accuracies over an epoch."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model and kernel instruction set (``AMD EPYC, AVX512 kernels``)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_name()}, {cpu_kernels()} kernels"


def provenance(workdir: str, device: str) -> dict:
    """The record for ``config.json``; ``device`` is the resolved one (cpu, cuda, cuda:1)."""
    return {
        "versions": dict(_versions()),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "workdir": str(Path(workdir).resolve()),
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_kernels": cpu_kernels(),
        "threads": _threads(),
    }


def torch_version() -> str | None:
    return _versions()["torch"]


def _threads() -> int:
    import torch

    return torch.get_num_threads()
