# Switchyard — the commands the README names. `make help` lists them.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help run test check ci nats-server api-tools fmt clippy bench install-cli

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

run: ## run Switchyard locally: nats-server (pinned, installed here), provisioning, services
	@scripts/run-local.sh

test: nats-server api-tools ## run the whole test suite against real nats-server processes, then the patched NATS client's unit tests (vendor/async-nats)
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace && $(CARGO) nextest run -p async-nats; \
	else \
		echo "cargo-nextest not found: falling back to cargo test"; \
		$(CARGO) test --workspace && $(CARGO) test -p async-nats --lib; \
	fi

bench: nats-server ## benchmark: the pipeline (release build) next to the ideal JetStream pipeline; prints figures
	$(CARGO) build --release -p switchyard-bench -p switchyard-ingress -p switchyard-idempotency \
		-p switchyard-backpressure -p switchyard-egress
	"$${CARGO_TARGET_DIR:-target}/release/switchyard-bench" $(BENCH_ARGS)

PREFIX ?= $(HOME)/.local
install-cli: ## install the switchyard CLI, its man pages and shell completions under PREFIX (default ~/.local)
	$(CARGO) build --release -p switchyard-cli
	@bin="$${CARGO_TARGET_DIR:-target}/release/switchyard"; \
	install -d "$(PREFIX)/bin" "$(PREFIX)/share/man/man1" "$(PREFIX)/share/bash-completion/completions" \
		"$(PREFIX)/share/zsh/site-functions" "$(PREFIX)/share/fish/vendor_completions.d" && \
	install -m 755 "$$bin" "$(PREFIX)/bin/switchyard" && \
	"$$bin" man --dir "$(PREFIX)/share/man/man1" && \
	"$$bin" completions bash > "$(PREFIX)/share/bash-completion/completions/switchyard" && \
	"$$bin" completions zsh > "$(PREFIX)/share/zsh/site-functions/_switchyard" && \
	"$$bin" completions fish > "$(PREFIX)/share/fish/vendor_completions.d/switchyard.fish" && \
	echo "installed switchyard under $(PREFIX) (add $(PREFIX)/bin to PATH, $(PREFIX)/share/man to MANPATH)"

nats-server: ## install the pinned nats-server into .tools/bin
	@scripts/install-nats-server.sh

api-tools: ## install the management API's conformance tool (schemathesis, pinned) into .tools/api-venv
	@scripts/install-api-tools.sh

fmt: ## format the code
	$(CARGO) fmt --all

clippy: ## lint, warnings are errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check: ## formatting and lints, as CI runs them
	$(CARGO) fmt --all -- --check
	$(MAKE) clippy

ci: check deploy-check test ## everything CI runs

.PHONY: deploy-check
deploy-check: ## validate deploy/ and nats/server/ offline: compose, Helm chart, manifests, Dockerfile
	@scripts/deploy-check.sh
