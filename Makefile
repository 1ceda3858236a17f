# nanoinstruct runbook. `make demo` and `make test` set up everything they need.
PY     := .venv/bin/python
STAMP  := .venv/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: install test demo clean
install: $(STAMP)

# torch is pinned here: any other spec makes pip fetch gigabytes of CUDA wheels on a CPU box.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	rm -f .venv/.installed-* && touch $@

test: install
	$(PY) -m pytest tests

clean:
	rm -rf out .pytest_cache .hypothesis
