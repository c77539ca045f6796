PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench soak notebook clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m phasegate.demo

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 -q -p no:cacheprovider --durations=25

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run.py

NB_VENV := .venv-notebook

$(NB_VENV)/.installed: requirements.txt requirements-notebook.txt pyproject.toml
	test -x $(NB_VENV)/bin/python || $(PY) -m venv $(NB_VENV)
	$(NB_VENV)/bin/python -m pip install -q --upgrade pip
	$(NB_VENV)/bin/python -m pip install -q -r requirements-notebook.txt
	$(NB_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

# On 127.0.0.1 only; as root (CI, containers) Jupyter refuses to start without --allow-root.
NB_PORT ?= 8888
notebook: $(NB_VENV)/.installed
	@echo "phasegate: Jupyter on http://127.0.0.1:$(NB_PORT)/ (the URL with its token follows)"
	cd notebooks && ../$(NB_VENV)/bin/jupyter notebook --no-browser --ip=127.0.0.1 --port=$(NB_PORT) \
		$$( [ "$$(id -u)" = 0 ] && echo --allow-root ) phase_signoff.ipynb

clean:
	rm -rf $(VENV) $(NB_VENV) data reports

soak: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python soak/run.py
