#!/usr/bin/env bash
# Run the whole test suite (lint, types, tests). Sets up .venv when it is missing.
#
# PostgreSQL and Redis tests use PORTAL_TEST_POSTGRES_URL and PORTAL_TEST_REDIS_URL
# (defaults: the local services) and are skipped, saying so, when those are not
# reachable; PORTAL_REQUIRE_SERVICES=1 makes that a failure instead. Likewise the
# tests that need Node 22 (conformance suite, MCP Inspector) and PORTAL_REQUIRE_NODE=1.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export PORTAL_TEST_POSTGRES_URL="${PORTAL_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
export PORTAL_TEST_REDIS_URL="${PORTAL_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
echo "== ruff" >&2
ruff check portal servers codemode tests bench
ruff format --check portal servers codemode tests bench
echo "== mypy" >&2
mypy
echo "== pytest" >&2
exec python -m pytest "$@"
