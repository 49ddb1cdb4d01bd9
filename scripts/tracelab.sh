#!/usr/bin/env bash
# Runs tracelab after the set-up (idempotent), with a release build:
#   scripts/tracelab.sh run experiments/sgd-restaurants.toml
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --workspace --bins --quiet
exec target/release/tracelab "$@"
