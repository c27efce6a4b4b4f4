#!/usr/bin/env bash
# Build the published leaderboard: validate every submission, verify submitted adversarial images,
# re-run a seeded subset of the world entry's cells, and render the site. The GitHub Pages workflow runs exactly this; so does the test
# suite (on one cell of the undefended model).
#
# Usage: leaderboards/publish.sh OUT [SEED] [CELLS]      (REPRODUCE_DEFENSES=a,b limits the choice)
set -euo pipefail
out=${1:?usage: leaderboards/publish.sh OUT [SEED] [CELLS]}
seed=${2:-0}
cells=${3:-3}
here=$(cd "$(dirname "$0")" && pwd)
submissions="$here/submissions"
report=$(mktemp "${TMPDIR:-/tmp}/vlmbench-reproduction.XXXXXX.json")
verification=$(mktemp "${TMPDIR:-/tmp}/vlmbench-verification.XXXXXX.json")
trap 'rm -f "$report" "$verification"' EXIT

# An invalid submission is reported here and left out of the site by the build; it never stops the rest.
vlmbench results validate "$submissions"/*/ || echo "warning: invalid submissions are left out of the site" >&2

# Cells submitted with their adversarial images (run --save-adversarials) are re-scored; rows whose
# cells all agree are marked "verified". A failed verification is reported and leaves the row unmarked.
vlmbench results verify "$submissions"/*/ --report "$verification" > /dev/null \
    || echo "warning: some submitted adversarial images did not verify (see \`vlmbench results verify\`)" >&2

only=()
for name in ${REPRODUCE_DEFENSES//,/ }; do only+=(--defense "$name"); done
python -m vlmbench.leaderboards.world reproduce "$submissions/world" --cells "$cells" --seed "$seed" \
    "${only[@]}" --report "$report"

verified=(--verification "$verification")
[ -s "$verification" ] || verified=()  # verify could not run at all: build without the marks
vlmbench leaderboard build --submissions "$submissions" --reproduction "$report" "${verified[@]}" --out "$out"
