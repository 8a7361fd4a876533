# The two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/sample

.PHONY: run test venv bench clean

$(STAMP): requirements.txt requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

## Run the sample job (400 emails, batch mode) against the embedded emulator.
run: $(STAMP)
	$(PY) -m pipeline --task samples/sentiment.yaml --input samples/emails.jsonl \
	  --output $(OUT) --overwrite --pack-key-field customer_id --mode batch --api-base local

## Run the whole test suite.
test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m bench batch --records 100000

clean:
	rm -rf out .pytest_cache
