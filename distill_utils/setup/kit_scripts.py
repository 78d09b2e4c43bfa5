"""The kit's install scripts and README.txt (``setup.kit`` writes them). Each script makes
``distill-lab/.venv`` with the laptop's Python, installs every requirement from the kit's wheels
with ``pip --no-index --find-links`` (no network), and runs notebook 00's checks, offline."""
from __future__ import annotations

SH = """#!/bin/sh
# distill-lab workshop kit, {platform}: installs the tutorial with no internet, then runs notebook 00's checks.
# Needs Python {python} ({needs}). Run: sh install-{platform}.sh   (PYTHON=/path/to/python{python} to choose one)
set -eu
KIT=$(cd "$(dirname "$0")" && pwd)
PY=""
for candidate in ${{PYTHON:-}} python{python} python3 python; do
  if command -v "$candidate" >/dev/null 2>&1 && \\
     "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != ({major}, {minor}))' 2>/dev/null; then
    PY=$candidate; break
  fi
done
if [ -z "$PY" ]; then
  echo "FAIL: this kit holds wheels for Python {python}; install Python {python} (or set PYTHON=...) and run again" >&2
  exit 1
fi
cd "$KIT/distill-lab"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --no-index --find-links "$KIT/wheels/{platform}" -r requirements.txt -e .
touch .venv/.installed  # make's targets see the set-up done
OFFLINE=1 .venv/bin/python -m distill_utils data
OFFLINE=1 .venv/bin/python -m distill_utils run 00 --out runs/kit-check
echo "installed in $KIT/distill-lab: cd there, then: make lab OFFLINE=1  (or .venv/bin/jupyter lab notebooks/)"
"""

CMD = """@echo off
rem distill-lab workshop kit, {platform}: installs the tutorial with no internet, then runs notebook 00's checks.
rem Needs Python {python} from python.org ({needs}). Run: install-{platform}.cmd
setlocal
set "KIT=%~dp0"
if "%PYTHON%"=="" set "PYTHON=py -{python}"
%PYTHON% -c "import sys; sys.exit(sys.version_info[:2] != ({major}, {minor}))"
if errorlevel 1 (
  echo FAIL: this kit holds wheels for Python {python}: install Python {python} from python.org and run again
  exit /b 1
)
cd /d "%KIT%distill-lab" || exit /b 1
if not exist .venv\\Scripts\\python.exe %PYTHON% -m venv .venv || exit /b 1
set "VENV_PY=.venv\\Scripts\\python.exe"
%VENV_PY% -m pip install --no-index --find-links "%KIT%wheels\\{platform}" -r requirements.txt -e . || exit /b 1
set OFFLINE=1
%VENV_PY% -m distill_utils data || exit /b 1
%VENV_PY% -m distill_utils run 00 --out runs\\kit-check || exit /b 1
echo installed in %KIT%distill-lab: cd there, then: .venv\\Scripts\\jupyter lab notebooks
"""

README = """distill-lab workshop kit (Python {python}), made {made}

Install on a laptop with no internet: copy this folder (or kit-<platform>.tar, then `tar -xf` it), then

{lines}

The script creates distill-lab/.venv with the laptop's Python {python}, installs every package from
wheels/<platform>/ (pip --no-index: nothing is downloaded), and runs notebook 00's checks, offline;
every line it prints must say OK or WARN. Then open the notebooks: `make lab OFFLINE=1` in
distill-lab/, or without make: `.venv/bin/jupyter lab notebooks/` (Windows: `.venv\\Scripts\\jupyter lab
notebooks`). A laptop without make runs every make target by hand: README.md shows the python commands.

The dataset (Fashion-MNIST, MIT licence) is in distill-lab/data/FashionMNIST/raw/ and the pretrained
teacher in distill-lab/data/pretrained/, so notebooks 03-10 start without training one.
"""


def script(kind: str, **values) -> str:
    """The install script of one platform: ``kind`` ``"sh"`` or ``"cmd"``."""
    major, minor = values["python"].split(".")
    text = (SH if kind == "sh" else CMD).format(major=major, minor=minor, **values)
    return text.replace("\n", "\r\n") if kind == "cmd" else text
