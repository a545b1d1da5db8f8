# mailcluster: `make lab` brings up the lab and deploys the cluster; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOPOLOGY ?= small
# The lab's OS (mail nodes; webmail hosts follow README "Platforms"): production's.
PLATFORM ?= ubuntu20.04
export PYTHONPATH := $(CURDIR)

.PHONY: lab deploy test test-platforms test-upgrade lint unit down purge host-deps venv info bench bench-fleet vagrant-test vagrant-up vagrant-destroy

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

host-deps:
	./scripts/host-deps

## lab: install what is needed, boot the lab, deploy the cluster, print how to connect
lab: host-deps venv
	$(PY) -m mailcluster.lab up --topology $(TOPOLOGY) --platform $(PLATFORM)
	$(MAKE) --no-print-directory deploy
	$(PY) -m mailcluster.lab info

deploy: venv
	$(VENV)/bin/pyinfra -y inventory/lab.py deploy.py

info: venv
	$(PY) -m mailcluster.lab info

## test: every test. Lint and unit first (no machine), then the lab on Ubuntu 20.04, the
## deploy, infra and end-to-end tests, the destructive recovery test; then every
## supported platform in one mixed lab (test-platforms) and the OS upgrade (test-upgrade).
test: lint unit lab
	$(PY) -m pytest -q tests/lab tests/infra tests/e2e tests/deploy
	$(PY) -m pytest -q tests/recovery
	$(MAKE) --no-print-directory test-platforms
	$(MAKE) --no-print-directory test-upgrade

## test-platforms: a lab that mixes every supported platform: mail nodes on Debian 12
## (from `up`), Ubuntu 24.04 and Ubuntu 20.04 (added), the webmail host on Ubuntu 20.04
## (RoundCube 1.4: refused by the deploy, then installed with the lab's override). Every
## pair of Dovecot and Exim versions proxies and hands mail over in both directions
## (the OS upgrade's mixed cluster); deploy, infra and end-to-end tests there.
test-platforms: host-deps venv
	$(PY) -m mailcluster.lab up --platform debian12 --webmail-platform ubuntu20.04
	$(PY) -m pytest -q tests/platforms
	$(PY) -m mailcluster.lab add mail03 --platform ubuntu24.04
	$(PY) -m mailcluster.lab add mail04 --platform ubuntu20.04
	$(MAKE) --no-print-directory deploy
	$(PY) -m pytest -q tests/infra tests/e2e

## test-upgrade: the OS upgrade under load: the small topology plus a spare mail node, all
## on Ubuntu 20.04, deployed; then every host replaced by one on 24.04 while clients log
## in through every node and mail arrives (bench/upgrade.py). The webmail host is on the
## recommended layout's Debian 12; `make test-upgrade WEBMAIL_PLATFORM=ubuntu20.04` puts
## it on 20.04 instead (RoundCube 1.4 -> 1.6 and its schema upgrade; not in .ci/run).
test-upgrade: host-deps venv
	$(PY) -m mailcluster.lab up --topology small --platform ubuntu20.04 \
		$(if $(WEBMAIL_PLATFORM),--webmail-platform $(WEBMAIL_PLATFORM))
	$(PY) -m mailcluster.lab add mail03 --platform ubuntu20.04
	$(MAKE) --no-print-directory deploy
	$(PY) -m pytest -q tests/upgrade

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy mailcluster deploy.py inventory group_data tests

unit: venv host-deps
	$(PY) -m pytest -q tests/unit

down: venv
	$(PY) -m mailcluster.lab down

## purge: down, and remove caches (base image, packages) and generated lab secrets
purge: venv
	$(PY) -m mailcluster.lab down --purge

## bench: the benchmarks (not part of `make test`); figures go to BENCHMARKS.md
bench: lab
	$(PY) bench/imap_sessions.py --sessions 4000
	$(PY) bench/smtp_throughput.py --messages 1000
	$(PY) bench/nothing_lost.py --messages 1000
	$(PY) bench/reload_hold.py --reloads 10

## bench-fleet: the 20-host figures on the `full` lab (takes the lab over, 25-40 min);
## appends a table to BENCHMARKS.md. `make lab` brings the small lab back afterwards.
bench-fleet: host-deps venv
	$(PY) bench/fleet.py --write BENCHMARKS.md

## vagrant-test: the cluster as real VMs (not part of `make test`): installs Vagrant,
## vagrant-libvirt, libvirt and qemu, builds the Debian 12 box, `vagrant up`, deploy,
## the end-to-end suite against the VMs (MAILCLUSTER_TARGET=vagrant), `vagrant destroy`
vagrant-test: venv
	./scripts/vagrant-test

vagrant-up: venv
	$(PY) -m mailcluster.vagrant up --topology $(TOPOLOGY)
	$(VENV)/bin/pyinfra -y inventory/vagrant.py deploy.py

vagrant-destroy: venv
	$(PY) -m mailcluster.vagrant destroy
