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

rabbitmq() {
    if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
        echo "services: rabbitmq already running"
        return 0
    fi
    need_packages rabbitmq-server
    # loopback only: the node, its distribution port and epmd
    [ -s /etc/rabbitmq/rabbitmq.conf ] ||
        echo "listeners.tcp.local = 127.0.0.1:5672" > /etc/rabbitmq/rabbitmq.conf
    [ -s /etc/rabbitmq/rabbitmq-env.conf ] || cat > /etc/rabbitmq/rabbitmq-env.conf <<'ENV'
NODENAME=rabbit@localhost
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
ENV
    rabbitmq-server -detached
    for _ in $(seq 1 60); do
        (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break
        sleep 1
    done
    rabbitmqctl -q await_startup >/dev/null
    echo "services: rabbitmq started"
}

postgres
rabbitmq
