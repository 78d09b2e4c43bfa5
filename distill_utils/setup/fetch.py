"""Getting a dataset onto this machine: what ``make data`` (so ``make run`` and ``make test``) runs.

In order: the files found offline (``data.find_files``: ``data/``, then Debian's package); else, on
Debian or Ubuntu as root or with passwordless sudo, ``apt-get install`` of the Debian package; else
torchvision's download into ``data/``, checked against the SHA-256 sums of ``data/README.md``. Offline
(``OFFLINE=1``) it only looks, and a missing dataset is the error notebook 00 shows. Every call that
reaches outside the process goes through ``System``, so tests replace them. Notebook 00 checks the result.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distill_utils.data import DATASETS, DOWNLOAD_SHA256, DataError, download_dataset, find_files, missing_message

OFF = ("", "0", "false", "no", "off")


def _no_euid() -> int:
    return -1  # Windows: no user ids, and no apt-get


@dataclass(frozen=True)
class System:
    """The calls to the machine; tests give fakes (no network, no root, no package installed)."""
    run: Callable = subprocess.run
    euid: Callable[[], int] = getattr(os, "geteuid", _no_euid)
    which: Callable = shutil.which
    os_release: Path = Path("/etc/os-release")
    download: Callable = download_dataset
    say: Callable = print
    environ: dict = field(default_factory=lambda: dict(os.environ))


def offline_requested(environ=None) -> bool:
    """True when ``OFFLINE`` is set to anything but empty, 0, false, no or off."""
    return (os.environ if environ is None else environ).get("OFFLINE", "").strip().lower() not in OFF


def debian_like(os_release: Path) -> bool:
    """Whether ``/etc/os-release`` names Debian or Ubuntu (or a derivative of either)."""
    try:
        text = os_release.read_text()
    except OSError:
        return False
    ids = set()
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE"):
            ids.update(value.strip().strip("\"'").lower().split())
    return bool(ids & {"debian", "ubuntu"})


def apt_prefix(system: System) -> list[str] | None:
    """How this process may run apt-get: ``[]`` as root, ``["sudo", "-n"]`` with passwordless sudo,
    None where it may not (not Debian/Ubuntu, no apt-get, or a password would be asked)."""
    if not debian_like(system.os_release) or not system.which("apt-get"):
        return None
    if system.euid() == 0:
        return []
    if system.which("sudo"):
        probe = system.run(["sudo", "-n", "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["sudo", "-n"]
    return None


def apt_install(package: str, prefix: list[str], system: System) -> str | None:
    """``apt-get install -y package``; when that fails (a fresh container has no package lists),
    ``apt-get update`` and once more. None on success, else the end of apt-get's error output."""
    env = {**system.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", package]
    done = system.run(install, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        system.run([*prefix, "apt-get", "update", "-q"], capture_output=True, text=True, env=env)
        done = system.run(install, capture_output=True, text=True, env=env)
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
    return " / ".join(lines[-2:]) or f"exit status {done.returncode}"


def get_dataset(name: str = "fashion_mnist", root="data", offline: bool = False, download_only: bool = False,
                system: System | None = None) -> tuple[str, str]:
    """Make sure ``name``'s files are on this machine: ``(where they are, how they got there)``,
    how being ``"found"``, ``"apt-get"`` or ``"download"``. Says in one line what it installs or
    downloads. ``offline``: only look. ``download_only``: skip apt-get. Raises ``DataError``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    system = system or System()
    found = find_files(name, root)
    if found is not None:
        return found[0], "found"
    if offline:
        raise DataError(missing_message(name, root) + "\n(OFFLINE is set: nothing was installed or downloaded.)")
    spec, apt_failed = DATASETS[name], ""
    prefix = None if download_only or not spec.debian_package else apt_prefix(system)
    if prefix is not None:
        command = " ".join([*prefix, "apt-get", "install", "-y", spec.debian_package])
        system.say(f"dataset {name!r} is in no offline place: installing Debian's {spec.debian_package} "
                   f"with `{command}` (OFFLINE=1 never does)")
        problem = apt_install(spec.debian_package, prefix, system)
        found = find_files(name, root)
        if found is not None:
            return found[0], "apt-get"
        apt_failed = f"apt-get failed first: {problem or f'{spec.debian} still lacks the files'}"
    checked = "checked against data/README.md's SHA-256 sums" if name in DOWNLOAD_SHA256 else "checked by its MD5 sums"
    system.say(f"dataset {name!r} is in no offline place: downloading it with torchvision into "
               f"{Path(root) / spec.folder}, {checked}" + (f" ({apt_failed})" if apt_failed else ""))
    try:
        system.download(name, root)
        found = find_files(name, root)
        if found is None:
            raise DataError(f"the download of {name!r} ended without its files.\n" + missing_message(name, root))
    except DataError as err:
        raise DataError("\n".join(filter(None, [str(err), apt_failed]))) from None
    return found[0], "download"
