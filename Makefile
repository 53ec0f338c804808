# The README's two commands: `make serve` and `make test`. Each creates .venv (Python 3.12) when it is
# missing, of another Python, or older than pyproject.toml, and otherwise reuses it.

SHELL := /bin/bash
VENV ?= .venv
STAMP := $(VENV)/.installed
HELICAL_PLATFORM_PORT ?= 5006
HELICAL_PLATFORM_ADDRESS ?= localhost
# host[:port] as users type it, comma-separated: the pages allowed to open the dashboard's websocket, and the only
# Host names the server answers on any request (app/server_access.py; others get 403, DNS rebinding). Bokeh's own
# default without the option is localhost:<port> too; it is given explicitly so that it is visible, and never '*'.
HELICAL_PLATFORM_ALLOW_ORIGIN ?= localhost:$(HELICAL_PLATFORM_PORT)
comma := ,
WEBSOCKET_ORIGINS := $(foreach o,$(subst $(comma), ,$(HELICAL_PLATFORM_ALLOW_ORIGIN)),--allow-websocket-origin $(o))
# Python 3.12: python3.12 on PATH, else pyenv's, else PYTHON312=/path/to/python3.12 make ...
PYTHON312 ?= $(shell for c in python3.12 $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	"$$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1 && { command -v "$$c"; break; }; done)

.PHONY: serve test test-fast lint venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if ! $(VENV)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then \
	  test -n "$(PYTHON312)" || { echo "Python 3.12 not found: install it (e.g. pyenv install 3.12) or set PYTHON312=/path/to/python3.12" >&2; exit 1; }; \
	  echo "creating $(VENV) with $(PYTHON312)"; rm -rf $(VENV); $(PYTHON312) -m venv $(VENV); \
	fi
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

serve: $(STAMP)
	@case '$(HELICAL_PLATFORM_ALLOW_ORIGIN)' in *'*'*|'') echo "HELICAL_PLATFORM_ALLOW_ORIGIN must name hosts (host:port), never '*'" >&2; exit 1;; esac
	@echo "Helical AI Platform: http://$(HELICAL_PLATFORM_ADDRESS):$(HELICAL_PLATFORM_PORT)/"
	HELICAL_PLATFORM_PORT=$(HELICAL_PLATFORM_PORT) HELICAL_PLATFORM_ADDRESS=$(HELICAL_PLATFORM_ADDRESS) \
	  exec $(VENV)/bin/panel serve panel_serve.py --index panel_serve --plugins app.rest --warm \
	  --address $(HELICAL_PLATFORM_ADDRESS) --port $(HELICAL_PLATFORM_PORT) $(WEBSOCKET_ORIGINS) $(SERVE_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The edit loop: no browser, fault, served or slow tests (docs/TESTING.md); `make test` stays the whole suite.
FAST := not browser and not faults and not served and not slow
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -m "$(FAST)" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

print-python:
	@echo "$(PYTHON312)"
