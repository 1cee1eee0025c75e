# Sourced by the scripts: puts the tools scripts/setup.sh installed on PATH.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$root/.shoal/tools/bin:$PATH"
