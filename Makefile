# The two set-up commands of the README, plus developer conveniences.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: demo test test-slow lint install install-test browser

install:
	$(PIP) install -q -e .

install-test:
	$(PIP) install -q -e ".[test]"

# Debian's chromium for the end-to-end browser test (Playwright's own download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "note: install Debian's chromium (sudo apt-get install chromium) for the browser test"; fi; }

# Launch the grounding demo on the shipped default model (http://127.0.0.1:7860).
demo: install
	$(PYTHON) app.py

# The test suite CI runs (slow tests are excluded; see `make test-slow`).
test: install-test browser
	$(PYTHON) -m pytest -q

test-slow: install-test
	$(PYTHON) -m pytest -q -m slow

lint: install-test
	$(PYTHON) -m ruff check simvg distill tests bench app.py
