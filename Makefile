# smtptap: plain make with pkg-config.  `make test` is the one way in.
PROG     := smtptap
VERSION  := 0.1.0
BUILD    ?= build
CC       ?= cc
PKGS     := libevent libevent_openssl libpcre2-8 openssl jansson
WARN     := -Wall -Wextra -Wshadow -Wmissing-prototypes -Wformat=2 -Werror
CFLAGS   ?= -O2 -g
SAN      ?=
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -DSMTPTAP_VERSION='"$(VERSION)"' $(WARN) $(CFLAGS) $(SAN) \
	-I. $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

SRC      := $(wildcard proxy/*.c logs/*.c filters/*.c)
OBJ      := $(SRC:%.c=$(BUILD)/%.o)
LIBOBJ   := $(filter-out $(BUILD)/proxy/main.o,$(OBJ))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
PYTEST   := /usr/bin/python3 -m pytest

.PHONY: all test unit integration demo deps check-asan bench clean format

all: $(BUILD)/$(PROG)

$(BUILD)/$(PROG): $(OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(LIBOBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS) $(shell pkg-config --libs cmocka 2>/dev/null)

deps:
	@scripts/deps.sh

unit: deps $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

integration: deps $(BUILD)/$(PROG)
	SMTPTAP=$(abspath $(BUILD)/$(PROG)) $(PYTEST) -q tests/integration $(PYTEST_ARGS)

test: deps
	$(MAKE) unit
	$(MAKE) integration

demo: deps $(BUILD)/$(PROG)
	@scripts/demo.sh $(abspath $(BUILD)/$(PROG))

check-asan: deps
	$(MAKE) BUILD=build-asan SAN='-fsanitize=address,undefined -fno-omit-frame-pointer' CFLAGS='-O1 -g' test

bench: deps $(BUILD)/$(PROG)
	@bench/run.sh $(abspath $(BUILD)/$(PROG))

format:
	clang-format -i $(SRC) $(wildcard proxy/*.h logs/*.h filters/*.h tests/unit/*.c)

clean:
	rm -rf build build-asan

-include $(OBJ:.o=.d)
