#!/usr/bin/env bash
# Fetches the browser libraries the API serves (the review page's map, the offline API docs) from
# the npm registry at pinned versions, checks each tarball against its registry integrity, and
# copies the files used, unchanged and with their licences, into monitor/api/static/vendor/<lib>/.
# Source maps are not shipped: browsers ask for them only while their developer tools are open.
# The results are committed, so neither a build nor the daemon needs the network; run this only
# to change a version (then update the pins below and commit what it writes).
set -euo pipefail
cd "$(dirname "$0")/.."

# name version integrity (npm view NAME@VERSION dist.integrity)
PINS=(
  "leaflet 1.9.4 sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZwCXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA=="
  "swagger-ui-dist 5.35.0 sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ=="
  "redoc 2.5.4 sha512-M6jWhG1qoBnH6TFmzJnstyCZ87HmOY/UzDm78mHiYihEdlV/YcS9ogOo1NlElnJMeLsyxHFe2yFc4sNjHTrABQ=="
)
# files copied from each package (paths inside the tarball's package/ folder)
declare -A FILES=(
  [leaflet]="LICENSE dist/leaflet.js dist/leaflet.css dist/images/layers.png dist/images/layers-2x.png dist/images/marker-icon.png dist/images/marker-icon-2x.png dist/images/marker-shadow.png"
  [swagger-ui-dist]="LICENSE NOTICE swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png"
  [redoc]="LICENSE bundles/redoc.standalone.js bundles/redoc.standalone.js.LICENSE.txt"
)

command -v npm >/dev/null || { echo "npm is needed: apt-get install npm" >&2; exit 1; }
DEST=monitor/api/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

manifest="$DEST/VERSIONS"
tmp_manifest="$work/VERSIONS"
echo "# written by scripts/vendor-assets.sh: package version integrity" > "$tmp_manifest"
for pin in "${PINS[@]}"; do
  read -r name version integrity <<<"$pin"
  (cd "$work" && npm pack --silent "$name@$version" >/dev/null)
  tarball="$work/$name-$version.tgz"
  actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [ "$actual" != "$integrity" ]; then
    echo "$name@$version: integrity $actual, expected $integrity" >&2
    exit 1
  fi
  mkdir -p "$work/$name"
  tar xzf "$tarball" -C "$work/$name"
  rm -rf "${DEST:?}/$name"
  for f in ${FILES[$name]}; do
    src="$work/$name/package/$f"
    if [ ! -f "$src" ]; then
      # a licence file beside a bundle is optional: not every release has one
      case "$f" in *.LICENSE.txt) continue ;; esac
      echo "$name@$version has no $f" >&2
      exit 1
    fi
    rel=${f#dist/}
    rel=${rel#bundles/}
    mkdir -p "$DEST/$name/$(dirname "$rel")"
    cp "$src" "$DEST/$name/$rel"
  done
  echo "$name $version $integrity" >> "$tmp_manifest"
  echo "vendored $name@$version"
done
cp "$tmp_manifest" "$manifest"
