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

listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Start the RabbitMQ node and wait until PORT answers and the node has booted.
start_rabbitmq() {
    rabbitmq-server -detached
    for _ in $(seq 1 60); do
        listening "$1" && break
        sleep 1
    done
    rabbitmqctl -q await_startup >/dev/null
}

rabbitmq() {
    if listening 5672; then
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
    start_rabbitmq 5672
    echo "services: rabbitmq started"
}

# A TLS listener on 127.0.0.1:5671 for the amqps:// tests, with a certificate
# authority of its own; the tests find the authority's certificate in $TLS_DIR.
TLS_DIR=/etc/rabbitmq/gridtower-tls
rabbitmq_tls() {
    if listening 5671; then
        echo "services: rabbitmq tls already listening"
        return 0
    fi
    if [ ! -s "$TLS_DIR/server.pem" ]; then
        mkdir -p "$TLS_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=gridtower test CA" \
            -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$TLS_DIR/san.ext"
        openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" \
            -CAkey "$TLS_DIR/ca.key" -CAcreateserial -days 3650 -extfile "$TLS_DIR/san.ext" \
            -out "$TLS_DIR/server.pem" 2>/dev/null
        chmod 0600 "$TLS_DIR/ca.key" "$TLS_DIR/server.key"
        chown -R rabbitmq:rabbitmq "$TLS_DIR" 2>/dev/null || true
    fi
    if ! grep -q '^listeners.ssl' /etc/rabbitmq/rabbitmq.conf; then
        cat >> /etc/rabbitmq/rabbitmq.conf <<CONF
listeners.ssl.default = 127.0.0.1:5671
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
    fi
    # a listener is read at boot: restart the node once
    rabbitmqctl -q stop >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do
        listening 5672 || break
        sleep 1
    done
    start_rabbitmq 5671
    echo "services: rabbitmq tls listening"
}

# The SLURM and SSH tests start their own slurmctld, slurmd, munged and sshd on
# loopback (tests/cluster.py), with configs in temporary directories: only install.
slurm_packages() {
    local packages=(slurm-wlm munge openssh-server)
    if dpkg -s "${packages[@]}" >/dev/null 2>&1; then
        echo "services: slurm, munge and openssh-server already installed"
        return 0
    fi
    # the packages' scripts would start sshd on 0.0.0.0:22, munged and slurmctld
    # with their system configs; a policy-rc.d refusing every start prevents it
    # (Docker images ship one; elsewhere put one in place for this script's run)
    local policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 0755 "$policy"
        trap "rm -f $policy" EXIT
    fi
    need_packages "${packages[@]}"
    echo "services: slurm, munge and openssh-server installed"
}

# The page tests drive Debian's headless Chromium through Playwright (the Python
# package comes with the test extras; it uses this browser, downloads none).
chromium_browser() {
    if command -v chromium >/dev/null 2>&1; then
        echo "services: chromium already installed"
        return 0
    fi
    need_packages chromium fonts-dejavu-core
    echo "services: chromium installed"
}

# tests/integration/test_fleet.py runs nginx itself, in the foreground on loopback
# ports with a configuration of its own; the system's nginx service is not started.
nginx_package() {
    if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
        echo "services: nginx already installed"
        return 0
    fi
    need_packages nginx
    echo "services: nginx installed"
}

# tests/integration/test_containers.py runs payloads in directory images with bubblewrap
bubblewrap_package() {
    if command -v bwrap >/dev/null 2>&1; then
        echo "services: bubblewrap already installed"
        return 0
    fi
    need_packages bubblewrap
    echo "services: bubblewrap installed"
}

# tests/arcce.py starts an ARC CE itself (A-REX and its REST service, the fork batch
# system) from a temporary directory on loopback; its pilots run as nobody with
# Debian's python3, and its job scripts write to /dev/null as that user.
arc_packages() {
    need_packages nordugrid-arc-arex nordugrid-arc-plugins-needed python3-requests \
        python3-pika python3-yaml
    if ! su nobody -s /bin/sh -c ': > /dev/null' 2>/dev/null; then
        chmod 666 /dev/null  # its standard mode; something here had taken it away
        echo "services: /dev/null made writable again"
    fi
    echo "services: arc ce packages installed"
}

postgres
rabbitmq
rabbitmq_tls
slurm_packages
chromium_browser
nginx_package
bubblewrap_package
arc_packages
