# `make run` serves chatapi on SQLite; `make test` runs the test suite; `make fuzz` fuzzes the live service
# against its OpenAPI schema. All create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHATAPI_HOST ?= 127.0.0.1
CHATAPI_PORT ?= 8000
CHATAPI_WORKERS ?= 1

.PHONY: run test fuzz lint format migrate bench clean

# A half-made .venv (no venv module, no network) is removed, so that the next run starts over.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip || { rm -rf $(VENV); exit 1; }

# Stamp files: reinstall only when the requirements change.
$(VENV)/.installed-run: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.installed-run

migrate: $(VENV)/.installed-run
	$(BIN)/python manage.py migrate --noinput

run: migrate
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/uvicorn chatapi.asgi:application --host $(CHATAPI_HOST) --port $(CHATAPI_PORT) \
		--workers $(CHATAPI_WORKERS) --lifespan on

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/run.py $(BENCH_ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# schemathesis against the service on a fresh SQLite database (see .ci/fuzz); FUZZ_ARGS go to `schemathesis run`.
fuzz: $(VENV)/.installed-dev
	.ci/fuzz $(FUZZ_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache .mypy_cache .hypothesis .schemathesis
