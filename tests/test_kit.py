"""The workshop kit (`make kit`, distill_utils.setup.kit): its layout, scripts, tarballs and sizes with pip
replaced (seconds); and, marked `kit` (`make kit-test`), a real kit for this machine installed into a fresh
venv with no package index and no network, everything imported and notebook 00 run from it (minutes)."""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from distill_utils import __main__ as cli
from distill_utils.data import DOWNLOAD_SHA256
from distill_utils.setup import kit
from distill_utils.setup.kit import KitError, KitOptions, build_kit, size_lines

REPO = Path(__file__).resolve().parents[1]
WINDOWS = kit.PLATFORMS["windows-x86_64"].markers
LINUX = kit.PLATFORMS["linux-x86_64"].markers


def fake_wheel(folder: Path, name: str, version: str = "1.0", requires=(), size: int = 0) -> Path:
    """A wheel holding only METADATA (and ``size`` bytes of padding)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n"
                                                                               for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)
        zf.writestr(f"{name.replace('-', '_')}-{version}.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("padding", b"\0" * size)
    return path


class FakePip:
    """pip for the kit: ``download`` writes fake wheels (Windows' tqdm wheel needs colorama; macOS has no
    wheel for one requirement); ``install --dry-run`` resolves from the wheels written."""

    def __init__(self, forget_colorama=False):
        self.commands, self.forget_colorama = [], forget_colorama

    def __call__(self, cmd, **kwargs):
        self.commands.append(cmd)
        platforms = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
        if "install" in cmd:  # the check: resolve with no index from the wheelhouse
            wheels = sorted(p.name.split("-")[0] for p in Path(cmd[cmd.index("--find-links") + 1]).glob("*.whl"))
            if platforms == ["win_amd64"] and "colorama" not in wheels:
                return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for colorama\n")
            return subprocess.CompletedProcess(cmd, 0, json.dumps({"install": [{"name": w} for w in wheels]}), "")
        dest = Path(cmd[cmd.index("--dest") + 1])
        if platforms == ["macosx_14_0_arm64"]:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the "
                                               "requirement onnxruntime==1.32.0\nERROR: No matching distribution "
                                               "found for onnxruntime==1.32.0\n")
        fake_wheel(dest, "tqdm", requires=['colorama; platform_system == "Windows"', "pyyaml>=6"])
        fake_wheel(dest, "pyyaml", "6.0")
        if platforms[0].startswith("manylinux"):
            fake_wheel(dest, "torch", "2.14.1", requires=['nvidia-cublas; platform_system == "Linux"'], size=3000)
            fake_wheel(dest, "nvidia-cublas", "13.0", size=20000)
        elif not self.forget_colorama:
            fake_wheel(dest, "colorama")
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory):
    """A git checkout holding a few of the project's files, the shipped teacher, and an ignored runs/."""
    repo = tmp_path_factory.mktemp("repo")
    for rel in ["requirements.txt", "pyproject.toml", ".gitignore", "notebooks/00_setup.ipynb",
                "data/pretrained/teacher_fashion_mnist.safetensors", "data/pretrained/teacher_fashion_mnist.json"]:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, repo / rel)
    (repo / "runs").mkdir()
    (repo / "runs" / "old.json").write_text("{}")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    return repo


