# slab-mmdet: the README's commands. Every target sets up the environment first
# (tools/setup_env.sh: seconds when it is ready, ~10 minutes on a fresh machine).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-openvino test lint demo mini-coco clean

setup:
	@bash tools/setup_env.sh

# The optional OpenVINO extra (requirements/openvino.lock); its tests skip where it is absent.
setup-openvino: setup
	$(PY) -m pip install --disable-pip-version-check -q -r requirements/openvino.lock
	$(PY) -c "import openvino; print('[setup] OpenVINO', openvino.get_version())"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .

demo: setup
	$(PY) demo/mini_coco_demo.py

mini-coco: setup
	$(PY) tools/make_mini_coco.py --out data/mini_coco

clean:
	rm -rf work_dirs .pytest_cache
