"""A workshop kit: what 30 laptops need to install and run the tutorial with no internet.

``python -m distill_utils kit`` (``make kit``) writes one folder and, per platform, a tarball of
what a laptop of that platform needs (README "Running a workshop")::

    kit/
      README.txt                   what to do on each platform, and without make
      install-linux-x86_64.sh      each: a .venv in distill-lab/, pip install --no-index --find-links
      install-macos-arm64.sh       wheels/<platform>, then notebook 00's checks, offline
      install-windows-x86_64.cmd
      wheels/<platform>/           every requirement as a wheel for one Python version
      distill-lab/                 the project (git's files), the dataset's files, the pretrained teacher
    kit-<platform>.tar             kit/ with that platform's wheels and script only

The wheels come from pip's configured indexes (``pip download --only-binary=:all: --platform ...``);
``torch_index`` adds an index of CPU-only torch builds for Linux (PyPI's Linux torch brings about
3 GB of NVIDIA CUDA libraries). Wheels are zip files already: the tarballs are not compressed again.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distill_utils.runs.experiments import REPO

SH, CMD = "sh", "cmd"
LINUX_TAGS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)) + ("manylinux2014_x86_64",)


@dataclass(frozen=True)
class Platform:
    tags: tuple         # pip download --platform values (the newest system the wheels may need first)
    markers: dict       # PEP 508 environment of such a laptop (pip is told it: see AS_TARGET)
    script: str         # SH or CMD
    needs: str          # the system it needs, for README.txt


PLATFORMS = {
    "linux-x86_64": Platform(LINUX_TAGS, {"os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
                                          "platform_machine": "x86_64"}, SH, "glibc 2.28 or newer (2018 on)"),
    "macos-arm64": Platform(("macosx_14_0_arm64",), {"os_name": "posix", "sys_platform": "darwin",
                                                     "platform_system": "Darwin", "platform_machine": "arm64"},
                            SH, "an Apple-silicon Mac with macOS 14 or newer"),
    "windows-x86_64": Platform(("win_amd64",), {"os_name": "nt", "sys_platform": "win32", "platform_system": "Windows",
                                                "platform_machine": "AMD64"}, CMD, "64-bit Windows 10 or 11"),
}
BIG = (("torch-", "torch"), ("nvidia_", "NVIDIA CUDA libraries"), ("triton-", "triton"))  # named in size lines


class KitError(Exception):
    """The kit cannot be built as asked; the message says why and what to do."""


@dataclass(frozen=True)
class KitOptions:
    """``platforms``: names from ``PLATFORMS`` (empty: this machine's); ``python``: the laptops'
    Python (``"3.11"``); ``torch_index``: a PEP 503 index of CPU-only torch wheels for Linux
    (e.g. https://download.pytorch.org/whl/cpu; never required); ``pip``: ``(python, "-m", "pip",
    *pip's options)``; ``say`` prints progress; ``run`` runs pip (tests pass fakes)."""
    out: Path = Path("kit")
    platforms: tuple = ()
    python: str = f"{sys.version_info[0]}.{sys.version_info[1]}"
    torch_index: str | None = None
    tarballs: bool = True
    repo: Path = REPO
    pip: tuple = (sys.executable, "-m", "pip")
    say: Callable = print
    run: Callable = field(default=subprocess.run, repr=False)


def this_platform() -> str | None:
    """This machine's name in ``PLATFORMS``, or None."""
    system = {"linux": "linux", "darwin": "macos", "win32": "windows"}.get(sys.platform)
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}.get(platform.machine().lower())
    name = f"{system}-{arch}"
    return name if name in PLATFORMS else None


# pip judges a dependency's marker (`cuda-bindings; platform_system == "Linux"`, tqdm's `colorama; platform_system
# == "Windows"`) by the machine it runs on, even with --platform; for another platform's kit it runs in a child
# process told that platform's environment (pip's own vendored `packaging`, read at each marker's evaluation)
AS_TARGET = """import json, sys
from pip._vendor.packaging import markers
environment = {**markers.default_environment(), **json.loads(sys.argv[1])}
markers.default_environment = lambda: dict(environment)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def target_environment(name: str, python: str) -> dict:
    """The PEP 508 marker environment of a ``name`` laptop running CPython ``python``."""
    return {**PLATFORMS[name].markers, "python_version": python, "python_full_version": f"{python}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def _pip(options: KitOptions, name: str, action: list[str], requirements: list[str]):
    """``pip <action>`` of wheels for ``name``'s platform and the kit's Python, told that platform's markers."""
    major, minor = options.python.split(".")
    pip = list(options.pip)
    if name != this_platform() or options.python != f"{sys.version_info[0]}.{sys.version_info[1]}":
        pip = [pip[0], "-c", AS_TARGET, json.dumps(target_environment(name, options.python)), *pip[3:]]
    command = [*pip, *action, "--only-binary=:all:", "--python-version", options.python, "--implementation", "cp",
               "--abi", f"cp{major}{minor}", "--progress-bar", "off"]
    for tag in PLATFORMS[name].tags:
        command += ["--platform", tag]
    return options.run(command + requirements, capture_output=True, text=True)


def _pip_error(done) -> str:
    lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.startswith("ERROR")]
    return (lines[-1] if lines else f"pip exited with {done.returncode}").removeprefix("ERROR: ")


