# Two commands: `make demo` (set up, then explore, train, tune and annotate generated faces) and `make test` (the full suite,
# as CI runs it); `make test-fast` leaves out the tests marked slow (pytest.ini) for a quick check while editing.
PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# := so that an OUT or DEMO_OUT in the shell's environment never moves it (make demo DEMO_OUT=dir still does)
DEMO_OUT := outputs/demo
DEMO_EPOCHS ?= 8

.PHONY: setup demo test test-fast tensorboard clean

# The venv is rebuilt only when requirements.txt or constraints.txt changes; constraints.txt pins what the
# requirements pull in (protobuf, scipy ...), so a later clone installs the very set the tests passed with.
$(VENV)/.installed: requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) demo_data.py --out-dir $(DEMO_OUT)/data --min-age 20 --max-age 50 --per-age 24
	$(PY) eda.py --data-dir $(DEMO_OUT)/data --out-dir $(DEMO_OUT)
	$(PY) train.py --splits $(DEMO_OUT)/splits --model simplecnn --epochs $(DEMO_EPOCHS) --out-dir $(DEMO_OUT)/run --overwrite \
		--data-description "synthetic demo faces (demo_data.py), ages 20-50"
	$(PY) hyperparameter_tunning.py --splits $(DEMO_OUT)/splits --model simplecnn --out-dir $(DEMO_OUT)/search \
		--lrs 3e-4,1e-3,3e-3 --weight-decays 0,1e-3 --epochs-per-trial 2 --subset-fraction 0.5 --skip-final
	$(PY) inference.py --model $(DEMO_OUT)/run/model.onnx --input-dir $(DEMO_OUT)/data/35 --output-dir $(DEMO_OUT)/annotated --whole-image
	@echo "demo finished: outputs in $(DEMO_OUT)/ (open TensorBoard with: make tensorboard)"

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir $(DEMO_OUT) --port 6006

clean:
	rm -rf outputs .pytest_cache
