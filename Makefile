# rdv — remote device virtualization over gRPC.
#   make run    the demo on loopback (sets everything up first)
#   make test   the test suite (sets everything up first)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rdv-installed
# Debian packages: ALSA and LZO headers to build pyalsaaudio and python-lzo, ALSA's plugins and tools,
# QEMU for the tests against real peers, gcc for the live test's static timing tool, stress-ng for make test-stress,
# libvirt and systemd-analyze for the VM attach tests.
APT_PACKAGES := libasound2-dev liblzo2-dev libasound2-plugins alsa-utils qemu-system-x86 qemu-utils \
	xvfb xauth xdotool imagemagick gcc libc6-dev stress-ng libvirt-daemon-system libvirt-clients \
	libvirt-daemon-driver-qemu systemd
PYTEST_ARGS ?=

.PHONY: setup proto test test-live test-stress test-deploy lock run bench profile fuzz lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "rdv needs these Debian packages; run:  sudo apt-get install -y" $$missing; exit 1; \
	  fi; \
	fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

proto: setup
	PYTHON=$(abspath $(PY)) protos/generate.sh

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Boots real Linux guests under QEMU 10.2 (built once into ~/.cache/rdv by tests/tools): minutes, not seconds.
test-live: setup
	$(PY) -m pytest -q -m live tests/live $(PYTEST_ARGS)

# The real-time suites (audio e2e, display pixels, faults, load, live) while `stress-ng --cpu 2` keeps both cores
# busy at the same priority: STRESS_RUNS runs in a row must pass; prints the xruns and underruns each run saw.
STRESS_RUNS ?= 5
test-stress: setup
	$(PY) -m tests.stress --runs $(STRESS_RUNS) -- $(PYTEST_ARGS)

# deploy/README.md on a real Docker engine: installs Debian's docker.io when missing, starts dockerd when none
# runs (and stops only that one), builds the image (cached between runs) and brings the node up and down.
test-deploy: setup
	started=$$(tests/tools/docker_engine.sh start); \
	trap 'tests/tools/docker_engine.sh stop $$started' EXIT; \
	$(PY) -m pytest -q -m deploy tests/deploy $(PYTEST_ARGS)

# deploy/constraints.txt: the exact versions of rdv[node] and what it pulls in, resolved in a fresh venv.
lock: setup
	rm -rf build/lock && python3 -m venv build/lock
	build/lock/bin/pip install -q '.[node]'
	{ sed -n '1,2p' deploy/constraints.txt; build/lock/bin/pip freeze --exclude-editable | grep -v '^rdv'; } \
	  > build/constraints.txt && mv build/constraints.txt deploy/constraints.txt
	rm -rf build/lock

run: setup
	$(PY) -m frontend_shim demo

bench: setup
	$(PY) -m tests.bench

# py-spy flame graphs (build/bench/flame-*.svg) of the shim and the audio service during the vfio-user register
# access and interrupt benchmarks (tests/bench/profile.py).
profile: setup
	$(PY) -m tests.bench.profile

# The fuzz tests at nightly size: RDV_FUZZ_EXAMPLES=100000 make fuzz (each test runs its share of that many
# inputs, new ones every run); `make test` runs them small and derandomized. Figures go to build/fuzz.
RDV_FUZZ_EXAMPLES ?= 100000
fuzz: setup
	RDV_FUZZ_EXAMPLES=$(RDV_FUZZ_EXAMPLES) $(PY) -m pytest -q --timeout=0 --hypothesis-show-statistics tests/test_fuzz_*.py $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf build .pytest_cache
