# Genbox — everything a newcomer or CI needs, from a fresh clone.
#   make demo   start the sandbox, API, worker and beat; walk the quickstart over HTTP; stop
#   make run    the same stack, staying up (embedded defaults: SQLite, local files, filesystem broker)
#   make test   the test suite on PostgreSQL, Redis and an S3 endpoint over HTTP (moto)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
export PYTHONPATH := $(CURDIR)/backend

.PHONY: help install demo run migrate worker test lint clean

help:
	@echo "make demo    a whole generation on this machine: sandbox, API, worker; exits 0 when it worked"
	@echo "make run     start the API on http://127.0.0.1:$(PORT)/ with a worker, beat and the sandbox"
	@echo "make test    run the tests against PostgreSQL, Redis and S3 (moto server)"
	@echo "make lint    ruff"
	@echo "make clean   remove var/ (local database, media, broker) — keeps .venv"

# The virtual environment, rebuilt when a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

install: $(STAMP)

migrate: $(STAMP)
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py migrate --noinput

demo: $(STAMP)
	$(BIN)/python scripts/stack.py demo

run: $(STAMP)
	$(BIN)/python scripts/stack.py run --port $(PORT) $(if $(SANDBOX_PORT),--sandbox-port $(SANDBOX_PORT))

worker: $(STAMP)
	DEBUG=$${DEBUG:-true} $(BIN)/celery -A config worker --queues=celery,gpu --loglevel=INFO

test: $(STAMP)
	bash scripts/test.sh $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check backend tests bench scripts services

clean:
	rm -rf var staticfiles .pytest_cache
