# Every target bootstraps its own virtual environment from the pinned requirement files.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV_SAM := .venv-sam
VENV_CHECKOV := .venv-checkov
# dlt's own environment for `make bench-dlt` (pinned, never mixed into .venv).
VENV_DLT := .venv-dlt
DLT_STAMP := $(VENV_DLT)/.stamp
ROUNDS ?= 3
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
SAM_STAMP := $(VENV_SAM)/.stamp
CHECKOV_STAMP := $(VENV_CHECKOV)/.stamp
# Tool environments (SAM CLI, checkov) install only from hash-pinned locks: every package,
# transitive ones too, is checked against its sha256, and nothing is built from source (a
# source build would fetch its build requirements unverified). pip itself comes first, from
# its own lock, instead of an unpinned `pip install --upgrade pip`.
PIP_LOCKED := -m pip install --quiet --require-hashes --only-binary :all:
REQS := requirements/runtime.txt requirements/dev.txt requirements/lock.txt pyproject.toml
SCALE ?= 1000000
PYTEST_ARGS ?=
# More `python -m totes bench` options, e.g. BENCH_ARGS='--batch-sweep 150000 --pipeline-rounds 2'.
BENCH_ARGS ?=
# pytest-xdist workers for `make test`: measured on this 2-core machine (shared, load 4-5),
# the whole suite took 6m04s serially and 4m49s with two workers (much of it waits on
# PostgreSQL, moto and subprocesses). Each worker starts its own embedded PostgreSQL and moto
# server (session fixtures); every test makes uniquely named databases and stacks. 0 = serial.
PYTEST_WORKERS ?= 2
# `make venv PYTHON=/path/to/python3.13` (or PYTHON in the environment, as .ci/run sets it)
# builds .venv with that interpreter, and recreates a .venv made by another Python version.
# Without PYTHON, .venv keeps the interpreter it was made with.
PY_VERSION := import sys; print("%d.%d.%d" % sys.version_info[:3])
ifneq ($(filter command line environment,$(origin PYTHON)),)
ifneq "$(shell $(PYTHON) -c '$(PY_VERSION)' 2>&1)" "$(shell $(BIN)/python -c '$(PY_VERSION)' 2>/dev/null)"
VENV_REBUILD := 1
endif
endif

.PHONY: help demo test unit integration e2e template lint format security check build bench bench-dlt clean venv \
	rds-ca sam-venv checkov-venv checkov sam-local FORCE

help:
	@echo "make demo | test | unit | integration | e2e | template | lint | format | security | checkov | check | build | bench [SCALE=N] | bench-dlt [SCALE=N ROUNDS=3] | sam-local [SAM_SCALE=N] | clean"
	@echo "skip the slow tests: make test PYTEST_ARGS='-m \"not slow\"'"
	@echo "another interpreter for .venv: make venv PYTHON=/path/to/python3.13"

$(STAMP): $(REQS) $(if $(VENV_REBUILD),FORCE)
	$(if $(VENV_REBUILD),rm -rf $(VENV))
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt -c requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

venv: $(STAMP)

# Recreated whenever its lock changes, so the environment holds exactly the lock.
$(SAM_STAMP): requirements/pip.lock requirements/sam.lock
	rm -rf $(VENV_SAM)
	$(PYTHON) -m venv $(VENV_SAM)
	$(VENV_SAM)/bin/python $(PIP_LOCKED) -r requirements/pip.lock
	$(VENV_SAM)/bin/python $(PIP_LOCKED) -r requirements/sam.lock
	@touch $@

$(CHECKOV_STAMP): requirements/pip.lock requirements/checkov.lock
	rm -rf $(VENV_CHECKOV)
	$(PYTHON) -m venv $(VENV_CHECKOV)
	$(VENV_CHECKOV)/bin/python $(PIP_LOCKED) -r requirements/pip.lock
	$(VENV_CHECKOV)/bin/python $(PIP_LOCKED) -r requirements/checkov.lock
	@touch $@

demo: $(STAMP)
	$(BIN)/python -m totes demo

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# One folder of the suite each (tests/unit needs no server; template needs `make build` for
# the two SAM CLI tests).
unit integration e2e template: $(STAMP)
	$(BIN)/python -m pytest tests/$@ $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# bandit, checkov (offline), then pip-audit LAST: it needs its vulnerability service, which