def test_pip_told_another_platform_takes_its_dependencies_and_the_wheels_are_checked(tmp_path):
    """Real pip, offline (wheels from a folder): tqdm's `colorama; platform_system == "Windows"` is taken
    for a Windows kit built on this machine, and only there; a wheelhouse that lacks it is refused."""
    index, repo = tmp_path / "index", tmp_path / "repo"
    fake_wheel(index, "tqdm", requires=['colorama; platform_system == "Windows"'])
    fake_wheel(index, "torch", requires=['nvidia-cublas; platform_system == "Linux"'])
    for name in ("colorama", "nvidia-cublas"):
        fake_wheel(index, name)
    fake_wheel(index, "setuptools", "70.0")
    repo.mkdir()
    (repo / "requirements.txt").write_text("tqdm\ntorch\n")

    def pip_offline(cmd, **kwargs):  # downloads from the folder; the check reads the wheelhouse alone
        if "download" in cmd:
            at = cmd.index("download") + 1
            cmd = cmd[:at] + ["--no-index", "--find-links", str(index)] + cmd[at:]
        return subprocess.run(cmd, **kwargs)
    options = KitOptions(pip=(sys.executable, "-m", "pip", "--isolated"), python="3.11", repo=repo, run=pip_offline)
    for name, expected in [("windows-x86_64", ["colorama", "setuptools", "torch", "tqdm"]),
                           ("macos-arm64", ["setuptools", "torch", "tqdm"]),
                           ("linux-x86_64", ["nvidia_cublas", "setuptools", "torch", "tqdm"])]:
        assert kit.download_wheels(options, name, tmp_path / name) == len(expected)
        assert sorted(p.name.split("-")[0] for p in (tmp_path / name).glob("*.whl")) == expected, name
    (tmp_path / "windows-x86_64" / "colorama-1.0-py3-none-any.whl").unlink()
    with pytest.raises(KitError, match="its wheels do not install without an index: .*colorama"):
        kit.check_wheelhouse(options, "windows-x86_64", tmp_path / "windows-x86_64")


def test_kit_holds_project_dataset_teacher_wheels_and_a_script_per_platform(small_repo, tmp_path):
    pip, said = FakePip(), []
    out = tmp_path / "kit"
    record = build_kit(KitOptions(out=out, platforms=tuple(kit.PLATFORMS), python="3.11", repo=small_repo,
                                  say=said.append, run=pip))
    # macOS had no wheel for one requirement: left out, with pip's reason; the others are whole
    assert record["left_out"] == {"macos-arm64": "No matching distribution found for onnxruntime==1.32.0"}
    assert sorted(record["platforms"]) == ["linux-x86_64", "windows-x86_64"]
    assert not (out / "wheels" / "macos-arm64").exists() and not (out / "install-macos-arm64.sh").exists()
    assert sorted(p.name for p in (out / "wheels" / "windows-x86_64").iterdir()) == [
        "colorama-1.0-py3-none-any.whl", "pyyaml-6.0-py3-none-any.whl", "tqdm-1.0-py3-none-any.whl"]
    assert not (out / "wheels" / "linux-x86_64" / "colorama-1.0-py3-none-any.whl").exists()
    first = pip.commands[0]
    assert first[first.index("--python-version") + 1] == "3.11" and first[first.index("--abi") + 1] == "cp311"
    # another platform's pip is told that platform's markers (here: this Linux machine builds for Windows)
    windows = next(c for c in pip.commands if "win_amd64" in c)
    assert windows[1:3] == ["-c", kit.AS_TARGET] and json.loads(windows[3])["sys_platform"] == "win32"
    assert first[:4] == [sys.executable, "-m", "pip", "download"] or kit.this_platform() != "linux-x86_64"
    assert "--only-binary=:all:" in first and first[-3:] == ["-r", str(small_repo / "requirements.txt"),
                                                             "setuptools>=61"]
    # the project as git lists it (no ignored runs/), the dataset gzipped with the published sums, the teacher
    project = out / "distill-lab"
    assert (project / "notebooks" / "00_setup.ipynb").is_file() and not (project / "runs").exists()
    assert (project / "data" / "pretrained" / "teacher_fashion_mnist.safetensors").is_file()
    raw = project / "data" / "FashionMNIST" / "raw"
    import hashlib
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in raw.iterdir()} == \
        DOWNLOAD_SHA256["fashion_mnist"]
    # scripts: pip with no index from the kit's wheels, then notebook 00 offline
    sh = (out / "install-linux-x86_64.sh").read_text()
    assert '--no-index --find-links "$KIT/wheels/linux-x86_64" -r requirements.txt -e .' in sh
    assert "OFFLINE=1 .venv/bin/python -m distill_utils run 00" in sh and "sys.version_info[:2] != (3, 11)" in sh
    assert subprocess.run(["sh", "-n", out / "install-linux-x86_64.sh"]).returncode == 0
    cmd = (out / "install-windows-x86_64.cmd").read_bytes()
    assert b"\r\n" in cmd and b'--no-index --find-links "%KIT%wheels\\windows-x86_64"' in cmd
    assert "sh install-linux-x86_64.sh" in (out / "README.txt").read_text()
    # one tarball per platform, without the other platforms' wheels and scripts
    with tarfile.open(tmp_path / "kit-windows-x86_64.tar") as tar:
        names = tar.getnames()
    assert "kit/install-windows-x86_64.cmd" in names and "kit/distill-lab/notebooks/00_setup.ipynb" in names
    assert not any("linux" in n for n in names) and "kit/wheels/windows-x86_64/colorama-1.0-py3-none-any.whl" in names
    assert json.loads((out / "kit.json").read_text())["platforms"]["linux-x86_64"]["tarball"] == "kit-linux-x86_64.tar"
    # sizes per platform, the big ones named, and the CPU-only index offered
    lines = size_lines(record)
    assert lines[0].startswith(f"kit in {out} (Python 3.11): shared by every platform")
    linux = next(line for line in lines if line.strip().startswith("linux-x86_64"))
    assert "wheels 0.0 MB (4 files; torch 0.0 MB, NVIDIA CUDA libraries 0.0 MB) + shared; kit-linux-x86_64.tar" in linux
    assert any(line.split() == ["macos-arm64", "left", "out:", "No", "matching", "distribution", "found", "for",
                                "onnxruntime==1.32.0"] for line in lines)
    assert "--torch-index https://download.pytorch.org/whl/cpu" in lines[-1]
    assert said[0] == "linux-x86_64: downloading the wheels for Python 3.11 (pip download --only-binary=:all:)"


