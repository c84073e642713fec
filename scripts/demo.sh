#!/usr/bin/env bash
# Start the portal with the example servers on SQLite (a fresh data folder each time
# unless --data DIR is given). Sets up .venv when it is missing.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec portal demo "$@"
