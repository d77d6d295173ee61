#!/usr/bin/env bash
# Installs everything the relay's test suite needs, skipping what is already there:
#   - Debian packages: redis-server, podman + runc (container test), musl-tools (static build),
#     haproxy and curl (the load balancer of the cluster tests and its checks), openssl (the
#     CA and certificates of the Redis-over-TLS tests);
#   - the Rust target x86_64-unknown-linux-musl and cargo-deny;
#   - a Python venv with moto[server] (a local SQS server), boto3 and cfn-lint (the AWS template).
# Safe to run again; a warm run takes seconds.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"


need_apt redis-server podman runc musl-tools ca-certificates haproxy curl openssl

if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  step "rustup target add x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi

if ! command -v cargo-deny >/dev/null; then
  step "cargo install cargo-deny (a few minutes, once)"
  cargo install cargo-deny --locked
fi

# Python venv with moto (SQS) and boto3 (the original README's publisher).
if ! "$DATASTREAM_TEST_VENV/bin/python3" -c 'import moto, boto3, flask_cors' 2>/dev/null; then
  step "Python venv with moto[server] in $DATASTREAM_TEST_VENV"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    need_apt python3-venv
  fi
  rm -rf "$DATASTREAM_TEST_VENV"
  python3 -m venv "$DATASTREAM_TEST_VENV"
  "$DATASTREAM_TEST_VENV/bin/pip" install -q --upgrade pip
  "$DATASTREAM_TEST_VENV/bin/pip" install -q 'moto[server]>=5,<6' 'boto3>=1.34'
fi

# cfn-lint validates deploy/aws offline (moto[server] usually brings it along already).
if ! "$DATASTREAM_TEST_VENV/bin/python3" -c 'import cfnlint' 2>/dev/null; then
  step "pip install cfn-lint"
  "$DATASTREAM_TEST_VENV/bin/pip" install -q 'cfn-lint>=1,<2'
fi

step "test dependencies ready"