def test_kit_refuses_what_it_cannot_build(small_repo, tmp_path, capsys):
    with pytest.raises(KitError, match="unknown platform 'beos-x86_64'.*choose from linux-x86_64, macos-arm64"):
        build_kit(KitOptions(out=tmp_path / "k", platforms=("beos-x86_64",), repo=small_repo, run=FakePip()))
    with pytest.raises(KitError, match="--python takes a version like 3.11, got '3'"):
        build_kit(KitOptions(out=tmp_path / "k", python="3", repo=small_repo, run=FakePip()))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("")
    assert cli.main(["kit", "--out", str(tmp_path / "mine")]) == 2
    assert capsys.readouterr().err == (f"FAIL: {tmp_path / 'mine'} exists and is not a kit (no kit.json); choose an "
                                       "empty or new folder with --out\n")
    record = build_kit(KitOptions(out=tmp_path / "k2", platforms=("windows-x86_64", "linux-x86_64"), repo=small_repo,
                                  run=FakePip(forget_colorama=True), say=lambda line: None, tarballs=False))
    assert record["left_out"] == {"windows-x86_64": "its wheels do not install without an index: No matching "
                                                    "distribution found for colorama"}
    assert list(record["platforms"]) == ["linux-x86_64"]
    assert not (tmp_path / "k2" / "wheels" / "windows-x86_64").exists()
    with pytest.raises(KitError, match="no platform's wheels could all be found: macos-arm64: No matching"):
        build_kit(KitOptions(out=tmp_path / "k", platforms=("macos-arm64",), repo=small_repo, run=FakePip(),
                             say=lambda line: None))


def test_this_machine_has_a_platform_name():
    import platform
    expected = {("Linux", "x86_64"): "linux-x86_64", ("Darwin", "arm64"): "macos-arm64",
                ("Windows", "AMD64"): "windows-x86_64"}.get((platform.system(), platform.machine()))
    assert kit.this_platform() == expected


def _offline_env(home: Path) -> dict:
    """A laptop's environment: no pip configuration or index, this machine's Python 3.x as `PYTHON`."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
            "PYTHON": getattr(sys, "_base_executable", sys.executable), "OMP_NUM_THREADS": "2"}


IMPORT_ALL = """
import importlib, importlib.metadata as md, json, pkgutil, re
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
wanted = [canon(re.split(r"[<>=!~\\[; ]", line.strip())[0]) for line in open("requirements.txt")
          if line.strip() and not line.startswith("#")]
