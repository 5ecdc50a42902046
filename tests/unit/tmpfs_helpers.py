"""A small tmpfs a test mounts as a state directory (root only), to fill the disk on purpose."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """Mount a tmpfs of `size` at path (created), unmount it lazily afterwards; skips unless root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        # Lazy: a server or a failed test may still hold a file open on it.
        subprocess.run(["umount", "-l", str(path)], check=True)
