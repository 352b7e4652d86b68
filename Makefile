# Set-up and the everyday commands. Every target creates .venv and installs the project first.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mrcnn-installed

# The TensorFlow peers of `make bench` (README, Benchmarks), optional: a Python with TensorFlow 2,
# tf_keras, h5py and scikit-image in an environment of its own, and Matterport's Mask_RCNN code.
# `make bench-peers` sets both up here; TF_PYTHON and MATTERPORT point at others.
TF_VENV ?= .venv-tf
TF_PYTHON ?= $(or $(MRCNN_TF_PYTHON),$(TF_VENV)/bin/python)
MATTERPORT ?= third_party/Mask_RCNN
MATTERPORT_COMMIT := 3deaec5d902d16e1daf56b62d5971d428dc920bc
HAVE_TF := $(wildcard $(TF_PYTHON))
HAVE_MATTERPORT := $(wildcard $(MATTERPORT)/mrcnn/model.py $(MATTERPORT)/model.py)
OPS_PEER := $(if $(HAVE_TF),--tensorflow-python $(TF_PYTHON))
INFERENCE_PEER := $(if $(and $(HAVE_TF),$(HAVE_MATTERPORT)),--matterport $(MATTERPORT) \
	--tensorflow-python $(TF_PYTHON))

.PHONY: install demo test bench bench-peers clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" setuptools wheel ninja numpy
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test,export]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) demo.py $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(if $(HAVE_TF),,@echo "note: no TensorFlow at TF_PYTHON=$(TF_PYTHON): the ops are timed \
	without it. 'make bench-peers' installs it (or see README, Benchmarks).")
	$(PY) benchmarks/ops.py $(OPS_PEER) $(OPS_ARGS)
	$(if $(INFERENCE_PEER),,@echo "note: detect() is timed without Matterport's: it needs \
	TensorFlow at TF_PYTHON and Matterport's code at MATTERPORT=$(MATTERPORT); \
	'make bench-peers' sets both up.")
	$(PY) benchmarks/inference.py $(INFERENCE_PEER) $(INFERENCE_ARGS)
	$(PY) benchmarks/roofline.py $(ROOFLINE_ARGS)

# TensorFlow in $(TF_VENV), and Matterport's Mask_RCNN (MIT licence) at the commit that
# benchmarks/matterport_tf.py adapts, cloned into $(MATTERPORT); neither is part of mrcnn.
bench-peers:
	test -x $(TF_VENV)/bin/python || $(PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/python -m pip install --quiet tensorflow tf_keras h5py scikit-image
	test -d $(MATTERPORT) || git clone --quiet https://github.com/matterport/Mask_RCNN \
		$(MATTERPORT)
	git -C $(MATTERPORT) checkout --quiet $(MATTERPORT_COMMIT)

clean:
	rm -rf build mrcnn/_C*.so *.egg-info