tops = {}
for top, dists in md.packages_distributions().items():
    for dist in dists:
        tops.setdefault(canon(dist), []).append(top)
imported, failed = [], []
for name in wanted:
    for top in sorted(tops.get(name, [])):
        if not top.startswith("_") and top.isidentifier():
            try:
                importlib.import_module(top)
                imported.append(top)
            except Exception as err:
                failed.append(f"{top}: {type(err).__name__}: {err}")
import distill_utils
mods = ["distill_utils"] + [m.name for m in pkgutil.walk_packages(distill_utils.__path__, "distill_utils.")]
for m in mods:
    importlib.import_module(m)
print(json.dumps({"imported": imported, "failed": failed, "modules": len(mods), "file": distill_utils.__file__,
                  "missing": [n for n in wanted if n not in tops]}))
"""


@pytest.mark.kit
def test_a_kit_installs_offline_into_a_fresh_venv_and_runs_notebook_00(tmp_path, request):
    if "kit" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("heavy (a kit of several GB, minutes): `make kit-test` runs it (pytest -m kit)")
    out, times = tmp_path / "kit", {}
    start = time.perf_counter()
    build = subprocess.run([sys.executable, "-m", "distill_utils", "kit", "--out", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=3600)
    times["build"] = time.perf_counter() - start
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    name = kit.this_platform()
    assert f"  {name}" in build.stdout and f"kit-{name}.tar" in build.stdout
    with tarfile.open(tmp_path / f"kit-{name}.tar") as tar:
        names = set(tar.getnames())
    assert {f"kit/install-{name}.sh", "kit/distill-lab/requirements.txt", "kit/kit.json",
            "kit/distill-lab/data/pretrained/teacher_fashion_mnist.safetensors"} <= names
    assert {f"kit/distill-lab/data/FashionMNIST/raw/{f}" for f in DOWNLOAD_SHA256["fashion_mnist"]} <= names

    # install as a laptop with no internet would: no package index, no pip configuration, no network (a network
    # namespace of its own, where root may make one: only loopback, up, which Jupyter's kernels talk over)
    ip = shutil.which("ip") or "/usr/sbin/ip"
    isolate = ["unshare", "--net", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh"]
    if not shutil.which("unshare") or subprocess.run([*isolate, "true"], capture_output=True).returncode != 0:
        isolate = []
    start = time.perf_counter()
    install = subprocess.run([*isolate, "sh", str(out / f"install-{name}.sh")], env=_offline_env(tmp_path),
                             capture_output=True, text=True, timeout=3600)
    times["install + notebook 00"] = time.perf_counter() - start
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    project = out / "distill-lab"
    record = json.loads((project / "runs" / "kit-check" / "00_setup.record.json").read_text())
    assert record["status"] == "ok" and not [k for k, v in record["metrics"]["checks"].items() if v == "FAIL"]

    python = project / ".venv" / "bin" / "python"
    checked = subprocess.run([*isolate, str(python), "-c", IMPORT_ALL], cwd=project, env=_offline_env(tmp_path),
                             capture_output=True, text=True, timeout=900)
    assert checked.returncode == 0, checked.stderr[-3000:]
    found = json.loads(checked.stdout.strip().splitlines()[-1])
    assert found["failed"] == [] and found["missing"] == [], found
    assert Path(found["file"]).is_relative_to(project) and found["modules"] > 20
    venv_bytes = sum(p.stat().st_size for p in (project / ".venv").rglob("*") if p.is_file() and not p.is_symlink())
    shutil.rmtree(out)  # 10 GB and more: kept above only when an assertion failed, to look into
    (tmp_path / f"kit-{name}.tar").unlink()
    print(f"\nkit ({'no network' if isolate else 'no index'}): " + "; ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; venv {venv_bytes / 1e9:.2f} GB; {len(found['imported'])} packages imported, {found['modules']} "
          "modules of distill_utils\n" + build.stdout)
