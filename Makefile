# The two commands: `make demo` runs the main job, `make test` runs the test suite.
# Each creates the virtual environment in .venv first (once; again when pyproject.toml changes).

# Python 3.11 is preferred and the only version tested (the pinned torch wheels on the test machines are
# for 3.11); a newer python3 is used, with a note, where there is no python3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
define CHECK_PYTHON
import sys
found = sys.version_info[:2]
if found < (3, 11):
    sys.exit(f"tvp needs Python 3.11 or newer, found {sys.version.split()[0]} ($(PYTHON))")
if found != (3, 11):
    print(f"note: using Python {found[0]}.{found[1]}; tvp is tested on 3.11 only")
endef
export CHECK_PYTHON
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c "$$CHECK_PYTHON"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tvp demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) tvp-demo .pytest_cache
