#!/usr/bin/env bash
# Install the system programs the test suite runs for real: SLURM (slurmctld, slurmd, slurmdbd,
# client commands), MariaDB (the accounting database behind slurmdbd), munge, the OpenSSH
# server, shellcheck, wrk and nginx. Idempotent: does nothing when everything is already there.
# Debian/Ubuntu only (apt-get).
#
# The tests start their own daemons (a throwaway SLURM cluster and sshd on loopback ports), so
# the packages' system services must NOT be started by the install: a Debian slurmd/slurmctld
# on the default ports, a MariaDB on 3306, or nginx on port 80, would collide with or confuse the
# tests. The test cluster runs its own mariadbd (own datadir, socket and port) and slurmdbd.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurmdbd slurm-client mariadb-server munge openssh-server shellcheck wrk nginx-light)
# program -> where it may live (sbin is often not on a non-root PATH)
PROGRAMS=(slurmctld slurmd slurmdbd sbatch sacct sacctmgr mariadbd mariadb-install-db munged sshd shellcheck wrk nginx)

have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

missing=()
for prog in "${PROGRAMS[@]}"; do
  have "$prog" || missing+=("$prog")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-test-deps: all present (${PROGRAMS[*]})"
  exit 0
fi

echo "install-test-deps: missing: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: not root; install them with:" >&2
  echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${PACKAGES[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: no apt-get here; install the equivalents of: ${PACKAGES[*]}" >&2
  exit 1
fi

# Keep maintainer scripts from starting services (invoke-rc.d and deb-systemd-invoke both ask
# policy-rc.d; exit 101 = "action forbidden"). Only add one when none exists (Docker images ship
# their own), and remove only the one we added.
POLICY=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# temporary, from biofleet scripts/install-test-deps.sh\nexit 101\n' >"$POLICY"
  chmod 0755 "$POLICY"
  added_policy=1
fi
cleanup() {
  if [ "$added_policy" -eq 1 ]; then
    rm -f "$POLICY"
  fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

# Belt and braces on hosts where something started anyway (e.g. systemd presets): stop and
# disable the package services. munge is left alone: the test cluster reuses a running munged.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  for unit in slurmctld slurmd slurmdbd mariadb nginx; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
fi

# munged refuses to start without these (owned by munge); the test cluster also checks them.
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile=/etc/munge/munge.key
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0600 /etc/munge/munge.key

still=()
for prog in "${PROGRAMS[@]}"; do
  have "$prog" || still+=("$prog")
done
if [ "${#still[@]}" -ne 0 ]; then
  echo "install-test-deps: still missing after install: ${still[*]}" >&2
  exit 1
fi
echo "install-test-deps: done"