def download_wheels(options: KitOptions, name: str, dest: Path) -> int:
    """Every requirement (and ``setuptools``, the build backend of ``pip install -e .``) as wheels for
    ``name`` in ``dest``; then checked: they resolve with no index, as the install script will. Returns
    how many packages that install takes."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = ["-r", str(options.repo / "requirements.txt"), "setuptools>=61"]
    extra = ["--extra-index-url", options.torch_index] if options.torch_index and name.startswith("linux") else []
    done = _pip(options, name, ["download", "--dest", str(dest), *extra], wanted)
    if done.returncode != 0:
        raise KitError(_pip_error(done))
    return check_wheelhouse(options, name, dest)


def check_wheelhouse(options: KitOptions, name: str, dest: Path) -> int:
    """How many packages the kit's install takes from ``dest`` alone (pip resolving with no index, as for
    ``name``); a KitError with pip's reason when they do not all resolve."""
    wanted = ["-r", str(options.repo / "requirements.txt"), "setuptools>=61"]
    with tempfile.TemporaryDirectory() as target:
        done = _pip(options, name, ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
                                    "--target", target, "--no-index", "--find-links", str(dest)], wanted)
    if done.returncode != 0:
        raise KitError(f"its wheels do not install without an index: {_pip_error(done)}")
    return len(json.loads(done.stdout)["install"])


def copy_project(repo: Path, dest: Path, skip: Path | None = None) -> int:
    """Copy the files git tracks or would track (not ignored ones: no .venv, runs or datasets), except
    those under ``skip`` (a kit folder inside the repository); their count."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError) as err:
        raise KitError(f"cannot list the project's files with git in {repo} ({err}); build the kit from a clone "
                       "of distill-lab with git installed") from None
    count = 0
    for rel in filter(None, listed):
        source = repo / rel
        if skip is not None and source.resolve().is_relative_to(skip):
            continue
        if source.is_file():  # a file deleted in the working tree is still listed
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
            count += 1
    return count


def copy_dataset(repo: Path, dest: Path) -> Path:
    """Fashion-MNIST's four files, gzipped, into ``dest``'s data/FashionMNIST/raw (checked: SHA-256)."""
    import gzip
    import hashlib

    from distill_utils.data import DOWNLOAD_SHA256, find_files
    found = find_files("fashion_mnist", repo / "data")
    if found is None:
        raise KitError("the dataset is not on this machine: run `make data` first (the kit carries its files)")
    raw = dest / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for path in (p for paths in found[1].values() for p in paths):
        target = raw / (path.name if path.suffix == ".gz" else path.name + ".gz")
        if path.suffix == ".gz":
            shutil.copy2(path, target)
        else:
            with gzip.GzipFile(target, "wb", mtime=0) as f:
                f.write(path.read_bytes())
        expected = DOWNLOAD_SHA256["fashion_mnist"][target.name]
        if path.suffix == ".gz" and hashlib.sha256(target.read_bytes()).hexdigest() != expected:
            raise KitError(f"{path} differs from the published file (SHA-256 in data/README.md); get the "
                           "dataset again before building a kit")
    return raw


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e6:.1f} MB"


def wheel_sizes(folder: Path) -> dict:
    """Bytes of the wheels in ``folder``: ``{"all": n, "torch": n, "NVIDIA CUDA libraries": n, ...}``."""
    sizes = {"all": 0, "files": 0}
    for wheel in folder.glob("*.whl"):
        n = wheel.stat().st_size
        sizes["all"] += n
        sizes["files"] += 1
        for prefix, label in BIG:
            if wheel.name.lower().startswith(prefix):
                sizes[label] = sizes.get(label, 0) + n
    return sizes


def write_tarball(out: Path, name: str) -> Path:
    """``kit-<name>.tar`` beside ``out``: everything but the other platforms' wheels and scripts."""
    others = set(PLATFORMS) - {name}
    tar_path = out.parent / f"{out.name}-{name}.tar"
    partial = tar_path.with_name(tar_path.name + ".partial")

    def keep(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        if len(parts) >= 3 and parts[1] == "wheels" and parts[2] in others:
            return None
        return None if len(parts) == 2 and any(parts[1].startswith(f"install-{o}.") for o in others) else info

    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(out, arcname=out.name, filter=keep)
    partial.replace(tar_path)
    return tar_path


def _check_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / "kit.json").exists():
        raise KitError(f"{out} exists and is not a kit (no kit.json); choose an empty or new folder with --out")


