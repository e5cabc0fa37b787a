# Sourced by the project's shell scripts: bad arguments end a script with one "error: ..." line on stderr and
# exit status 1, before any work (the Python entry points do the same through classification/core/cli.py).
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
require_file() { [ -f "$1" ] || die "$2: file not found: $1"; }
require_positive_int() { [[ "$1" =~ ^[0-9]+$ && "$1" -ge 1 ]] || die "$2 must be a positive integer, got '$1'"; }
