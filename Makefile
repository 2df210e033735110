# Two commands: `make demo` (set up, then explore, train, tune and annotate generated faces) and `make test` (the full suite,
# as CI runs it); `make test-fast` leaves out the tests marked slow (pytest.ini) for a quick check while editing.
PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= outputs/demo
DEMO_EPOCHS ?= 8

.PHONY: setup demo test test-fast tensorboard clean

# The venv is rebuilt only when requirements.txt changes.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

setup: $(VENV)/.installed

demo: setup
	@# faces of a version without demo_data.json: demo_data.py refuses a folder it cannot tell is its own
	@[ -e $(OUT)/data ] && [ ! -f $(OUT)/data/demo_data.json ] && rm -rf $(OUT)/data || true
	$(PY) demo_data.py --out-dir $(OUT)/data --min-age 20 --max-age 50 --per-age 24
	$(PY) eda.py --data-dir $(OUT)/data --out-dir $(OUT)
	$(PY) train.py --splits $(OUT)/splits --model simplecnn --epochs $(DEMO_EPOCHS) --out-dir $(OUT)/run --overwrite \
		--data-description "synthetic demo faces (demo_data.py), ages 20-50"
	$(PY) hyperparameter_tunning.py --splits $(OUT)/splits --model simplecnn --out-dir $(OUT)/search \
		--lrs 3e-4,1e-3,3e-3 --weight-decays 0,1e-3 --epochs-per-trial 2 --subset-fraction 0.5 --skip-final
	$(PY) inference.py --model $(OUT)/run/model.onnx --input-dir $(OUT)/data/35 --output-dir $(OUT)/annotated --whole-image
	@echo "demo finished: outputs in $(OUT)/ (open TensorBoard with: make tensorboard)"

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir $(OUT) --port 6006

clean:
	rm -rf outputs .pytest_cache