def build_kit(options: KitOptions) -> dict:
    """Build the kit (see the module's docstring); returns what ``kit.json`` records, sizes included.
    A platform whose wheels cannot all be found is left out with the reason; none found is an error."""
    from datetime import datetime, timezone

    from distill_utils.provenance.checkpoints import verify_checkpoint
    from distill_utils.setup.kit_scripts import README, script
    names = list(options.platforms) or [this_platform()]
    unknown = [n for n in names if n not in PLATFORMS]
    if unknown:
        raise KitError(f"unknown platform {unknown[0]!r} (this machine: {platform.system()} {platform.machine()}); "
                       f"choose from {', '.join(PLATFORMS)}, or all")
    if len(options.python.split(".")) != 2 or not all(part.isdigit() for part in options.python.split(".")):
        raise KitError(f"--python takes a version like 3.11, got {options.python!r}")
    out = Path(options.out).resolve()
    _check_out(out)
    project = out / "distill-lab"
    shutil.rmtree(project, ignore_errors=True)
    files = copy_project(options.repo, project, skip=out)
    teacher = project / "data" / "pretrained" / "teacher_fashion_mnist.safetensors"
    if not teacher.is_file():
        raise KitError(f"the pretrained teacher is not in the project ({teacher.name}); `make pretrained` makes it")
    verify_checkpoint(teacher)  # the pinned SHA-256: the kit carries the shipped teacher, unchanged
    raw = copy_dataset(options.repo, project)
    record = {"python": options.python, "made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "project_files": files, "project_bytes": _size(project) - _size(raw), "dataset_bytes": _size(raw),
              "torch_index": options.torch_index, "platforms": {}, "left_out": {}}
    for name in names:
        options.say(f"{name}: downloading the wheels for Python {options.python} (pip download --only-binary=:all:)")
        try:
            packages = download_wheels(options, name, out / "wheels" / name)
        except KitError as err:
            options.say(f"{name}: left out: {err}")
            record["left_out"][name] = str(err)
            shutil.rmtree(out / "wheels" / name, ignore_errors=True)
            continue
        kind = PLATFORMS[name].script
        path = out / f"install-{name}.{kind}"
        path.write_bytes(script(kind, platform=name, python=options.python, needs=PLATFORMS[name].needs).encode())
        path.chmod(0o755)
        record["platforms"][name] = {"wheels": wheel_sizes(out / "wheels" / name), "packages": packages,
                                     "script": path.name}
    if not record["platforms"]:
        raise KitError("no platform's wheels could all be found: "
                       + "; ".join(f"{n}: {why}" for n, why in record["left_out"].items()))
    runs = [f"  {n}: {'sh ' if PLATFORMS[n].script == SH else ''}install-{n}.{PLATFORMS[n].script}   "
            f"(needs {PLATFORMS[n].needs})" for n in record["platforms"]]
    (out / "README.txt").write_text(README.format(python=options.python, made=record["made"], lines="\n".join(runs)))
    (out / "kit.json").write_text(json.dumps(record, indent=1))
    for name, entry in record["platforms"].items():
        if options.tarballs:
            tar = write_tarball(out, name)
            entry["tarball"], entry["tarball_bytes"] = tar.name, tar.stat().st_size
    (out / "kit.json").write_text(json.dumps(record, indent=1))
    record["out"] = str(out)
    return record


def size_lines(record: dict) -> list[str]:
    """The kit's size per platform, as the command prints it."""
    shared = record["project_bytes"] + record["dataset_bytes"]
    lines = [f"kit in {record['out']} (Python {record['python']}): shared by every platform "
             f"{_mb(shared)} (project {_mb(record['project_bytes'])} with the pretrained teacher, "
             f"dataset {_mb(record['dataset_bytes'])})"]
    for name, entry in record["platforms"].items():
        wheels = entry["wheels"]
        big = ", ".join(f"{label} {_mb(n)}" for label, n in wheels.items() if label not in ("all", "files"))
        tar = f"; {entry['tarball']} {_mb(entry['tarball_bytes'])}" if "tarball" in entry else ""
        lines.append(f"  {name:15s} {_mb(wheels['all'] + shared):>9s} = wheels {_mb(wheels['all'])} "
                     f"({wheels['files']} files{'; ' + big if big else ''}) + shared{tar}")
    lines += [f"  {name:15s} left out: {why}" for name, why in record["left_out"].items()]
    if any("NVIDIA CUDA libraries" in e["wheels"] for e in record["platforms"].values()):
        lines.append("  (Linux: PyPI's torch brings NVIDIA's CUDA libraries; for CPU-only laptops "
                     "--torch-index https://download.pytorch.org/whl/cpu, where your network reaches it, "
                     "takes a CPU-only torch instead)")
    return lines
