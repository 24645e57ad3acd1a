"""What every benchmark script records about its run (shared by the scripts).

The scripts run as ``python benchmarks/<name>.py`` from the repository root,
so this folder is on ``sys.path`` and they import this module as ``_meta``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def git_describe() -> str:
    """``git describe --always --dirty`` of the working tree, or ``"unknown"``."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        out = ""
    return out or "unknown"


def run_meta(script: str, argv=None) -> dict:
    """``command``, ``date`` (UTC), ``machine``, ``git`` and torch ``threads``."""
    import torch

    args = argv if argv is not None else sys.argv[1:]
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *args]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "git": git_describe(),
        "threads": torch.get_num_threads(),
    }


def write(out: Path, stem: str, result: dict, markdown: str) -> None:
    """``<stem>.json`` (the result) and ``<stem>.md`` (its table) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown)
