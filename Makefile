.PHONY: demo test bench bench-views bench-decompose bench-profile mutants
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
bench:
	bash scripts/bench.sh
bench-views:
	bash scripts/bench_views.sh
bench-decompose:
	bash scripts/bench.sh --decompose
bench-profile:
	bash scripts/bench.sh --profile
mutants:
	bash scripts/mutants.sh
