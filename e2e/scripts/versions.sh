# Pinned versions of everything the local environment builds or installs.
# Sourced by the scripts in e2e/scripts; change a version here and the next
# `make env-up` builds it into a new cache folder (the old one is left alone).
# v1.34.11 and v1.34.12 are on the module proxy but not in its checksum database, so
# they cannot be verified: v1.34.10 is the latest 1.34 patch that builds.
K8S_VERSION=v1.34.10
K8S_STAGING_VERSION=v0.34.10
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
COREDNS_VERSION=v1.14.7
REGISTRY_VERSION=v3.1.2
# The alerting tests route through a real Alertmanager.
ALERTMANAGER_VERSION=v0.35.0
FIBERSTACK_CACHE="${FIBERSTACK_CACHE:-$HOME/.cache/fiberstack}"
