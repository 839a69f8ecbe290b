#!/usr/bin/env bash
# A throw-away local SLURM cluster for tests: munged, mariadb + slurmdbd (accounting), slurmctld and two
# slurmd processes that act as two nodes (n1, n2) on this host. Debian 12 packages, run as root, no systemd.
#
#   scripts/slurm/local_cluster.sh start DIR    install missing packages, start, wait until both nodes are idle;
#                                               prints `export SLURM_CONF=DIR/etc/slurm.conf` (clients need it)
#   scripts/slurm/local_cluster.sh stop DIR     stop what `start` started, by PID file, and undo its /etc/hosts line
#   scripts/slurm/local_cluster.sh install      only install the Debian packages
#
# Every wait is bounded. DIR is owned by the cluster: its Slurm state and accounting database are wiped
# together on start (wiping only one makes job ids restart while sacct still reports the old jobs).
set -euo pipefail

PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
WAIT_TENTHS=${LOCAL_SLURM_WAIT_TENTHS:-300}   # bound on each start-up wait, in 0.1 s steps
HOSTS_MARK="# vistok-local-slurm"

die() { echo "local_cluster: $*" >&2; exit 1; }

install_packages() {
  [ "$(id -u)" = 0 ] || die "must run as root (it starts munged and the Slurm daemons)"
  local missing
  missing=$(for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  [ -z "$missing" ] && return 0
  command -v apt-get >/dev/null || die "packages missing ($missing) and no apt-get to install them"
  echo "local_cluster: installing $missing" >&2
  apt-get update -qq >&2
  # The postinst scripts try to start services; with no init system they are refused, which is fine.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
}

wait_for() {  # wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds or the bound passes
  local what=$1; shift
  for _ in $(seq "$WAIT_TENTHS"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out waiting for $what (logs: $ROOT/log)"
}

start_munge() {
  # Debian's postinst creates the key; make one if it is missing.
  [ -s /etc/munge/munge.key ] || { mungekey -c -k /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key
                                   chmod 600 /etc/munge/munge.key; }
  munge -n >/dev/null 2>&1 && return 0   # a munged is already running: use it, never stop it
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for munged munge -n
  cp /run/munge/munged.pid "$ROOT/run/munged.pid"   # ours to stop
}

add_hosts_line() {
  # Lightning and torch take MASTER_ADDR from the first node name (n1): it must resolve.
  getent hosts n1 >/dev/null && getent hosts n2 >/dev/null && return 0
  echo "127.0.0.1 n1 n2 $HOSTS_MARK" >> /etc/hosts
  touch "$ROOT/run/hosts-added"
}

start_accounting() {
  # submitit polls sacct: without accounting a job that dies without a result is never seen to end.
  mariadb-install-db --user=root --datadir="$ROOT/mysql-data" --auth-root-authentication-method=normal \
    --skip-test-db > "$ROOT/log/mariadb-install.log" 2>&1
  nohup /usr/sbin/mariadbd --user=root --datadir="$ROOT/mysql-data" --socket="$ROOT/run/mysql.sock" \
    --pid-file="$ROOT/run/mysql.pid" --bind-address=127.0.0.1 --port=3306 --log-error="$ROOT/log/mariadb.err" \
    --skip-name-resolve --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
  wait_for mariadb mariadb -S "$ROOT/run/mysql.sock" -uroot -e 'select 1'
  mariadb -S "$ROOT/run/mysql.sock" -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  # slurmdbd has no -f: it reads slurmdbd.conf beside $SLURM_CONF, which must be mode 600.
  sed "s|@ROOT@|$ROOT|g" "$HERE/slurmdbd.conf.in" > "$ROOT/etc/slurmdbd.conf"
  chmod 600 "$ROOT/etc/slurmdbd.conf"
  /usr/sbin/slurmdbd
  wait_for slurmdbd grep -q started "$ROOT/log/slurmdbd.log"
}

check_ports_free() {  # the ports slurm.conf.in, slurmdbd.conf.in and mariadb use
  local port
  for port in 3306 6817 6818 6819 17001 17002; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port is already in use (another Slurm or MySQL on this host?); stop it first"
    fi
  done
}

nodes_idle() { [ "$(sinfo -h -N -o %t 2>/dev/null | sort -u)" = idle ]; }

start() {
  install_packages
  [ -e "$ROOT/run/slurmctld.pid" ] && die "$ROOT already holds a running cluster (stop it first)"
  check_ports_free
  rm -rf "$ROOT/state" "$ROOT/mysql-data" "$ROOT/log" "$ROOT/run"
  mkdir -p "$ROOT"/{etc,state,log,run}
  export SLURM_CONF=$ROOT/etc/slurm.conf
  sed -e "s|@ROOT@|$ROOT|g" -e "s|@HOST@|$(hostname -s)|g" "$HERE/slurm.conf.in" > "$SLURM_CONF"
  start_munge
  add_hosts_line
  start_accounting
  /usr/sbin/slurmctld -f "$SLURM_CONF"
  /usr/sbin/slurmd -f "$SLURM_CONF" -N n1
  /usr/sbin/slurmd -f "$SLURM_CONF" -N n2
  wait_for "both nodes idle" nodes_idle
  echo "export SLURM_CONF=$SLURM_CONF"
}

stop_pid_file() {  # SIGTERM the process named in a PID file, SIGKILL it if it has not gone after 10 s
  local file=$1 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop() {
  export SLURM_CONF=$ROOT/etc/slurm.conf
  [ -d "$ROOT/run" ] || return 0
  [ -s "$ROOT/run/slurmctld.pid" ] && timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
  for f in "$ROOT"/run/slurmd-*.pid; do stop_pid_file "$f"; done
  stop_pid_file "$ROOT/run/slurmctld.pid"
  stop_pid_file "$ROOT/run/slurmdbd.pid"
  stop_pid_file "$ROOT/run/mysql.pid"
  stop_pid_file "$ROOT/run/munged.pid"
  if [ -e "$ROOT/run/hosts-added" ]; then
    # Rewritten in place (not sed -i): /etc/hosts is often a bind mount that cannot be replaced.
    grep -v "$HOSTS_MARK\$" /etc/hosts > "$ROOT/run/hosts" || true
    cat "$ROOT/run/hosts" > /etc/hosts
    rm -f "$ROOT/run/hosts-added"
  fi
}

HERE=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in
  install) install_packages ;;
  start|stop)
    [ -n "${2:-}" ] || die "usage: $0 start|stop DIR"
    mkdir -p "$2"; ROOT=$(cd "$2" && pwd)
    "$1" ;;
  *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
