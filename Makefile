# FiberStack: the two commands of the README, and the parts they are made of.
#   make demo        the whole system on this machine, from custom resources to status
#   make test        everything CI checks: fmt, clippy, all tests against the real parts
#   make env-up      only the local environment (control plane, Redis, PostgreSQL, TimescaleDB)
#   make images      the four OCI images, from release binaries
.PHONY: demo demo-down env-up env-down env-status test bench manifests crds images

demo:
	bash e2e/scripts/demo.sh up

# Stops what `make demo` started, the local environment included.
demo-down:
	bash e2e/scripts/demo.sh down

env-up:
	bash e2e/scripts/env.sh up

env-down:
	bash e2e/scripts/env.sh down

env-status:
	bash e2e/scripts/env.sh status

test:
	bash e2e/scripts/test.sh

# The four images (fiberstack-operator, fiber-probe, fiber-ingest, fiber-etl) from release
# binaries with buildah: OCI archives in target/images/, pushed to the local registry when the
# environment is up. See images/build.sh --help.
images:
	bash images/build.sh

# Load benchmark of the data path with the release binaries (e2e/benches/load.rs), then the
# ETL's database writer alone (etl/benches/writer.rs), then the dashboards and status queries
# on a generated fleet (etl/benches/dashboards.rs). Prints figures, never fails on time.
bench: env-up
	cargo bench -p fiberstack-e2e --bench load
	cargo bench -p fiber-etl --bench writer
	cargo bench -p fiber-etl --bench dashboards

# Regenerate the CRDs from the operator's types, and the install bundle from the chart (tests
# fail when either is stale).
crds:
	cargo run -q -p fiberstack-operator --bin crdgen
	cp crds/*.yaml charts/fiberstack/crds/

manifests:
	bash e2e/scripts/render-manifests.sh --write
