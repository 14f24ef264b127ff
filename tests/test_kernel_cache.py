"""Numba's on-disk cache of the kernels: keyed on everything that defines them,
recovering from unreadable entries, and compiling in memory where nothing is
writable."""
import os
import shutil
import subprocess
import sys
import textwrap

import numba

from fastconvt.kernels import _cache, _config

# one kernel, compiled (or loaded) in a fresh process; prints where it is cached
SCRIPT = textwrap.dedent("""
    import logging, sys
    import numpy as np
    logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
    from fastconvt.kernels import _config, direct
    if sys.argv[1] == "read-only":
        import importlib
        from fastconvt.kernels import _cache
        _cache._writable = lambda path: False
        importlib.reload(_config)
        importlib.reload(direct)
    y = direct.conv_transpose2d(np.ones((1, 2, 3, 3)), np.ones((2, 1, 2, 2)), None, (2, 2),
                                (0, 0), (1, 1), 1, (6, 6), parallel=False)
    assert float(y.sum()) == 72.0, y.sum()
    print("PATH", _config.CACHE_PATH, _config.CACHE)
""")


def _run(cache_dir, mode="plain"):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("FASTCONVT_NO_CACHE", None)
    done = subprocess.run([sys.executable, "-P", "-c", SCRIPT, mode], env=env, cwd=cache_dir,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_cache_folder_is_named_for_sources_flags_and_versions(tmp_path, monkeypatch):
    version = _cache.kernels_version("flags")
    assert _cache.kernels_version("flags") == version
    assert _cache.kernels_version("other flags") != version
    copy = tmp_path / "kernels"
    shutil.copytree(os.path.dirname(_cache.__file__), copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_cache, "_HERE", str(copy))
    assert _cache.kernels_version("flags") == version  # the same sources
    with open(copy / "_config.py", "a") as f:  # a callee's or a flag's module edited
        f.write("\n# edited\n")
    assert _cache.kernels_version("flags") != version
    monkeypatch.undo()
    assert _config.CACHE_PATH is None or os.path.basename(_config.CACHE_PATH) == \
        _cache.kernels_version((sorted(_config.FASTMATH), "nogil"))


def test_the_first_writable_folder_holds_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "numba"))
    assert _cache.cache_path("v1") == str(tmp_path / "numba" / "fastconvt-kernels" / "v1")
    monkeypatch.setattr(numba.config, "CACHE_DIR", "/dev/null/numba")  # not a folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    monkeypatch.setattr(_cache, "_HERE", "/dev/null/kernels")  # a read-only installation
    assert _cache.cache_path("v1") == str(tmp_path / "user" / "fastconvt" / "kernels" / "v1")
    monkeypatch.setenv("XDG_CACHE_HOME", "/dev/null/user")
    assert _cache.cache_path("v1") is None


def test_kernels_cache_in_their_folder_and_load_from_it(tmp_path):
    first = _run(tmp_path)
    path = first.split("PATH ")[1].split()[0]
    assert path.startswith(str(tmp_path / "fastconvt-kernels"))
    entries = [name for name in os.listdir(path) if name.endswith(".nbi")]
    assert entries and all(name.startswith("direct.") for name in entries)
    assert "LOG" not in _run(tmp_path)


def test_an_unreadable_cache_entry_is_compiled_again(tmp_path):
    path = _run(tmp_path).split("PATH ")[1].split()[0]
    for name in os.listdir(path):
        with open(os.path.join(path, name), "wb") as f:
            f.write(b"\x80\x04 not a pickle")
    out = _run(tmp_path)
    assert "discarding an unreadable compiled-kernel cache entry" in out
    assert "LOG" not in _run(tmp_path)  # the entry was written again, and loads


def test_with_no_writable_folder_kernels_compile_in_memory(tmp_path):
    out = _run(tmp_path, "read-only")
    assert out.count("no writable folder for compiled kernels") == 1
    assert "PATH None False" in out
