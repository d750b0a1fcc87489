#!/usr/bin/env bash
# A single-node Slurm (slurmctld + slurmd + slurmdbd on MariaDB, munge) for the tests and for trying the launcher.
# Runs as root without systemd; idempotent; `stop` stops only the daemons this script started.
#
#   bash slurm/local_cluster.sh start    # installs Debian packages if needed, starts, prints `export SLURM_CONF=...`
#   bash slurm/local_cluster.sh status
#   bash slurm/local_cluster.sh stop
#
# State (configs, logs, spool, database) lives in $DEEPCLUSTER_SLURM_DIR (default /tmp/deepcluster-slurm).
set -euo pipefail

STATE=${DEEPCLUSTER_SLURM_DIR:-/tmp/deepcluster-slurm}
CONF=$STATE/etc/slurm.conf
DB_PORT=${DEEPCLUSTER_SLURM_DB_PORT:-3307}
HOST=$(hostname -s)
export SLURM_CONF=$CONF

log() { echo "[local_cluster] $*" >&2; }
die() { echo "[local_cluster] error: $*" >&2; exit 1; }

running() { # pidfile -> 0 when its process is alive
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

healthy() {
  [ -f "$CONF" ] && timeout 5 sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' \
    && timeout 5 sacct -n -X -S now-1minutes >/dev/null 2>&1
}

install_packages() {
  local missing=()
  for bin in slurmctld:slurm-wlm slurmd:slurm-wlm slurmdbd:slurmdbd munged:munge mariadbd:mariadb-server sbatch:slurm-client; do
    command -v "${bin%%:*}" >/dev/null 2>&1 || missing+=("${bin##*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" -eq 0 ] || die "Slurm packages missing (${missing[*]}) and not root: install them or run as root"
  log "installing ${missing[*]} (Debian packages)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

write_configs() {
  mkdir -p "$STATE"/{etc,log,run,ctld,spool,mysql}
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
  cat > "$CONF" <<EOF
ClusterName=deepcluster
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MailProg=/bin/true
ReturnToService=2
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=5
MinJobAge=600
JobRequeue=1
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$STATE/etc/slurmdbd.conf"
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if [ ! -f /etc/munge/munge.key ]; then
    (command -v mungekey >/dev/null && mungekey --create) || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  runuser -u munge -- /usr/sbin/munged
  echo munged >> "$STATE/started"
}

start_mariadb() {
  running "$STATE/run/mariadb.pid" && return
  if [ ! -d "$STATE/mysql/mysql" ]; then
    mysql_install_db --user=root --datadir="$STATE/mysql" >"$STATE/log/mysql_install.log" 2>&1
  fi
  rm -f "$STATE/run/mysql.sock"  # a stale socket from an earlier run would pass the wait below at once
  mariadbd --user=root --datadir="$STATE/mysql" --socket="$STATE/run/mysql.sock" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadb.pid" --log-error="$STATE/log/mariadb.log" \
    --skip-log-bin >/dev/null 2>&1 &
  for _ in $(seq 200); do
    mariadb --socket="$STATE/run/mysql.sock" -u root -e "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.1
  done
  mariadb --socket="$STATE/run/mysql.sock" -u root -e "SELECT 1" >/dev/null 2>&1 \
    || die "MariaDB did not start; see $STATE/log/mariadb.log"
  mariadb --socket="$STATE/run/mysql.sock" -u root <<'EOF'
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
  echo mariadb >> "$STATE/started"
}

start_slurm() {
  if ! running "$STATE/run/slurmdbd.pid"; then
    slurmdbd
    for _ in $(seq 100); do timeout 2 bash -c "</dev/tcp/127.0.0.1/6819" 2>/dev/null && break; sleep 0.1; done
  fi
  running "$STATE/run/slurmctld.pid" || slurmctld
  running "$STATE/run/slurmd.pid" || slurmd
  for _ in $(seq 150); do
    if healthy; then return; fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 0.2
  done
  die "Slurm did not come up; see the logs in $STATE/log"
}

stop_pid() { # name pidfile
  if running "$2"; then
    kill "$(cat "$2")" 2>/dev/null || true
    for _ in $(seq 50); do running "$2" || break; sleep 0.1; done
    log "stopped $1"
  fi
}

case "${1:-}" in
  start)
    if healthy; then log "already running"; echo "export SLURM_CONF=$CONF"; exit 0; fi
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurm
    log "single-node Slurm up on $HOST ($(nproc) CPUs); logs in $STATE/log"
    echo "export SLURM_CONF=$CONF"
    ;;
  stop)
    stop_pid slurmd "$STATE/run/slurmd.pid"
    stop_pid slurmctld "$STATE/run/slurmctld.pid"
    stop_pid slurmdbd "$STATE/run/slurmdbd.pid"
    if grep -qx mariadb "$STATE/started" 2>/dev/null; then stop_pid mariadb "$STATE/run/mariadb.pid"; fi
    if grep -qx munged "$STATE/started" 2>/dev/null; then
      pkill -x munged 2>/dev/null && log "stopped munged" || true
    fi
    rm -f "$STATE/started"
    ;;
  status)
    if healthy; then sinfo; echo "export SLURM_CONF=$CONF"; else echo "not running"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
