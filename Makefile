# Operator commands; each recipe is one line over a Python entry point. See README.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
KIND ?= runtime
ifdef KEYS_DIR
export REALTIME_KEYS_DIR := $(KEYS_DIR)
endif

.PHONY: run test keys rotate retire key-status jwks api-key api-keys revoke-api-key revoke lint format bench cluster cluster-stop clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e '.[dev]' && touch $@

run: $(VENV)/.installed
	$(PY) -m app.keys init && $(PY) -m app.apikeys dev && REALTIME_DEV=$${REALTIME_DEV:-true} $(PY) -m app.serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

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

revoke: $(VENV)/.installed
	@$(PY) -m app.revocations revoke $(if $(SESSION),--session "$(SESSION)",)$(if $(PROJECT),--project "$(PROJECT)",)$(if $(KID),--kid "$(KID)",)$(if $(API_KEY),--api-key "$(API_KEY)",)$(if $(REASON), --reason "$(REASON)",)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check . && $(VENV)/bin/mypy

format: $(VENV)/.installed
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed
	$(PY) -m bench $(if $(filter 1 true yes,$(QUICK)),--quick,)

cluster: $(VENV)/.installed
	$(PY) -m app.cluster start --port $(if $(filter file,$(origin PORT)),8080,$(PORT))$(if $(filter 1 true yes,$(TLS)), --tls,)

cluster-stop: $(VENV)/.installed
	$(PY) -m app.cluster stop

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
