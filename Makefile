# nanoinstruct runbook. `make demo` and `make test` set up everything they need.
PY     := .venv/bin/python
STAMP  := .venv/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install test demo bench clean
install: $(STAMP)

# torch is pinned here: any other spec makes pip fetch gigabytes of CUDA wheels on a CPU box.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	rm -f .venv/.installed-* && touch $@

# Two runs: the Triton kernels run on CPU only under the interpreter, which must be
# switched on before triton is imported, so they get a process of their own.
test: install
	$(PY) -m pytest tests --ignore=tests/triton
	TRITON_INTERPRET=1 NANOINSTRUCT_KERNELS=triton $(PY) -m pytest tests/triton

# Until the stages land: what exists, measured. Greedy sampling with the KV cache against
# recomputing every step on the tiny preset: same tokens, and the speed of each.
demo: install
	$(PY) -m nanoinstruct.sample --bench --max_new_tokens=128

bench: install
	$(PY) -m kernels.bench

clean:
	rm -rf out .pytest_cache .hypothesis
