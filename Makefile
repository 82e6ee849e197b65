# krserve — the two commands the README gives, and the habits around them.
#   make run    install missing Debian packages (as root), build, run the main job
#   make test   install missing Debian packages (as root), build, run every test,
#               then the whole suite again under ASan + UBSan
# Other targets: build, lint, format, valgrind, install, clean.

JOBS      ?= $(shell nproc 2>/dev/null || echo 2)
BUILD     ?= build
ASAN      ?= build-asan
DEBUG     ?= build-debug
PREFIX    ?= /usr/local
# Debian packages the build and the tests need (see docs/DEPENDENCIES.md).
DEB_PKGS  := build-essential cmake pkg-config libcjson-dev libcpuid-dev libyaml-dev \
             libcmocka-dev libopenblas-dev libpcre2-dev gnuplot-nox valgrind cppcheck clang-format clang-tidy
SOURCES   := $(shell git ls-files '*.c' '*.h' '*.cu' '*.cuh' 2>/dev/null)

.PHONY: all deps build run test test-release test-asan valgrind lint format format-check install clean

all: build

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing Debian packages; run:"; echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

# The main job: what this machine offers, then the default benchmark
# (accelerated vs reference, < 3 minutes on 2 cores) with its summary, JSON and plot,
# then the whole-model benchmark (a random-weight Llama-shaped model) at two depths,
# then a greedy generation with the tiny random-weight Llama fixture (tests/fixtures/llama).
run: build
	./$(BUILD)/krserve info
	./$(BUILD)/krserve bench --json $(BUILD)/bench.json --plot $(BUILD)/bench.png
	@echo "wrote $(BUILD)/bench.json and $(BUILD)/bench.png"
	./$(BUILD)/krserve bench generate --depths 512,2048
	./$(BUILD)/krserve generate --model tests/fixtures/llama --prompt "The quick brown fox" -n 32 --temp 0

test: test-release test-asan

test-release: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: deps
	cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKR_SANITIZE=ON
	cmake --build $(ASAN) -j $(JOBS)
	cd $(ASAN) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS)

# The suite under valgrind's memcheck, on the smaller grids (KR_TEST_QUICK),
# optimised with debug info so it finishes in minutes.
valgrind: deps
	cmake -S . -B $(DEBUG) -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(DEBUG) -j $(JOBS)
	cd $(DEBUG) && for t in tests/test_attention tests/test_rope tests/test_kv_cache tests/test_api tests/test_accel tests/test_cpu_backend tests/test_bench tests/test_model_files tests/test_engine tests/test_tokenizer tests/test_fixtures tests/test_int8_codes; do \
	  [ -x "$$t" ] || continue; echo "valgrind $$t"; \
	  KR_TEST_QUICK=1 valgrind -q --suppressions=$(CURDIR)/tests/valgrind.supp --leak-check=full --show-leak-kinds=definite,indirect,possible \
	    --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=3 ./$$t >/dev/null || exit 1; \
	done; echo "valgrind: no errors, no leaks"

lint: build
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	  --std=c11 --inline-suppr -I include --suppress=missingIncludeSystem \
	  src tools tests
	clang-tidy -p $(BUILD) --quiet --warnings-as-errors='*' --extra-arg=-Wno-unknown-warning-option \
	  $(filter %.c,$(filter src/% tools/%,$(SOURCES)))

format:
	clang-format -i $(SOURCES)

format-check:
	clang-format --dry-run --Werror $(SOURCES)

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD) $(ASAN) $(DEBUG)
