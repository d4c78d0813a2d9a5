#!/usr/bin/env bash
# Start the services the tests need, on loopback, unless they already run;
# install them from Debian's packages when they are missing.
set -euo pipefail

apt_updated=""
need_packages() {
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        echo "services: postgresql already running"
    else
        need_packages postgresql
        local version
        version=$(ls /etc/postgresql | sort -n | tail -1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        for _ in $(seq 1 30); do
            pg_isready -q -h 127.0.0.1 -p 5432 && break
            sleep 1
        done
        echo "services: postgresql started"
    fi
    # the tests connect as postgres:postgres over TCP; trust or password both work
    if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -c 'select 1' -qt >/dev/null 2>&1; then
        su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    fi
}

postgres
