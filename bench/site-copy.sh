#!/usr/bin/env bash
# A site's copy of the lattice's components: 20 hosts behind one leaf (secure and open
# sites), none able to reach the registry, start a 5 MiB component; prints the bytes the
# hub sent across its leaf connections (one copy is 5,242,880 bytes) and fails above 1.5
# copies. The end-to-end test of tests/edge.rs with SHOAL_SITE_HOSTS hosts.
# Usage: bench/site-copy.sh [HOSTS=20]
set -euo pipefail
hosts=${1:-20}
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh >/dev/null
# shellcheck source=../scripts/env.sh
source scripts/env.sh
SHOAL_SITE_HOSTS=$hosts cargo nextest run -p shoal-cli --test edge one_copy_of_a_component \
    --no-capture 2>&1 | grep -E "bytes across the leaf|PASS|FAIL"