# is out of reach on the build machines, where --strict makes it fail loudly instead of passing
# without auditing anything (it does its real job in the GitHub workflow). Keep it out of .ci/run.
security: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/bandit -q -c pyproject.toml -r shared tools functions
	$(MAKE) --no-print-directory checkov
	status=0; \
	$(BIN)/pip-audit --strict --no-deps --disable-pip -r requirements/lock.txt || status=1; \
	$(BIN)/pip-audit --strict --disable-pip --require-hashes -r requirements/pip.lock \
		-r requirements/sam.lock -r requirements/checkov.lock || status=1; \
	exit $$status

# The IaC scanner on template.yaml, offline: no platform download, no update check. Checks that
# do not apply are skipped in the template's own Metadata, each with its reason.
checkov: $(CHECKOV_STAMP)
	CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE $(VENV_CHECKOV)/bin/checkov \
		--file template.yaml --framework cloudformation --skip-download --compact --quiet

checkov-venv: $(CHECKOV_STAMP)

check: lint security test

sam-venv: $(SAM_STAMP)

# sam build copies, and runs the Makefiles of functions/iceberg and layers/adbc (pinned wheels
# from hash-pinned locks: PyPI or pip's cache); no requirements.txt anywhere, no Docker, no
# local python3.13.
build: $(SAM_STAMP)
	SAM_CLI_TELEMETRY=0 $(VENV_SAM)/bin/sam build --template-file template.yaml

# The Amazon RDS CA bundle, shipped in the layer so verified TLS to RDS works in Lambda. The
# CI build job runs it before `make build`; by hand, run it once before `make build` when the
# warehouse or source is on RDS (needs the internet). HTTPS only; the download is checked by
# sam/rds_ca.py (only Amazon RDS CA certificates, at least one unexpired; and, when
# RDS_CA_SHA256 is set, exactly that reviewed bundle) before it replaces the layer's copy.
RDS_CA := shared/totes/certs/rds-global-bundle.pem
RDS_CA_URL := https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
RDS_CA_SHA256 ?=
rds-ca:
	curl --proto '=https' --tlsv1.2 -fsSL $(RDS_CA_URL) -o $(RDS_CA).download
	$(PYTHON) sam/rds_ca.py $(RDS_CA).download --sha256 "$(RDS_CA_SHA256)" \
		|| { rm -f $(RDS_CA).download; exit 1; }
	mv $(RDS_CA).download $(RDS_CA)

# The whole chain through `sam local invoke` in Docker, offline: build, make sure the Lambda base
# image is there (pulled, or the local stand-in built when it cannot be pulled), then one cycle
# of a generated source through `run --invoker sam-local`, checked against the same cycle run
# in-process. The Docker daemon is yours to start; nothing else is left running.
SAM_SCALE ?= 2000
DOCKER_HINT := start the Docker daemon (Linux: sudo systemctl start docker, or sudo dockerd &; macOS/Windows: Docker Desktop) and retry
sam-local: $(STAMP)
	@command -v docker >/dev/null || { echo "make sam-local: no docker command: install Docker (Debian/Ubuntu: apt-get install docker.io)" >&2; exit 1; }
	@timeout 20 docker info >/dev/null 2>&1 || { echo "make sam-local: Docker does not answer (docker info failed): $(DOCKER_HINT)" >&2; exit 1; }
	$(MAKE) --no-print-directory build
	tools/lambda_image/ensure.sh
	$(BIN)/python -m totes sam-local check --scale $(SAM_SCALE)

bench: $(STAMP)
	$(BIN)/python -m totes bench --scale $(SCALE) --output bench-results.json $(BENCH_ARGS)

$(DLT_STAMP): requirements/bench-dlt.txt
	rm -rf $(VENV_DLT)
	$(PYTHON) -m venv $(VENV_DLT)
	$(VENV_DLT)/bin/python -m pip install --quiet -r requirements/bench-dlt.txt
	@touch $@

# Our initial chain against dlt (sql_database, pyarrow backend, parquet via ADBC) on one
# source, alternating, ROUNDS rounds, medians and ratios (tools/totes_tools/local/bench_dlt.py).
bench-dlt: $(STAMP) $(DLT_STAMP)
	$(BIN)/python -m totes_tools.local.bench_dlt --scale $(SCALE) --rounds $(ROUNDS) \
		--dlt-python $(VENV_DLT)/bin/python --output bench-dlt-results.json

clean:
	rm -rf $(VENV) $(VENV_SAM) $(VENV_CHECKOV) $(VENV_DLT) .aws-sam .pytest_cache .ruff_cache \
		bench-results.json bench-dlt-results.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
