.PHONY: setup run test lint bench
setup:
	bash scripts/setup.sh --with-browser
run:
	bash scripts/run.sh
test:
	bash scripts/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy agent api db common
bench:
	.venv/bin/python bench/bench_resampler.py
	.venv/bin/python bench/bench_local_engine.py
	.venv/bin/python bench/bench_api.py
	.venv/bin/python bench/bench_pipeline.py
