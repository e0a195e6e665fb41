# AEGIS — the two commands that matter:
#   make run    build (release) and serve AEGIS at http://127.0.0.1:3000 on SQLite
#   make demo   the same build, serving a demo sponsor, agents and live simulated traffic
#   make test   every test: Rust unit + API integration over HTTP, and Playwright in Chromium
# Each installs what is missing first and skips what is already there.

SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO_LEPTOS_VERSION := 0.3.10
BINARYEN_VERSION := 132
# wasm-bindgen-cli must match the wasm-bindgen in Cargo.lock exactly.
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"/\1/p;}' Cargo.lock)
TOOLS := $(CURDIR)/target/tools
export PATH := $(HOME)/.cargo/bin:$(TOOLS)/node_modules/.bin:$(PATH)

.PHONY: help run demo dev test test-rust test-postgres test-redis test-e2e test-schema bench-isolation build-debug tools tools-release chromium nginx e2e-deps sdk-venv fmt lint clean-data

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

run: tools-release ## Build in release mode and serve AEGIS on http://127.0.0.1:3000 (data in ./data)
	cargo leptos serve --release

# Arguments for `aegis demo`, e.g. make demo DEMO_ARGS=--fresh
DEMO_ARGS ?=
demo: tools-release ## Like run, but `aegis demo`: a demo sponsor (sign-in printed), agents and live traffic (data in ./data-demo)
	cargo leptos serve --release -- demo $(DEMO_ARGS)

dev: tools ## Rebuild and reload on every change (cargo leptos watch)
	cargo leptos watch

test: tools chromium nginx e2e-deps sdk-venv build-debug test-rust test-postgres test-redis test-e2e test-schema ## Run every test
	@echo "make test: all suites passed"

build-debug:
	cargo leptos build

# Every pass selects the same packages: a different selection unifies the dependencies'
# features differently and rebuilds much of the tree a second time (time and disk).
CARGO_TEST := cargo test --workspace --exclude frontend

test-rust: sdk-venv ## Unit, migration and API integration tests (SQLite)
	$(CARGO_TEST)

# A second pass of the database-facing tests on PostgreSQL when DATABASE_URL points at one.
test-postgres: sdk-venv
	@if [[ "$${DATABASE_URL:-}" == postgres* ]]; then \
		echo "PostgreSQL pass: API integration and migration tests against $${DATABASE_URL%%@*}@…"; \
		echo "(with REDIS_URL set this includes the two-process multi-replica test and, with nginx, the deployment-topology test)"; \
		env $${REDIS_URL:+AEGIS_TEST_REDIS_URL="$$REDIS_URL"} AEGIS_TEST_DATABASE_URL="$$DATABASE_URL" \
			$(CARGO_TEST) --test api && \
		AEGIS_TEST_DATABASE_URL="$$DATABASE_URL" $(CARGO_TEST) --test migrate --test audit_guards --test roundtrip; \
	else \
		echo "skipped: PostgreSQL pass (set DATABASE_URL=postgres://… to run it)"; \
	fi

# The Redis-dependent tests (event fan-out across replicas) when REDIS_URL points at one.
test-redis:
	@if [[ "$${REDIS_URL:-}" == redis* ]]; then \
		echo "Redis pass: event fan-out, breaker-window and rate-limit tests against $${REDIS_URL##*@}"; \
		AEGIS_TEST_REDIS_URL="$$REDIS_URL" $(CARGO_TEST) --lib -- breaker::windows auth::throttle rate_limits && \
		AEGIS_TEST_REDIS_URL="$$REDIS_URL" $(CARGO_TEST) --test api -- events:: breaker::; \
	else \
		echo "skipped: Redis pass (set REDIS_URL=redis://… to run it)"; \
	fi

# Schemathesis 4.32.5 (pinned, in target/venv) over every API operation that needs no upstream,
# against a fresh debug server; bounded by AEGIS_ST_MAX_TIME seconds (default 150).
test-schema: ## Schema-driven API fuzzing (Schemathesis) against the debug build
	cargo build -p server --bin aegis
	server/tests/schemathesis/run.sh

test-e2e: ## Playwright browser tests against the debug build
	cd end2end && npx playwright test

# Noisy-neighbour numbers: the three isolation scenarios (100 approval long-polls, hostile
# policies, 12 concurrent audit verifications) print another tenant's latency before and
# during; the tests assert that it was served, the numbers are for reading, not asserting.
bench-isolation: ## Print another tenant's latency before and during each isolation scenario
	@$(CARGO_TEST) --test api -- --nocapture --test-threads 1 \
		a_hundred_waits_on_one_approval hostile_policies_get_a_clear_answer concurrent_verifications_do_not_slow 2>&1 \
		| grep -oE '\[isolation\].*|^test result.*'

tools: ## Install the wasm target, cargo-leptos and wasm-bindgen-cli when missing
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@cargo leptos --version 2>/dev/null | grep -q "$(CARGO_LEPTOS_VERSION)" || cargo install cargo-leptos --version $(CARGO_LEPTOS_VERSION) --locked
	@wasm-bindgen --version 2>/dev/null | grep -q "$(WASM_BINDGEN_VERSION)" || cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)

tools-release: tools ## Also wasm-opt (npm binaryen), used by release builds
	@[ -x "$(TOOLS)/node_modules/.bin/wasm-opt" ] || npm install --prefix "$(TOOLS)" --no-audit --no-fund --no-save binaryen@$(BINARYEN_VERSION)

chromium: ## Debian's Chromium for the browser tests
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
		else echo "Chromium is missing: run 'sudo apt-get install chromium'" >&2; exit 1; fi; }

nginx: ## Debian's nginx for the deployment-topology test (nginx in front of two replicas)
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { \
		if [ "$$(id -u)" = 0 ]; then apt-get install -y -q nginx-light || { apt-get update -q && apt-get install -y -q nginx-light; }; \
		else echo "nginx is missing: run 'sudo apt-get install nginx-light'" >&2; exit 1; fi; }

# The official OpenAI and Anthropic Python SDKs (pinned, target/sdk-venv) for the gateway test
# `sdk.rs`, which runs when AEGIS_SDK_PYTHON is set.
export AEGIS_SDK_PYTHON := $(CURDIR)/target/sdk-venv/bin/python
sdk-venv:
	@server/tests/sdk/venv.sh >/dev/null

e2e-deps:
	@[ -d end2end/node_modules/@playwright/test ] || (cd end2end && npm ci --no-audit --no-fund)

fmt: ## Format the code
	cargo fmt --all

lint: ## Formatting and clippy, as CI expects them
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean-data: ## Delete the local data directory (database and keys!)
	rm -rf ./data
