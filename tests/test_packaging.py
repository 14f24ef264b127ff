"""Packaging: the top-level folder kernels/ must be installed as fastconvt.kernels.

Both a regular and an editable install of the repo are made into throwaway
venvs (no pip, no torch of their own: a .pth file points them at a mirror of
this interpreter's site-packages without fastconvt in it), then inspected in a
subprocess whose cwd is outside the repo.
"""
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 300
# Names in this interpreter's site-packages that must not leak into the
# throwaway venvs: they would shadow (or fake) what the install under test
# provides.
_HIDDEN = re.compile(r"^(fastconvt|kernels\b|__editable__)|\.(pth|egg-link)$", re.I)
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__",
    ".hypothesis", ".benchmarks", ".pytest_cache", "results", "*.nbi", "*.nbc",
)

_PROBE = r"""
import importlib.util, json, sys
import fastconvt, fastconvt.kernels
print(json.dumps({
    "fastconvt": fastconvt.__file__,
    "kernels": fastconvt.kernels.__file__,
    "top_level_kernels": importlib.util.find_spec("kernels") is not None,
    "purelib": __import__("sysconfig").get_paths()["purelib"],
}))
"""


def _site_dirs():
    dirs = list(site.getsitepackages())
    dirs += [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    seen, out = set(), []
    for d in dirs:
        d = os.path.realpath(d)
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            out.append(d)
    return out


def _require_pip_python():
    r = subprocess.run([sys.executable, "-m", "pip", "--version"],
                       capture_output=True, text=True)
    m = re.match(r"pip (\d+)\.(\d+)", r.stdout)
    if r.returncode != 0 or not m or (int(m[1]), int(m[2])) < (22, 3):
        pytest.fail("this test needs `pip --python` (pip >= 22.3) in the running "
                    f"interpreter {sys.executable}; got: {r.stdout or r.stderr!r}")


def _make_venv(root: Path) -> Path:
    """A pip-less venv that sees this interpreter's packages except fastconvt."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")],
                   check=True)
    py = root / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    mirror = root / "deps"
    mirror.mkdir()
    for d in _site_dirs():
        for name in os.listdir(d):
            if _HIDDEN.search(name) or (mirror / name).exists():
                continue
            (mirror / name).symlink_to(os.path.join(d, name))
    # Plain path line: .pth files inside the mirror are not processed.
    Path(purelib, "zz_fastconvt_test_deps.pth").write_text(f"{mirror}\n")
    return py


def _pip_install(py: Path, *args):
    cmd = [sys.executable, "-m", "pip", "--python", str(py), "install",
           "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
           "--disable-pip-version-check", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"


def _probe(py: Path, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run([str(py), "-c", _PROBE], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=PIP_TIMEOUT)
    assert r.returncode == 0, f"import in the installed venv failed:\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _py_files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def _under(path, folder) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def test_regular_install_maps_kernels(tmp_path):
    _require_pip_python()
    py = _make_venv(tmp_path)
    # Build from a copy so no build/ or *.egg-info is written into the repo.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_COPY_IGNORE, symlinks=True)
    _pip_install(py, str(src))

    info = _probe(py, cwd=tmp_path)
    purelib = Path(info["purelib"])
    assert _under(info["fastconvt"], purelib / "fastconvt"), info
    assert _under(info["kernels"], purelib / "fastconvt" / "kernels"), info
    assert not info["top_level_kernels"], "a top-level `kernels` module is exposed"
    assert not (purelib / "kernels").exists()
    # Every source file is shipped, byte for byte (catches a subpackage
    # missing from setup.cfg's explicit `packages` list).
    assert _py_files(purelib / "fastconvt" / "kernels") == _py_files(REPO / "kernels")
    installed = _py_files(purelib / "fastconvt")
    installed = {k: v for k, v in installed.items() if not k.startswith("kernels/")}
    assert installed == _py_files(REPO / "fastconvt")


def test_editable_install_maps_kernels(tmp_path):
    _require_pip_python()
    py = _make_venv(tmp_path)
    before = {p.name for p in REPO.iterdir()}
    try:
        _pip_install(py, "-e", str(REPO))
    finally:
        # Remove only what this install created (e.g. build/, *.egg-info).
        for p in REPO.iterdir():
            if p.name not in before and (p.name == "build" or p.name.endswith(".egg-info")):
                shutil.rmtree(p, ignore_errors=True)

    info = _probe(py, cwd=tmp_path)
    assert _under(info["fastconvt"], REPO / "fastconvt"), info
    assert _under(info["kernels"], REPO / "kernels"), info
    assert not info["top_level_kernels"], "a top-level `kernels` module is exposed"


def test_tests_import_the_installed_copy():
    """Under `make test` (regular install), ./fastconvt must not shadow it."""
    if os.environ.get("FASTCONVT_EXPECT_INSTALLED") != "1":
        pytest.skip("only meaningful under `make test` (FASTCONVT_EXPECT_INSTALLED=1)")
    import fastconvt
    import fastconvt.kernels

    assert not _under(fastconvt.__file__, REPO / "fastconvt"), fastconvt.__file__
    assert _under(fastconvt.kernels.__file__, Path(fastconvt.__file__).parent), \
        fastconvt.kernels.__file__
