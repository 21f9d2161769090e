"""What produced a result: this package's version and commit, and the machine it ran on.

Recorded by `biogpt reproduce` in every run and shown by `biogpt report`, so that a number
can be traced to the code and the hardware that made it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def package_info() -> dict[str, Any]:
    """{"version", "commit", "dirty"}: the commit and whether the tree differs from it are
    read with git where the package runs from a checkout, else null."""
    try:
        version: str | None = importlib.metadata.version("biogpt")
    except importlib.metadata.PackageNotFoundError:
        version = None
    info: dict[str, Any] = {"version": version, "commit": None, "dirty": None}
    if not (_SOURCE_ROOT / ".git").exists():
        return info
    try:
        commit = subprocess.run(
            ["git", "-C", str(_SOURCE_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(_SOURCE_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return info
    info.update(commit=commit or None, dirty=bool(status.strip()))
    return info


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict[str, Any]:
    """The machine: CPU model, cores this process may use, torch's threads and version, and
    the GPU where torch sees one."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": gpu,
    }
