# NanoMQ developer commands. Everything runs in a local venv (.venv) that `make install` creates,
# so a bare machine with python3 (>= 3.11) and gcc needs nothing else.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
EXTRAS  := test,lint,fuzz,bench,mutation
C_DEPS  := $(wildcard nanomq/_c/src/*) $(wildcard nanomq/_c/build_*.py) nanomq/_c/_builder.py
FUZZ_SECONDS ?= 60
PORT    ?= 9000
DATA_DIR ?= ./data
SEGMENT_SIZE ?= 8MB
RUN_STAMP := $(VENV)/.installed-runtime

.PHONY: help install build test test-fast lint fuzz fuzz-smoke benchmark gate conformance mutation run clean sanitize

help:
	@echo "make install      create .venv and install nanomq (with its C core) and the dev tools"
	@echo "make test         the whole suite: unit, property, fault-injection, fuzz smoke"
	@echo "make lint         ruff + mypy"
	@echo "make fuzz         every atheris target for FUZZ_SECONDS (default 60) each"
	@echo "make benchmark    the benchmark tables; NanoMQ vs Redis/NATS ratios, JSON and plots in reports/bench/"
	@echo "make gate         the CI latency gate against the reference broker and its committed baseline"
	@echo "make conformance  the conformance kit against the reference broker (KIT_ARGS=... for another)"
	@echo "make mutation     mutants of the broker (Python: mutmut; C: log.c, plane.c, syncer.c) under the kit; reports/mutation/"
	@echo "make run          the runtime package only, then the broker on PORT=$(PORT), DATA_DIR=$(DATA_DIR),"
	@echo "                  SEGMENT_SIZE=$(SEGMENT_SIZE) (each topic preallocates one segment)"
	@echo "make sanitize     the C ring, log, data-plane and syncer drivers under TSan and ASan/UBSan"
	@echo "make clean        remove the venv and build products"

$(STAMP): pyproject.toml setup.py $(C_DEPS)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# an in-place build (ffibuilder.compile) leaves *.cpython-311-*.so, which Python prefers over
	@# the abi3 module pip builds: remove them so the fresh build is the one imported
	rm -f nanomq/_c/*.cpython-*.so
	$(BIN)/python -m pip install -q -U pip "setuptools>=77"
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $@ $(RUN_STAMP)

install: $(STAMP)

# Rebuild the C extensions in place after editing nanomq/_c (install does it when sources changed).
build: $(STAMP)

# The codec's tests run under a 100 % branch-coverage gate; everything else runs plainly after.
CODEC_TESTS := tests/test_codec.py tests/test_vectors.py
test: $(STAMP)
	$(BIN)/python -m pytest -q $(CODEC_TESTS) --cov=nanomq.protocol --cov-branch --cov-report=term --cov-fail-under=100
	$(BIN)/python -m pytest tests $(addprefix --ignore=,$(CODEC_TESTS))
	$(MAKE) fuzz-smoke

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow" -x -q

lint: $(STAMP)
	$(BIN)/ruff check nanomq tests fuzz benchmarks conformance mutation
	$(BIN)/mypy

fuzz: $(STAMP)
	$(BIN)/python fuzz/run_all.py --seconds $(FUZZ_SECONDS)

fuzz-smoke: $(STAMP)
	$(BIN)/python fuzz/run_all.py --seconds 5

# BENCH_ARGS: options for benchmarks/run_all.py, e.g. --only broker, --quick, --broker-args "--spin-us 200".
# The broker benchmark starts redis-server and nats-server itself when they are installed
# (apt-get update && apt-get install redis-server nats-server) and writes reports/bench/.
BENCH_ARGS ?=
benchmark: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# The CI latency gate (docs/gate.md): the reference broker against the committed baseline, exit 1 on a
# confirmed regression or a newly missed budget; GATE_ARGS=... passes options (e.g. --launch, --html).
GATE_BASELINE := $(wildcard benchmarks/baselines/reference-*.json)
GATE_ARGS ?=
gate: $(STAMP)
	$(BIN)/nanomq-bench gate $(addprefix --baseline ,$(GATE_BASELINE)) $(GATE_ARGS)

# The conformance kit against the reference broker (or: make conformance KIT_ARGS="--target t.toml").
KIT_ARGS ?=
conformance: $(STAMP)
	$(BIN)/python -m conformance $(KIT_ARGS)

# Every mutant of the broker as a real broker under the kit (docs/mutation.md); MUTATION_ARGS=... passes options.
MUTATION_ARGS ?=
mutation: $(STAMP)
	$(BIN)/python -m mutation run $(MUTATION_ARGS)

# `make run` needs the runtime package only (no dev extras): a stamp of its own, which a dev
# install also touches. Quiet: only the broker's own lines are printed.
$(RUN_STAMP): pyproject.toml setup.py $(C_DEPS)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@rm -f nanomq/_c/*.cpython-*.so
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	@touch $@

run: $(RUN_STAMP)
	@$(BIN)/nanomq-broker --port $(PORT) --data-dir $(DATA_DIR) --log-segment-size $(SEGMENT_SIZE)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .benchmarks .tox .mypy_cache .ruff_cache
	rm -f nanomq/_c/*.so nanomq/_c/_core.c nanomq/_c/_ring.c nanomq/_c/_log.c nanomq/_c/*.o

# The C ring and the C log under ThreadSanitizer, then AddressSanitizer + UndefinedBehaviorSanitizer.
# A multi-threaded SPSC/MPSC driver with sequence and payload checks; SANITIZE_N records/producer.
SANITIZE_N ?= 100000
RING_TEST_SRC := tests/c/test_ring.c nanomq/_c/src/ring.c
# The log: appender with rotation/retention, concurrent sync(), a verifying reader, then damage.
# The data plane: damaged and partial PUBLISH/PING streams fed to a real log, then delivered.
PLANE_TEST_SRC := tests/c/test_plane.c nanomq/_c/src/plane.c nanomq/_c/src/log.c nanomq/_c/src/record.c nanomq/_c/src/crc32c.c
LOG_TEST_SRC := tests/c/test_log.c nanomq/_c/src/log.c nanomq/_c/src/record.c nanomq/_c/src/crc32c.c
# Opening damaged logs: index files whose entry count wraps, and every allocation of an open failing
# in turn (malloc/calloc/realloc wrapped by the linker), for ASan/UBSan and LeakSanitizer.
LOG_OPEN_TEST_SRC := tests/c/test_log_open.c nanomq/_c/src/log.c nanomq/_c/src/record.c nanomq/_c/src/crc32c.c
SYNCER_TEST_SRC := tests/c/test_syncer.c nanomq/_c/src/syncer.c nanomq/_c/src/log.c nanomq/_c/src/record.c nanomq/_c/src/crc32c.c
sanitize:
	@mkdir -p build
	$(CC) -O1 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fsanitize=thread -Inanomq/_c/src $(RING_TEST_SRC) -o build/test_ring_tsan -lpthread
	TSAN_OPTIONS=halt_on_error=1 ./build/test_ring_tsan $(SANITIZE_N)
	$(CC) -O1 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Inanomq/_c/src $(RING_TEST_SRC) -o build/test_ring_asan -lpthread
	ASAN_OPTIONS=detect_leaks=1 ./build/test_ring_asan $(SANITIZE_N)
	$(CC) -O1 -g -std=gnu11 -fsanitize=thread -Inanomq/_c/src $(LOG_TEST_SRC) -o build/test_log_tsan -lpthread
	TSAN_OPTIONS=halt_on_error=1 ./build/test_log_tsan 3000 0
	$(CC) -O1 -g -std=gnu11 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Inanomq/_c/src $(LOG_TEST_SRC) -o build/test_log_asan -lpthread
	ASAN_OPTIONS=detect_leaks=1 ./build/test_log_asan 1000 500
	$(CC) -O1 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Inanomq/_c/src $(LOG_OPEN_TEST_SRC) -o build/test_log_open_asan -lpthread -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc
	ASAN_OPTIONS=detect_leaks=1 ./build/test_log_open_asan
	$(CC) -O1 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Inanomq/_c/src $(PLANE_TEST_SRC) -o build/test_plane_asan -lpthread
	ASAN_OPTIONS=detect_leaks=1 ./build/test_plane_asan 3000
	$(CC) -O1 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fsanitize=thread -Inanomq/_c/src $(SYNCER_TEST_SRC) -o build/test_syncer_tsan -lpthread
	TSAN_OPTIONS=halt_on_error=1 ./build/test_syncer_tsan 2000
	$(CC) -O1 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Inanomq/_c/src $(SYNCER_TEST_SRC) -o build/test_syncer_asan -lpthread
	ASAN_OPTIONS=detect_leaks=1 ./build/test_syncer_asan 2000
