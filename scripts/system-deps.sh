#!/usr/bin/env bash
# Installs the system packages the project needs when they are missing:
# PostgreSQL 15 + PostGIS 3 (the private database), for the deployment checks
# Prometheus (promtool) and docker-compose, and for the review page's browser tests
# Chromium with its WebDriver and a font. As root it uses apt-get; otherwise it says
# what to install.
set -euo pipefail

need=()
have_postgis() {
  ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1
}
if [ -z "${DATABASE_URL:-}" ] && ! have_postgis; then need+=(postgresql-15-postgis-3); fi
PY=$(command -v python3.11 || command -v python3)
"$PY" -c "import ensurepip, venv" 2>/dev/null || need+=("python3-venv")
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ -d /usr/share/fonts/truetype/liberation ] || need+=(fonts-liberation)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts a system cluster with the package; the project uses its own.
  exit 0
fi
echo "Missing system packages: ${need[*]}" >&2
echo "Install them as root: sudo apt-get install ${need[*]}" >&2
if printf '%s\n' "${need[@]}" | grep -q postgis; then
  echo "(or set DATABASE_URL to an existing PostGIS database)" >&2
  exit 1
fi
