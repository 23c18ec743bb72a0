# sar.backup — everything a fresh machine needs, from two commands:
#   make demo   a real backup of a sample appliance, verified
#   make test   every test (sanity, units, lint, integration, molecule)
SHELL := /bin/bash
ROOT := $(abspath .)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
BUILD := $(ROOT)/.build
COLL := $(BUILD)/ansible_collections/sar/backup
export ANSIBLE_COLLECTIONS_PATH := $(BUILD)
export PATH := $(VENV)/bin:$(PATH)

# Debian packages the tests and the demo use (installed only when root).
DEB_PACKAGES := postgresql postgresql-client openssh-server openssh-client samba smbclient \
	zstd age rsync openssl udev fusefat exfat-fuse systemd util-linux e2fsprogs dosfstools exfatprogs python3-venv \
	prometheus chromium

.PHONY: all deps venv collection demo test sanity units lint integration molecule reliability soak bench clean

all: test

deps: .build/.deps
.build/.deps:
	@mkdir -p .build
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root: assuming Debian packages are present"; fi
	@touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: $(wildcard requirements/*.txt) | deps
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	@touch $@

collection: venv
	@tools/stage-collection.sh >/dev/null

demo: collection
	$(PY) tools/demo.py

sanity: collection
	tools/ansible-test-offline.sh $(PY)
	cd $(COLL) && ansible-test sanity --venv --python 3.11 --color no

units: collection
	tools/ansible-test-offline.sh $(PY)
	cd $(COLL) && ansible-test units --venv --python 3.11 --color no

lint: collection
	cd $(COLL) && ansible-lint --profile production --offline

integration: collection
	$(PY) -m pytest -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder tests/integration -x -q

molecule: collection
	cd $(COLL)/extensions && molecule test --all

# The product's own proof suite (tests/reliability, docs/reliability.md): hostile archives, fuzzed
# schemas. Bounded here (a few minutes); `make soak` runs the long form (SAR_SOAK=1: variants,
# seeded random combinations, larger bombs, thousands of fuzz examples).
reliability: collection
	$(PY) -m pytest -p no:cacheprovider -n 2 --dist loadfile tests/reliability -q

soak: collection
	SAR_SOAK=1 $(PY) -m pytest -p no:cacheprovider tests/reliability -q

test: sanity units lint integration molecule reliability

# Every bench in bench/ -> docs/benchmarks.md (+ docs/benchmarks-run.png); about an hour on 2 cores.
# The whole-run bench plots 0.5, 1, 2 and 4 GB; `make bench BENCH_4GB=0` leaves 4 GB out (half as long).
BENCH_4GB ?= 1
bench: collection
	BENCH_RUN_4GB=$(BENCH_4GB) $(PY) bench/run.py

clean:
	rm -rf .build tests/output
