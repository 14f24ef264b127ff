"""Where Numba keeps the kernels' compiled machine code, and what makes it stale.

Numba's own cache checks only the modification time of the file that defines a
kernel: an edit to a helper in another module, to a compile flag or to Numba
itself could leave old machine code in use. Here every kernel is cached under a
folder named for a hash of everything that defines them (the sources of all the
``kernels`` modules, the compile flags, Numba's and Python's versions), so a
change to any of those starts a new folder and old code is never loaded.

The folder is the first writable one of ``$NUMBA_CACHE_DIR/fastconvt-kernels``,
``kernels/__pycache__`` (next to the sources, as Numba's default) and
``$XDG_CACHE_HOME/fastconvt/kernels`` (``~/.cache``): a read-only installation
caches in the user's folder, and with none writable the kernels compile in
memory, with one log line. A cache file that cannot be read (truncated,
corrupt) is deleted and the kernel compiled again.
"""
import glob
import hashlib
import logging
import os
import pickle
import sys
import tempfile

import numba
from numba.core import caching

log = logging.getLogger("fastconvt")
_HERE = os.path.dirname(os.path.abspath(__file__))


def kernels_version(flags):
    """A hash of what defines the compiled kernels: the modules' sources, the
    compile ``flags`` (any repr-able value), Numba's and Python's versions."""
    digest = hashlib.sha256(repr((flags, numba.__version__, sys.version)).encode())
    for path in sorted(glob.glob(os.path.join(_HERE, "*.py"))):
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def _writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def cache_path(version):
    """The folder this ``version`` of the kernels is cached in, or None if no
    candidate folder is writable."""
    user = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    roots = [os.path.join(numba.config.CACHE_DIR, "fastconvt-kernels")] * bool(
        numba.config.CACHE_DIR) + [os.path.join(_HERE, "__pycache__"),
                                   os.path.join(user, "fastconvt", "kernels")]
    for root in roots:
        path = os.path.join(root, version)
        if _writable(path):
            return path
    return None


class _KernelsLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """Numba's cache locator for functions defined in this package: ``path`` for
    all of them (the file name and line in each entry's name keep them apart)."""

    path = None

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno

    def get_cache_path(self):
        return self.path

    @classmethod
    def from_function(cls, py_func, py_file):
        if cls.path is None or os.path.dirname(os.path.abspath(py_file)) != _HERE:
            return None
        return super().from_function(py_func, py_file)


class _RecoveringCache(caching.FunctionCache):
    """Numba's function cache, except that an entry that cannot be read is
    removed (so the kernel compiles again and its entry is rewritten), not fatal."""

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                ImportError, IndexError, KeyError) as error:
            self._discard(error)
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
                KeyError) as error:  # the index it extends is unreadable
            self._discard(error)
            super().save_overload(sig, data)

    def _discard(self, error):
        index = self._cache_file._index_path
        log.warning("fastconvt: discarding an unreadable compiled-kernel cache entry %s (%s: "
                    "%s); the kernel compiles again", index, type(error).__name__, error)
        try:
            os.remove(index)
        except OSError:
            pass


def use(path):
    """Cache this package's kernels in ``path`` (None: compile in memory)."""
    _KernelsLocator.path = path
    if _KernelsLocator not in caching.CacheImpl._locator_classes:
        caching.CacheImpl._locator_classes.insert(0, _KernelsLocator)


def harden(module):
    """Give every cached Numba function of ``module`` the recovering cache."""
    for value in vars(module).values():
        cache = getattr(value, "_cache", None)
        if type(cache) is caching.FunctionCache:
            cache.__class__ = _RecoveringCache
