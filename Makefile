# Two commands do everything on a fresh clone (see README): `make run` and `make test`.
# Both create .venv/ if needed and install the locked dependencies first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | md5sum | cut -c1-12)
ACTIVATE := source $(VENV)/bin/activate

.PHONY: setup run test browser lint lock-check repro-check expected lock show ui screenshots server server-stop

setup: $(STAMP)

# pip's log boiled down to how far the install is: every package on a terminal (one line, rewritten), every 25th
# in a log; then the unpacking, the long part (torch alone is a few GB).
PROGRESS = awk -v total=$$(grep -c '==' requirements.lock) -v tty=$$([ -t 2 ] && echo 1) \
	'/^(Collecting|Processing|Requirement already satisfied)/ { n++; name = $$(/^Req/ ? 4 : 2); sub(".*/", "", name); \
		if (tty) printf "\r  %d/%d %-60.60s", n, total, name; else if (n % 25 == 0 || n == total) print "  " n "/" total; fflush() } \
	/^Installing collected packages/ { if (tty) print ""; print "  unpacking the downloaded packages (a few minutes: torch is large)"; fflush() }'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing $$(grep -c '==' requirements.lock) locked packages into $(VENV)/ (log: $(VENV)/install.log)"
	@$(PY) -m pip install --no-input -r requirements.lock 2>&1 | tee $(VENV)/install.log | $(PROGRESS); \
		test $${PIPESTATUS[0]} -eq 0 \
		|| { tail -n 40 $(VENV)/install.log; echo "dependency install failed: see $(VENV)/install.log"; exit 1; }
	@$(PY) -m pip install --no-input --no-deps --no-build-isolation -e . >> $(VENV)/install.log 2>&1 \
		|| { tail -n 40 $(VENV)/install.log; echo "installing genlab failed: see $(VENV)/install.log"; exit 1; }
	@$(ACTIVATE) && python -m genlab.pipeline.offline_plots >> $(VENV)/install.log 2>&1 \
		|| echo "note: dvc plots pages will load Vega from the internet (no npm? see $(VENV)/install.log)"
	@rm -f $(VENV)/.installed-* && touch $@

# The default experiment end to end: download -> train -> evaluate -> sample.
run: setup
	$(ACTIVATE) && dvc repro

# Lint and format checks, then the test suite on TEST_WORKERS processes (pytest-xdist; default: the cores, at
# most 4): its end-to-end tests spend most of their time in one-core work (process starts, DVC, MLflow). On 2
# cores (AMD EPYC, Dec 2026): 1661 s in one process before, 879 s on two workers with the end-to-end tests
# sharing one reproduced project. pytest's exit code 5 (nothing collected) is reported as a failure.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
test: setup lint browser
	@$(ACTIVATE) && { python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS); rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating this as a failure"; exit 1; fi; exit $$rc; }

# The report page is tested in Debian's chromium: installed here when missing and apt-get can (root);
# elsewhere that one test is skipped with a note (CI=true makes it fail instead).
browser: setup
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's chromium for the browser test (log: $(VENV)/chromium.log)"; \
			{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
				> $(VENV)/chromium.log 2>&1 || { tail -n 20 $(VENV)/chromium.log; exit 1; }; \
		else echo "no chromium and no root to apt-get it: the browser test will be skipped"; fi; }

# ruff: lint and format check (`ruff check --fix . && ruff format .` mends most of what it reports).
lint: setup
	$(ACTIVATE) && ruff check . && ruff format --check .

# Rerun the committed default experiment: bit-exact against the committed metrics/ on the same machine kind
# (else two reruns here), and inside the seed bands of metrics/expected.json on any machine.
repro-check: setup
	$(ACTIVATE) && python -m genlab.pipeline.reproduce

# dvc.lock records this commit's code and params (a second; CI runs it first instead of finding out at its end).
lock-check: setup
	$(ACTIVATE) && python -m genlab.pipeline.reproduce lock

# Rebuild metrics/expected.json: the committed experiment run with 8 seeds, bands mean +- 4 sd (~15 min).
expected: setup
	$(ACTIVATE) && python -m genlab.pipeline.reproduce expected $(EXPECTED_ARGS)

# Re-resolve requirements.lock from pyproject.toml's dependencies (needs the package index).
lock:
	rm -rf /tmp/genlab-lock && python3 -m venv /tmp/genlab-lock
	/tmp/genlab-lock/bin/pip install -q setuptools -e . && /tmp/genlab-lock/bin/pip freeze --all --exclude-editable --exclude pip > requirements.lock

# dvc exp show narrowed to the active family's params and the key test numbers (SHOW_ARGS="--only-changed", "--md").
show: setup
	$(ACTIVATE) && python -m genlab.pipeline.show $(SHOW_ARGS)

# mlflow ui on the project's store; the URL is printed once the server answers (UI_PORT=5001 for another port).
UI_PORT ?= 5000
ui: setup
	$(ACTIVATE) && python -m genlab.tracking.store relocate && python -m genlab.tracking.store ui $(UI_PORT)

# A team's tracking server (docs/team.md): PostgreSQL + MLflow with logins on 127.0.0.1:5050, data in .server/.
# The first start needs the admin password in MLFLOW_AUTH_ADMIN_PASSWORD (or a file named by GENLAB_ADMIN_PASSWORD_FILE).
server: setup
	$(ACTIVATE) && python -m genlab.tracking.server start

server-stop: setup
	$(ACTIVATE) && python -m genlab.tracking.server stop

# docs/figures/ui-*.png: mlflow ui on a copy of the store, photographed by headless chromium (apt install chromium).
screenshots: setup
	$(ACTIVATE) && python docs/screenshots.py $(SCREENSHOTS_ARGS)
