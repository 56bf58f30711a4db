"""Installing rnnkit where users already work: the built wheel, installed with pip into a fresh
virtual environment that already holds torch and rnnkit's other dependencies, changes no installed
package's version, and the ``rnnkit`` command runs. Nothing is downloaded (``--no-index``).

The fresh environment sees this environment's packages (torch 2.13.0 and the rest of
requirements.lock) through a ``.pth`` file naming a folder of links to them, rnnkit's own editable
install left out, so that pip resolves rnnkit's requirements against them as it would in a user's
environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(*args, **kwargs) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def pip(target: Path, *args) -> str:
    """This environment's pip acting on the ``target`` interpreter's environment, offline."""
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return run(sys.executable, "-m", "pip", "--python", target, *args, env=env)


def versions(target: Path) -> dict[str, str]:
    """Every distribution the ``target`` interpreter sees, name → version (as ``pip list`` reads them)."""
    listed = json.loads(pip(target, "list", "--format", "json"))
    return {d["name"].lower().replace("_", "-"): d["version"] for d in listed}


# Packages the user's environment holds at other versions than requirements.lock's, inside rnnkit's
# ranges (their metadata says so; pip reads only that): installing rnnkit must keep them.
OTHER_VERSIONS = {"pandas": "2.2.3", "tqdm": "4.66.0"}


def present_as(dist_info: Path, version: str, folder: Path) -> None:
    """A copy of an installed distribution's metadata in ``folder`` that says ``version``."""
    name, old = dist_info.name.removesuffix(".dist-info").split("-")
    copy = folder / f"{name}-{version}.dist-info"
    shutil.copytree(dist_info, copy)
    metadata = (copy / "METADATA").read_text(encoding="utf-8")
    (copy / "METADATA").write_text(metadata.replace(f"\nVersion: {old}\n", f"\nVersion: {version}\n", 1),
                                   encoding="utf-8")


def test_wheel_installs_beside_existing_packages_and_changes_none(tmp_path):
    source = tmp_path / "src"  # a copy, so that building leaves no build/ or egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "rnnkit", source / "rnnkit", ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
        "-w", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("rnnkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    lines = metadata.splitlines()
    requires = [line.split(": ", 1)[1] for line in lines
                if line.startswith("Requires-Dist: ") and "extra ==" not in line]
    python_range = next(line for line in lines if line.startswith("Requires-Python: "))
    assert "<" not in python_range, python_range  # no upper bound on Python
    assert not [r for r in requires if "==" in r] and "torch>=2.6" in requires, requires  # ranges, not pins

    existing = tmp_path / "existing"  # this environment's packages, rnnkit's editable install left out
    existing.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if entry.name.startswith(("rnnkit", "__editable__", "_distutils_hack", "distutils-precedence")) or \
                entry.suffix == ".pth" or entry.name == "__pycache__":
            continue
        name = entry.name.split("-")[0].lower()
        if entry.name.endswith(".dist-info") and name in OTHER_VERSIONS:
            present_as(entry, OTHER_VERSIONS[name], existing)
        else:
            (existing / entry.name).symlink_to(entry)
    env_dir = tmp_path / "user-env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    user_site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (user_site / "existing.pth").write_text(f"{existing}\n")

    before = versions(python)
    assert before["torch"].startswith("2.13.0") and "rnnkit" not in before  # 2.13.0+cpu, the CPU build
    assert all(before[name] == version for name, version in OTHER_VERSIONS.items())
    pip(python, "install", "-q", wheel)
    after = versions(python)
    changed = {name: (before.get(name), version) for name, version in after.items() if before.get(name) != version}
    assert changed == {"rnnkit": (None, "0.1.0")}, changed
    assert before.keys() <= after.keys()

    usage = run(env_dir / "bin" / "rnnkit", "--help", cwd=tmp_path)
    assert "train" in usage and "evaluate" in usage
    where = run(python, "-c", "import rnnkit, torch; print(rnnkit.__file__, torch.__version__)", cwd=tmp_path)
    assert where.startswith(str(user_site)) and where.split()[1] == before["torch"]
