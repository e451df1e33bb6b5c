#!/bin/sh
# Sourced by the other scripts (not a hakit script itself): names and helpers shared by them.
# The module's variables (DATADIR, PORT, RUNDIR, DEFAULTS_FILE, ...) come from the environment.
SOCKET="$RUNDIR/mysqld.sock"
PIDFILE="$RUNDIR/mysqld.pid"

# What makes an acknowledged commit durable: the redo log written and fsync'd at every commit,
# the binary log (if enabled) too, torn pages repaired from the doublewrite buffer, and plain
# plain fsync (O_DIRECT fails on the replicated directory's FUSE mount: InnoDB does not start).
DURABLE_ARGS="--innodb-flush-log-at-trx-commit=1 --sync-binlog=1 --innodb-doublewrite=1 --innodb-flush-method=fsync"

# mariadbd's command line; --defaults-file must come first. The command line wins over the
# option files, so the socket and pid file are always in RUNDIR, never in the datadir.
mariadbd_args() {
    echo "--defaults-file=$DEFAULTS_FILE --user=$MARIADB_USER --datadir=$DATADIR" \
        "--port=$PORT --bind-address=$BIND_ADDRESS --socket=$SOCKET --pid-file=$PIDFILE" \
        "--log-error=$LOG_ERROR $DURABLE_ARGS $EXTRA_ARGS"
}

# The PID of the mariadbd serving DATADIR on this host, if one runs: found by its command line,
# not by the pid file (after a power cut it may name an unrelated process). "This host": the
# same network namespace (a lab's nodes share one PID namespace; a systemd service has its own
# mount namespace but the host's network).
running_pid() {
    here=$(readlink /proc/self/ns/net)
    for p in $(pgrep -x mariadbd 2>/dev/null) $(pgrep -x mysqld 2>/dev/null); do
        [ "$(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null)" != Z ] || continue
        [ "$(readlink "/proc/$p/ns/net" 2>/dev/null)" = "$here" ] || continue
        if tr '\0' '\n' < "/proc/$p/cmdline" 2>/dev/null | grep -qxF -- "--datadir=$DATADIR"; then
            echo "$p"; return 0
        fi
    done
    return 1
}

ping_server() {  # $1: connect timeout (s)
    mariadb-admin --no-defaults --socket="$SOCKET" --connect-timeout="$1" ping >/dev/null 2>&1
}
