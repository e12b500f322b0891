# FiberStack: the two commands of the README, and the parts they are made of.
#   make demo        the whole system on this machine, from custom resources to status
#   make test        everything CI checks: fmt, clippy, all tests against the real parts
#   make env-up      only the local environment (control plane, Redis, PostgreSQL, TimescaleDB)
#   make images      the four OCI images, from release binaries
.PHONY: demo demo-down env-up env-down env-status test bench bench-datapath bench-operator bench-probe bench-dashboards manifests crds images

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

# Benchmarks: each prints its figures and, last, one JSON line; none fails on time.
#   bench-datapath    the data path at the database's limit (e2e/benches/load.rs), then the
#                     ETL's database writer alone (etl/benches/writer.rs)
#   bench-operator    2,000 FiberProbes reconciled, against a plain client's floor (e2e/benches/fleet.rs)
#   bench-probe       fiber-probe against blackbox_exporter on the same targets, RTT against
#                     ping, ICMP capacity (probe/benches/versus_blackbox.rs; as root)
#   bench-dashboards  every dashboard query on a generated fleet (etl/benches/dashboards.rs)
# `make bench` runs them all.
bench: bench-datapath bench-operator bench-probe bench-dashboards

bench-datapath: env-up
	cargo bench -p fiberstack-e2e --bench load
	cargo bench -p fiber-etl --bench writer

bench-operator: env-up
	cargo bench -p fiberstack-e2e --bench fleet

bench-probe:
	cargo bench -p fiber-probe --bench versus_blackbox

bench-dashboards: env-up
	cargo bench -p fiber-etl --bench dashboards

# Regenerate the CRDs from the operator's types, and the install bundle from the chart (tests
# fail when either is stale).
crds:
	cargo run -q -p fiberstack-operator --bin crdgen
	cp crds/*.yaml charts/fiberstack/crds/

manifests:
	bash e2e/scripts/render-manifests.sh --write
