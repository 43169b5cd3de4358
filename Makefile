# Every target bootstraps its own virtual environment from the pinned requirement files.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV_SAM := .venv-sam
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
SAM_STAMP := $(VENV_SAM)/.stamp
REQS := requirements/runtime.txt requirements/dev.txt requirements/lock.txt pyproject.toml
SCALE ?= 1000000
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: measured on this 2-core machine (shared, load 4-5),
# the whole suite took 6m04s serially and 4m49s with two workers (much of it waits on
# PostgreSQL, moto and subprocesses). Each worker starts its own embedded PostgreSQL and moto
# server (session fixtures); every test makes uniquely named databases and stacks. 0 = serial.
PYTEST_WORKERS ?= 2

.PHONY: help demo test unit integration e2e template lint format security check build bench clean venv rds-ca sam-venv sam-local

help:
	@echo "make demo | test | unit | integration | e2e | template | lint | format | security | check | build | bench [SCALE=N] | sam-local [SAM_SCALE=N] | clean"
	@echo "skip the slow tests: make test PYTEST_ARGS='-m \"not slow\"'"

$(STAMP): $(REQS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt -c requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

venv: $(STAMP)

$(SAM_STAMP): requirements/sam.txt
	@test -x $(VENV_SAM)/bin/python || $(PYTHON) -m venv $(VENV_SAM)
	$(VENV_SAM)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_SAM)/bin/python -m pip install --quiet -r requirements/sam.txt
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

security: $(STAMP)
	$(BIN)/bandit -q -c pyproject.toml -r shared tools functions
	$(BIN)/pip-audit --strict --no-deps --disable-pip -r requirements/lock.txt

check: lint security test

sam-venv: $(SAM_STAMP)

# sam build only copies (no requirements.txt anywhere): offline, no Docker, no local python3.13.
build: $(SAM_STAMP)
	SAM_CLI_TELEMETRY=0 $(VENV_SAM)/bin/sam build --template-file template.yaml

# The Amazon RDS CA bundle, shipped in the layer so verified TLS to RDS works in Lambda
# (needs internet; run once before `make build` when the warehouse or source is on RDS).
rds-ca:
	curl -fsSL https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem \
		-o shared/totes/certs/rds-global-bundle.pem

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
	$(BIN)/python -m totes bench --scale $(SCALE) --output bench-results.json

clean:
	rm -rf $(VENV) $(VENV_SAM) .aws-sam .pytest_cache .ruff_cache bench-results.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
