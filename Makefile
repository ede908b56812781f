# smtptap: plain make with pkg-config.  `make test` is the one way in.
PROG     := smtptap
VERSION  := 0.1.0
BUILD    ?= build
CC       ?= cc
PKGS     := libevent libevent_openssl libpcre2-8 openssl jansson libsystemd
WARN     := -Wall -Wextra -Wshadow -Wmissing-prototypes -Wformat=2 -Werror
# Link-time optimisation: the hot path crosses modules (relay, transcript, escape) in small
# functions; -flto lets them inline: 2% fewer instructions per one-message session, 5% per
# message of a long one (bench/instructions.sh).
CFLAGS   ?= -O2 -g -flto=auto
SAN      ?=
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -DSMTPTAP_VERSION='"$(VERSION)"' $(WARN) $(CFLAGS) $(SAN) \
	-I. $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# Read when make parses this file: a target that first installs the libraries (make deps) builds
# through a second make, which parses it again and finds them (issue 13 item 16).
DEPLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
SUBMAKE  := $(MAKE) --no-print-directory
# The allocator.  mimalloc (Debian's libmimalloc-dev) by default: a session makes some
# hundred small allocations (libevent, jansson, OpenSSL and ours), and glibc's malloc was a
# sixth of the relay's user time.  MALLOC=libc builds with glibc's, as the ASan, fuzz and
# memcheck builds do: their tools bring a malloc of their own (as Redis does with jemalloc).
MALLOC   ?= mimalloc
LDLIBS   := $(if $(filter mimalloc,$(MALLOC)),-lmimalloc) $(DEPLIBS)

