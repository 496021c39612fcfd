# The two commands that matter: `make up` (stack up, services running) and `make test` (every test).
.PHONY: up down status test test-unit lint fmt build broker help chaos bench bench-promotions bench-widgets observe reset load-promotions

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

up: ## install what is missing, build, start broker + four services, wait until ready (BROKERS=3: a three-node Kafka cluster)
	@scripts/stack.sh up

down: ## stop exactly what `make up` started (by PID)
	@scripts/stack.sh down

status: ## show what is running
	@scripts/stack.sh status

test: ## every test: lint, the unit tier (isolated), the service tier (real broker, Redis, PostgreSQL); each stage timed
	@scripts/test.sh

test-unit: ## the tests that need no service: src/ tests, doctests, tests/ files marked `// tier: unit`; non-root, nothing listening
	@scripts/test-unit.sh

lint: ## rustfmt, clippy (warnings are errors), cargo machete, shellcheck over scripts/, cargo-deny (deny.toml)
	@scripts/lint.sh

fmt: ## format the code
	cargo fmt --all

build: ## release binaries
	cargo build --release --bins

observe: ## Prometheus (Debian package) scraping the four services, on :9090
	@scripts/stack.sh observe

load-promotions: ## upload a promotions CSV as a new generation (streamed): make load-promotions FILE=path.csv
	@scripts/load-promotions.sh "$(FILE)"

reset: ## drop this stack's read models, processor state and Kafka log (the stack must be down)
	@scripts/stack.sh reset

broker: ## start only the broker (Apache Kafka, KRaft, natively; BROKERS=3: a three-node cluster)
	@scripts/stack.sh broker-up

chaos: ## fault scenarios against the real stack (kill -9, broker restart, Redis flush, PostgreSQL outage, scale, a Kafka node killed in a 3-node cluster)
	@scripts/chaos.sh

bench: ## benchmarks against same-run ceilings (QUICK=1 for a short run); writes target/bench/results.json and docs/benchmarks.md
	@QUICK=$(QUICK) scripts/bench.sh

bench-promotions: ## only the promotions bench (10M rows; PROMOTION_ROWS=1000000 for less), on its own stack; updates docs/benchmarks.md
	@BENCH_ONLY=promotions QUICK=$(QUICK) scripts/bench.sh

bench-widgets: ## only the widgets bench (10M widgets; WIDGETS=1000000 for less), on its own stack; updates docs/benchmarks.md
	@BENCH_ONLY=widgets QUICK=$(QUICK) WIDGETS=$(WIDGETS) scripts/bench.sh
