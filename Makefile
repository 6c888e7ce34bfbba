# The two commands of the README. Each creates .venv and installs everything first.
.PHONY: run test setup
run: setup
	.venv/bin/portkit run models/recipes/default.yaml
test: setup
	.venv/bin/python -m pytest -q
setup:
	bash scripts/setup.sh
