"""Fresh virtual environments with packages pip-installed into them, for tests of installed plugins.

A venv sees this interpreter's packages (any2ds, its dependencies, pytest), so
installing into it is offline and fast: ``--no-deps --no-build-isolation --no-index``.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

TIMEOUT = 120
REPO = Path(__file__).resolve().parent.parent


class Venv:
    """A virtual environment at ``root``; ``run`` and ``any2ds`` execute its Python."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"

    @classmethod
    def create(cls, root: Path) -> Venv:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)],
                       check=True, timeout=TIMEOUT)
        venv = cls(root)
        if sys.prefix != sys.base_prefix:
            # This interpreter is a venv itself: --system-site-packages reaches only the base
            # interpreter's packages, so add this one's (their .pth files, editable installs, too).
            purelib = venv.run("-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
            paths = [*site.getsitepackages(), sysconfig.get_path("purelib")]
            Path(purelib, "_parent_site.pth").write_text(
                "".join(f"import site; site.addsitedir({path!r})\n" for path in dict.fromkeys(paths)))
        return venv

    @classmethod
    def with_any2ds(cls, root: Path, *projects: Path) -> Venv:
        """A venv with any2ds itself pip-installed from a copy of this repository's sources
        (pip builds in the source tree), so that it has its own ``bin/any2ds``; then ``projects``."""
        source = root.parent / f"{root.name}-any2ds-source"
        for name in ("any2ds", "plugins"):
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, source / name)
        venv = cls.create(root)
        venv.install(source, *projects)
        return venv

    def install(self, *projects: Path) -> None:
        result = self.run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                          *map(str, projects))
        assert result.returncode == 0, result.stderr

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run this venv's Python; by default in the venv's folder, away from the repository's files."""
        environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})}
        return subprocess.run([str(self.python), *args], check=False, capture_output=True, text=True,
                              env=environment, cwd=cwd or self.root, timeout=TIMEOUT)

    def any2ds(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The ``any2ds`` command of this venv (``python -m any2ds``: any2ds itself is inherited)."""
        return self.run("-m", "any2ds", *args, env=env)
