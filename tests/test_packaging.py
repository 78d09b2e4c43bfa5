"""`pip install .` (not editable) gives a working package: every module, declared dependencies, the CLI.

The wheel is built offline from a copy of the sources (the repository stays untouched), then
installed into a fresh venv that reuses this environment's installed libraries (torch & co.)
through a plain path in a .pth file; that path adds no .pth hooks of its own, so the repository's
editable install stays out, and the test checks the import really comes from the new venv.
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distill_utils"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _modules() -> list[str]:
    """Every module of the package as a dotted name, from the source tree."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _imported_top_levels() -> dict[str, str]:
    """Top-level names of absolute imports anywhere in the package (module scope or inside functions)
    -> the first file importing each."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path.relative_to(ROOT).as_posix())
    return found


def test_every_third_party_import_is_declared():
    declared = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["dependencies"]}
    for extra in PYPROJECT["optional-dependencies"].values():
        declared |= {canonicalize_name(Requirement(r).name) for r in extra}
    providers = importlib.metadata.packages_distributions()
    undeclared = []
    for top, where in _imported_top_levels().items():
        if top in sys.stdlib_module_names or top in ("__future__", "distill_utils"):
            continue
        dists = {canonicalize_name(d) for d in providers.get(top, [top])}
        if not dists & declared:
            undeclared.append(f"{top} (imported in {where}; distribution {sorted(dists)})")
    assert not undeclared, "imports not declared in pyproject.toml's dependencies or extras: " + ", ".join(undeclared)
    assert {"notebooks", "cluster", "deploy", "search"} <= set(PYPROJECT["optional-dependencies"])


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    command = " ".join(map(str, cmd))
    assert proc.returncode == 0, f"{command} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def test_wheel_installs_into_a_fresh_venv_and_imports(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(PACKAGE, src / "distill_utils", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp_path / "dist", src])
    (wheel,) = (tmp_path / "dist").glob("distill_utils-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in zf.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    sources = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    assert not sources - names, f"the wheel lacks {sorted(sources - names)}"
    strays = [n for n in names if not n.startswith(("distill_utils/", "distill_utils-"))]
    assert not strays, f"the wheel holds files from outside the package: {strays}"
    py_files = sorted(n for n in names if n.endswith(".py"))
    print(f"{wheel.name}: {len(names)} files, {len(py_files)} .py")
    declared = [Requirement(r) for r in PYPROJECT["dependencies"]]
    in_wheel = [Requirement(r) for r in requires]
    assert {str(r) for r in declared} <= {str(r) for r in in_wheel if r.marker is None}, requires
    for extra in PYPROJECT["optional-dependencies"]:
        assert any(r.marker and r.marker.evaluate({"extra": extra}) for r in in_wheel), f"no [{extra}] in {requires}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # reuse torch & co. from this environment: plain paths, after the venv's own site-packages
    (purelib / "reuse_test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])

    check = ("import importlib, json, pkgutil, distill_utils\n"
             "found = pkgutil.walk_packages(distill_utils.__path__, 'distill_utils.')\n"
             "mods = sorted(['distill_utils'] + [m.name for m in found])\n"
             "for m in mods: importlib.import_module(m)\n"
             "print(json.dumps({'file': distill_utils.__file__, 'modules': mods}))\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = json.loads(_run([python, "-c", check], cwd=tmp_path, env=env).stdout.strip().splitlines()[-1])
    assert Path(out["file"]).is_relative_to(venv), f"distill_utils came from {out['file']}, not the new venv"
    assert out["modules"] == sorted(_modules()), (out["modules"], _modules())

    cli = _run([python, "-m", "distill_utils", "--help"], cwd=tmp_path, env=env)
    assert cli.stdout.startswith("usage:") and "run" in cli.stdout and "sweep" in cli.stdout, cli.stdout
