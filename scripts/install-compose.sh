#!/usr/bin/env bash
# Make `docker compose` available for validating docker-compose.yml (`docker compose config`
# needs no Docker engine). Debian bookworm packages only Compose v1, so the v2 binary comes
# from Debian trixie's `docker-compose` package, unpacked as a CLI plugin (and as a standalone
# `docker-compose` when there is no docker CLI). Idempotent; needs root for apt-get.
set -euo pipefail
if docker compose version >/dev/null 2>&1; then exit 0; fi
if docker-compose version 2>/dev/null | grep -q 'v\?2\.'; then exit 0; fi
echo ">>> installing Docker Compose v2 (Debian trixie's docker-compose package)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
  > "$work/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
apt-get "${apt_opts[@]}" update -qq
(cd "$work" && apt-get "${apt_opts[@]}" download docker-compose >/dev/null)
dpkg-deb -x "$work"/docker-compose_*.deb "$work/root"
# The package ships the binary as a Docker CLI plugin named docker-compose.
plugin=$(find "$work/root" -type f -name docker-compose -perm -u+x | head -n 1)
[ -n "$plugin" ] || { echo "docker-compose binary not found in the package" >&2; exit 1; }
install -D -m 0755 "$plugin" "${HOME}/.docker/cli-plugins/docker-compose"
install -D -m 0755 "$plugin" /usr/local/bin/docker-compose
docker-compose version
