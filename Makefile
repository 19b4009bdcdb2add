# The two commands a newcomer needs: `make run` and `make test`. Each installs
# what is missing first (see .ci/deps), so they work on a fresh Debian machine.

CARGO ?= cargo
BIN := target/debug

.PHONY: run test fuzz deps build lint fmt clean

## run: build opsd and opsctl, and start a single-node opsd on 127.0.0.1:7700 (data in ./opsd-data)
run: deps
	$(CARGO) build --bin opsd --bin opsctl
	@echo "opsd starting; in another terminal: $(BIN)/opsctl whoami (opsctl reads the admin token from ./opsd-data/admin.token)"
	$(BIN)/opsd

## test: unit tests and the end-to-end scenarios against real opsd processes; ends by
## listing the tests that skipped something this machine lacks (OPSD_TEST_STRICT=1 fails them)
test: deps
	@./.ci/nemesis-deps
	$(CARGO) build --workspace --bins
	@rm -f target/test-skips.txt
	@status=0; $(CARGO) test --workspace || status=$$?; \
	if [ -s target/test-skips.txt ]; then \
	  echo "== skipped here (set OPSD_TEST_STRICT=1 to make these failures):"; sed 's/^/   /' target/test-skips.txt; \
	else echo "== no test skipped anything"; fi; \
	exit $$status

## fuzz: the property harnesses of docs/fuzzing.md on FUZZ_CASES inputs in all (default 1000000):
## decoders, the kind parser, apply, request validation; prints each harness's count, the total
## and the time. FUZZ_SEED=N replays a run. (`make test` runs them too, on 20000 inputs.)
FUZZ_CASES ?= 1000000
fuzz: deps
	@rm -rf target/fuzz-counts; start=$$(date +%s); status=0; \
	export FUZZ_CASES=$(FUZZ_CASES) FUZZ_COUNTS=$(CURDIR)/target/fuzz-counts; \
	$(CARGO) test -p opsd-cluster --lib fuzz_peer -- --test-threads=2 || status=$$?; \
	$(CARGO) test -p opsd --lib fuzz:: -- --test-threads=2 || status=$$?; \
	total=0; for f in target/fuzz-counts/*; do [ -f "$$f" ] || continue; n=$$(cat "$$f"); \
	  echo "   $$(basename "$$f"): $$n inputs"; total=$$((total + n)); done; \
	echo "== fuzz: $$total inputs in all, in $$(( $$(date +%s) - start )) s"; exit $$status

## bench: opsd side by side with etcd on this machine (installs etcd if missing, builds in release),
## writes target/bench/results.json; `BENCH_SECONDS=5 make bench` for a quick run. See docs/BENCHMARKS.md
.PHONY: bench
bench:
	@./.ci/bench-deps
	$(CARGO) build --release --bins
	OPSD_BIN_DIR=$(CURDIR)/target/release target/release/opsd-bench

## nemesis: the fault suite: 3- and 5-node clusters under kill -9, SIGSTOP, network partitions,
## membership churn, full disks and failing writes for NEMESIS_SECONDS (default 300), NEMESIS_SEED=N replays a run; writes
## target/nemesis/summary.json. See docs/nemesis.md
.PHONY: nemesis
nemesis: deps
	@./.ci/nemesis-deps
	$(CARGO) build --workspace --bins
	$(BIN)/opsd-nemesis

deps:
	@./.ci/deps

build: deps
	$(CARGO) build --workspace --bins

## lint: formatting and clippy, as CI checks them
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
