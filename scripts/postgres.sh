# Starts a throwaway PostgreSQL for tests and benchmarks; meant to be sourced.
#
# Installs Debian's `postgresql` package if no server is on the machine,
# initdb's a cluster in a temporary directory as the `postgres` user (the
# server refuses to run as root), starts it on a free port on 127.0.0.1 with
# the default durability (fsync and synchronous_commit on), and exports
# KYU_TEST_POSTGRES_URL. The cluster is stopped and removed on exit.

kyu_pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# What the tests need beside PostgreSQL, in the same one apt step: openssl
# (the test certificates), systemd-analyze (checking the units in
# docs/deploy), and Chromium with its WebDriver (the console's browser test).
kyu_missing=()
[ -z "$(kyu_pg_bin)" ] && kyu_missing+=(postgresql)
command -v openssl >/dev/null || kyu_missing+=(openssl)
command -v systemd-analyze >/dev/null || kyu_missing+=(systemd)
[ -x /usr/bin/chromium ] || kyu_missing+=(chromium)
[ -x /usr/bin/chromedriver ] || kyu_missing+=(chromium-driver)
if [ ${#kyu_missing[@]} -gt 0 ]; then
  echo "== installing ${kyu_missing[*]} (Debian packages)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${kyu_missing[@]}" >/dev/null
fi
KYU_PG_BIN="$(kyu_pg_bin)"
if [ -z "$KYU_PG_BIN" ]; then
  echo "PostgreSQL could not be installed: the PostgreSQL tests cannot run" >&2
  exit 1
fi

# Run the server as a non-root user: `postgres` when we are root, else ourselves.
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql postgres
  KYU_PG_RUN=(runuser -u postgres --)
else
  KYU_PG_RUN=()
fi

KYU_PG_DIR="$(mktemp -d /tmp/kyu-pg.XXXXXX)"
chmod 755 "$KYU_PG_DIR"
[ "$(id -u)" -eq 0 ] && chown postgres "$KYU_PG_DIR"
KYU_PG_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"

# TLS: a CA made here signs a certificate for localhost and 127.0.0.1, which
# the server presents, so tests connect with sslmode=verify-full (and the
# HTTPS tests reuse it). Plain connections keep working beside TLS ones.
mkdir -p "$KYU_PG_DIR/tls"
(
  cd "$KYU_PG_DIR/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj "/CN=kyu test CA" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n" > ext.cnf
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3 -extfile ext.cnf -out server.crt 2>/dev/null
  cp server.key pg.key && chmod 600 pg.key
) || { echo "openssl could not make the test certificates" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] && chown postgres "$KYU_PG_DIR/tls/pg.key"
export KYU_TEST_TLS_CA="$KYU_PG_DIR/tls/ca.crt" KYU_TEST_TLS_CERT="$KYU_PG_DIR/tls/server.crt" KYU_TEST_TLS_KEY="$KYU_PG_DIR/tls/server.key"

"${KYU_PG_RUN[@]}" "$KYU_PG_BIN/initdb" -D "$KYU_PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-locale >"$KYU_PG_DIR/initdb.log" 2>&1 \
  || { cat "$KYU_PG_DIR/initdb.log" >&2; exit 1; }
"${KYU_PG_RUN[@]}" "$KYU_PG_BIN/pg_ctl" -D "$KYU_PG_DIR/data" -l "$KYU_PG_DIR/server.log" -w -t 60 \
  -o "-p $KYU_PG_PORT -k $KYU_PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB -c ssl=on -c ssl_cert_file=$KYU_PG_DIR/tls/server.crt -c ssl_key_file=$KYU_PG_DIR/tls/pg.key" start >/dev/null \
  || { cat "$KYU_PG_DIR/server.log" >&2; exit 1; }

kyu_pg_stop() {
  "${KYU_PG_RUN[@]}" "$KYU_PG_BIN/pg_ctl" -D "$KYU_PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$KYU_PG_DIR"
}
trap kyu_pg_stop EXIT

export KYU_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$KYU_PG_PORT/postgres"
# The fault suite crashes and restarts the server under load with this.
export KYU_TEST_PG_RESTART="${KYU_PG_RUN[*]} $KYU_PG_BIN/pg_ctl -D $KYU_PG_DIR/data -l $KYU_PG_DIR/server.log -w -t 60 -m immediate restart"
echo "== PostgreSQL $("$KYU_PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$KYU_PG_PORT"
