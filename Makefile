# Genbox — everything a newcomer or CI needs, from a fresh clone.
#   make demo   start the sandbox, API, worker and beat; walk the quickstart over HTTP; stop
#   make run    the same stack, staying up (embedded defaults: SQLite, local files, filesystem broker)
#   make test       every test: on PostgreSQL, Redis, an S3 endpoint over HTTP (moto) and real Celery workers
#   make test-unit     the units, in seconds: no database, broker or S3 (embedded defaults)
#   make test-sandbox  the fake provider servers' own tests (no database, broker or S3 either)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
export PYTHONPATH := $(CURDIR)/backend

.PHONY: help install demo run migrate worker test test-unit test-sandbox lint clean

help:
	@echo "make demo    a whole generation on this machine: sandbox, API, worker; exits 0 when it worked"
	@echo "make run     start the API on http://127.0.0.1:$(PORT)/ with a worker, beat and the sandbox"
	@echo "make test    run every test against PostgreSQL, Redis, S3 (moto server) and a real worker"
	@echo "make test-unit     the unit tests only, in seconds: no PostgreSQL, Redis or S3 needed"
	@echo "make test-sandbox  the sandbox's own tests (the fake provider servers), no services needed either"
	@echo "make lint    ruff"
	@echo "make clean   remove var/ (local database, media, broker) — keeps .venv"

# The virtual environment, rebuilt when a requirements file changes.
$(STAMP): requirements.txt requirements-sandbox.txt requirements-dev.txt
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
	DEBUG=$${DEBUG:-true} PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start worker

test: $(STAMP)
	bash scripts/test.sh $(ARGS)

# The parts that need no PostgreSQL, Redis or S3, on the embedded defaults (a test that touches the database fails).
NO_SERVICES := env -u DATABASE_URL -u CELERY_BROKER_URL -u AWS_STORAGE_BUCKET_NAME DEBUG=true

test-unit: $(STAMP)
	$(NO_SERVICES) $(BIN)/python -m pytest tests/unit $(ARGS)

test-sandbox: $(STAMP)
	$(NO_SERVICES) $(BIN)/python -m pytest sandbox/tests $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check backend sandbox tests bench scripts services

clean:
	rm -rf var staticfiles .pytest_cache
