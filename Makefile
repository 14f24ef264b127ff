# fastconvt: build / test / bench machinery.
#
#   make test    regular (non-editable) install into $(VENV), then pytest
#   make bench   install the [bench] extra into $(VENV), then python -m bench
#   make dev     editable install with [test,bench] into $(VENV)
#   make fuzz    differential fuzzing against torch for FUZZ_MINUTES (failures: tests/fuzz_corpus/)
#   make soak    a SOAK_STEPS-step training run: RSS, threads and caches must not drift
#   make clean   remove $(VENV) and build artefacts
#
# Override on the command line, e.g.  make test VENV=/tmp/venv-ci PYTEST_ARGS="-k direct -x"

PYTHON      ?= python3
VENV        ?= .venv
# torch is installed FIRST and explicitly: torch==2.13.0 resolves to a CPU wheel
# on the project's index, whereas an unpinned torch would pull a multi-GB CUDA build.
# The package itself only asks for a range (torch>=2.1), already satisfied then.
TORCH       ?= torch==2.13.0
PYTEST_ARGS ?=
BENCH_ARGS  ?=
FUZZ_MINUTES ?= 10
SOAK_STEPS  ?= 10000

VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
empty :=
space := $(empty) $(empty)
# One stamp per torch spec, so changing TORCH re-runs the torch step.
TORCH_STAMP := $(VENV)/.stamp-torch-$(subst /,_,$(subst <,lt,$(subst >,gt,$(subst =,_,$(subst $(space),,$(TORCH))))))
# Heavy dependencies are stamp-guarded; they are re-installed when the
# packaging metadata changes.
META := setup.cfg pyproject.toml

.PHONY: test bench dev clean fuzz soak
.DELETE_ON_ERROR:

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "setuptools>=64" wheel

$(TORCH_STAMP): | $(VPY)
	$(PIP) install "$(TORCH)"
	touch $@

$(VENV)/.stamp-test-deps: $(TORCH_STAMP) $(META)
	rm -rf build
	$(PIP) install ".[test]"
	touch $@

$(VENV)/.stamp-bench-deps: $(TORCH_STAMP) $(META)
	rm -rf build
	$(PIP) install ".[bench]"
	touch $@

# Always re-install the project itself (quick: no deps, no build isolation),
# so edited sources are what gets tested. build/ is removed first because
# setuptools would otherwise ship stale files left in build/lib.
define install-project
	rm -rf build
	$(PIP) install --quiet --no-deps --force-reinstall --no-build-isolation .
	rm -rf build
endef

# Run from the repo root, but with -P (Python >= 3.11: no cwd on sys.path);
# pytest itself only prepends tests/ (see pyproject.toml): the installed copy
# of fastconvt is imported, never ./fastconvt (which lacks kernels/ anyway). FASTCONVT_EXPECT_INSTALLED makes
# tests/test_packaging.py assert exactly that.
test: $(VENV)/.stamp-test-deps
	$(install-project)
	@set +e; \
	FASTCONVT_EXPECT_INSTALLED=1 $(VPY) -P -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# Equivalent to `python -m bench`, except that the repo root is put at the END
# of sys.path: bench/ is found there, but fastconvt is the installed copy (the
# source tree's fastconvt/ has no kernels/ subfolder, so it can't be imported).
bench: $(VENV)/.stamp-bench-deps
	$(install-project)
	$(VPY) -P -c "import runpy, sys; sys.path.append('.'); runpy.run_module('bench', run_name='__main__', alter_sys=True)" $(BENCH_ARGS)

# The long runs, off the default suite, on the installed copy like `make test`.
fuzz: $(VENV)/.stamp-test-deps
	$(install-project)
	$(abspath $(VPY)) -P -W ignore tests/fuzzing.py $(FUZZ_MINUTES)

soak: $(VENV)/.stamp-test-deps
	$(install-project)
	$(abspath $(VPY)) -P tests/soak.py $(SOAK_STEPS)

dev: $(TORCH_STAMP)
	rm -rf build
	$(PIP) install -e ".[test,bench]"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -path ./.git -prune -o -path './.venv*' -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
