# Operator commands; each recipe is one line over a Python entry point. See README.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
KIND ?= runtime
LOCK_FLAGS = --upgrade --generate-hashes --universal --python-version 3.11 --quiet --custom-compile-command 'make lock'
ifdef KEYS_DIR
export REALTIME_KEYS_DIR := $(KEYS_DIR)
endif

.PHONY: run test test-latest lock keys rotate retire key-status jwks api-key api-keys revoke-api-key revoke inspect lint format bench cluster cluster-stop clean

# Every install comes from the hashed lock (docs/decisions.md, "Locked installs"); `make lock` refreshes it.
$(VENV)/.installed: requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --require-hashes --no-deps -r requirements-dev.lock && $(PY) -m pip install -q --no-deps --no-build-isolation -e . && touch $@

run: $(VENV)/.installed
	$(PY) -m app.keys init && $(PY) -m app.apikeys dev && REALTIME_DEV=$${REALTIME_DEV:-true} $(PY) -m app.serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite on the newest releases pyproject.toml allows, in an environment of its own: drift shows here.
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest && .venv-latest/bin/python -m pip install -q --upgrade pip && .venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]' && .venv-latest/bin/python -m pytest $(PYTEST_ARGS)

# Re-resolve both locks (runtime for the image, dev for make run/test) with hashes for every platform.
lock:
	$(PYTHON) -m venv .venv-lock && .venv-lock/bin/python -m pip install -q --require-hashes --no-deps -r requirements-tools.lock && .venv-lock/bin/python -m uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements-dev.lock && echo 'setuptools>=77' | .venv-lock/bin/python -m uv pip compile pyproject.toml - $(LOCK_FLAGS) -o requirements.lock

keys: $(VENV)/.installed
	$(PY) -m app.keys init

rotate: $(VENV)/.installed
	$(PY) -m app.keys rotate $(if $(filter 1 true yes,$(FORCE)),--force,)

retire: $(VENV)/.installed
	$(PY) -m app.keys retire $(if $(filter 1 true yes,$(FORCE)),--force,)

key-status: $(VENV)/.installed
	$(PY) -m app.keys status

jwks: $(VENV)/.installed
	@$(PY) -m app.keys jwks

api-key: $(VENV)/.installed
	@$(PY) -m app.apikeys create --project "$(PROJECT)" --kind $(KIND) $(if $(EXPIRES),--expires-days "$(EXPIRES)",)

api-keys: $(VENV)/.installed
	@$(PY) -m app.apikeys list

revoke-api-key: $(VENV)/.installed
	@$(PY) -m app.apikeys revoke --id "$(ID)"

inspect: $(VENV)/.installed
	@$(PY) -m app.tickets inspect $(if $(TICKET),"$(TICKET)",-)

revoke: $(VENV)/.installed
	@$(PY) -m app.ops.revocations revoke $(if $(SESSION),--session "$(SESSION)",)$(if $(PROJECT),--project "$(PROJECT)",)$(if $(KID),--kid "$(KID)",)$(if $(API_KEY),--api-key "$(API_KEY)",)$(if $(REASON), --reason "$(REASON)",)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check . && $(VENV)/bin/mypy

format: $(VENV)/.installed
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed
	$(PY) -m bench $(if $(filter 1 true yes,$(QUICK)),--quick,)$(if $(BASELINE), --baseline-tree $(BASELINE),)

cluster: $(VENV)/.installed
	$(PY) -m app.ops.cluster start --port $(if $(filter file,$(origin PORT)),8080,$(PORT))$(if $(filter 1 true yes,$(TLS)), --tls,)

cluster-stop: $(VENV)/.installed
	$(PY) -m app.ops.cluster stop

clean:
	rm -rf $(VENV) .venv-latest .venv-lock .mypy_cache .ruff_cache .pytest_cache