SRC      := $(wildcard smtp/*.c proxy/*.c logs/*.c filters/*.c tools/*.c)
OBJ      := $(SRC:%.c=$(BUILD)/%.o)
LIBOBJ   := $(filter-out $(BUILD)/proxy/main.o,$(OBJ))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
PYTEST   := /usr/bin/python3 -m pytest

.PHONY: all test unit integration demo deps check-asan bench clean format

all: $(BUILD)/$(PROG)

# Linked again when the Makefile changes: MALLOC or the libraries may have.
$(BUILD)/$(PROG): $(OBJ) Makefile
	@[ -n "$(DEPLIBS)" ] || { echo "smtptap: pkg-config finds not all of $(PKGS): run make deps" >&2; exit 1; }
	$(CC) $(ALL_CFLAGS) -o $@ $(OBJ) $(LDLIBS)

# Compiled again when the Makefile changes: the flags may have.
$(BUILD)/%.o: %.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(LIBOBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -o $@ $(filter %.c %.o,$^) $(LDLIBS) $(shell pkg-config --libs cmocka 2>/dev/null)

deps:
	@scripts/deps.sh

unit: deps
	@$(SUBMAKE) $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

# Two tests at a time (pytest-xdist; each test takes its own free ports): the suite waits on
# its peers far more than it computes, and half the wall time keeps CI well under its limit.
# PYTEST_JOBS=1 runs them one by one.
PYTEST_JOBS ?= 2
integration: deps
	@$(SUBMAKE) $(BUILD)/$(PROG)
	SMTPTAP=$(abspath $(BUILD)/$(PROG)) $(PYTEST) -q -n $(PYTEST_JOBS) tests/integration $(PYTEST_ARGS)

test: deps
	$(MAKE) unit
	$(MAKE) integration

demo: deps
	@$(SUBMAKE) $(BUILD)/$(PROG)
	@scripts/demo.sh $(abspath $(BUILD)/$(PROG))

# check-asan: built with clang, whose one sanitizer runtime writes ASan, LeakSanitizer and UBSan
# reports to log_path (gcc's libubsan ignores it); reports go to files because a proxy stopped by
# SIGTERM reports leaks as it exits, after its test may have passed.  Any report fails the run
# and is printed.  A 1 MiB quarantine of freed memory (ASan's default is 256) keeps the RSS
# bounds of the integration tests (8 MiB) meaningful, at the cost of missing a use of memory
# freed long before (the fuzz targets keep the default); SMTPTAP_SANITIZER tells the tests that
# ASan is in the process.
# The integration tests run two at a time (pytest-xdist): ASan makes them slower.
SAN_LOGS := $(abspath build-asan/sanitizer-logs)
check-asan: deps
	@[ -f build-asan/.clang-norecover ] || rm -rf build-asan  # objects of an older recipe
	@rm -rf $(SAN_LOGS) && mkdir -p $(SAN_LOGS) && touch build-asan/.clang-norecover
	@rc=0; SMTPTAP_SANITIZER=address \
	ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:quarantine_size_mb=1:log_path=$(SAN_LOGS)/asan \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(SAN_LOGS)/ubsan \
	$(MAKE) BUILD=build-asan CC=clang CFLAGS='-O1 -g' WARN='$(WARN) -Wno-format-nonliteral' MALLOC=libc \
		SAN='-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer' \
		test || rc=$$?; \
	if [ -n "$$(ls -A $(SAN_LOGS))" ]; then \
		echo "check-asan: sanitizer reports in $(SAN_LOGS):" >&2; cat $(SAN_LOGS)/* >&2; rc=1; \
	fi; \
	exit $$rc

bench: deps
	@$(SUBMAKE) $(BUILD)/$(PROG)
	@bench/run.sh $(abspath $(BUILD)/$(PROG))

format:
	clang-format -i $(SRC) $(wildcard smtp/*.h proxy/*.h logs/*.h filters/*.h tools/*.h tests/unit/*.c)

clean:
	rm -rf build build-asan build-libc

# ---- Fuzzing and memcheck (tests/fuzz, scripts/valgrind-check.sh; issue 5) -------------------
# libFuzzer targets, built with clang into build-fuzz/ (objects in build-fuzz/obj/, apart from
# the gcc build).  `make fuzz` runs each for FUZZ_SECONDS from a scratch copy of its seed corpus
# (tests/fuzz/corpus/TARGET is never written); a crash keeps its input in build-fuzz/artifacts/
# and fails the run.  FUZZ_TARGETS='session' runs one.
FUZZ_BUILD   := build-fuzz
FUZZ_CC      := clang
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?= command reply rules redact session proxyproto address json
# clang's -Wformat=2 also flags vprintf-style wrappers without a format attribute (gcc does not).
FUZZ_WARN    := $(WARN) -Wno-format-nonliteral
FUZZ_CFLAGS   = -std=c11 -D_GNU_SOURCE -DSMTPTAP_VERSION='"$(VERSION)"' $(FUZZ_WARN) -O1 -g \
	-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
	-I. $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_OBJ     := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(filter-out proxy/main.c,$(SRC)))
FUZZ_LIB     := $(FUZZ_BUILD)/libsmtptap.a
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

.PHONY: fuzz fuzz-build clean-fuzz

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

$(FUZZ_LIB): $(FUZZ_OBJ)
	rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -MMD -MP -o $@ $< $(FUZZ_LIB) $(DEPLIBS)

fuzz-build: deps
	@$(SUBMAKE) $(FUZZ_BIN)

fuzz: fuzz-build
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean-fuzz:
	rm -rf $(FUZZ_BUILD)

# Valgrind memcheck over part of the integration suite (scripts/valgrind-check.sh), on a build
# with glibc's malloc (build-libc/), which memcheck replaces with its own to track every block.
.PHONY: check-valgrind
check-valgrind: deps
	$(MAKE) BUILD=build-libc MALLOC=libc build-libc/$(PROG)
	scripts/valgrind-check.sh $(abspath build-libc/$(PROG))

-include $(FUZZ_OBJ:.o=.d) $(FUZZ_BIN:=.d)
# ---- end of fuzzing and memcheck ---------------------------------------------------------------

-include $(OBJ:.o=.d)
-include $(UNIT_BIN:=.d)
include dist/install.mk
