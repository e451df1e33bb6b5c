"""The `mariadb` template's scripts with the real MariaDB programs, outside any cluster.

`durable` reads the option files as mariadbd does (my_print_defaults) and refuses what would
lose acknowledged commits; start_prim / check / stop_prim run a real mariadbd on a datadir in
tmp_path (root: mariadbd drops to the `mysql` user), as the daemon calls them (arguments, the
module's variables in the environment).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

TEMPLATE_BIN = Path(__file__).parents[2] / "src/hakit/templates/mariadb/bin"

pytestmark = pytest.mark.skipif(
    not (shutil.which("mariadbd") and shutil.which("my_print_defaults")),
    reason="MariaDB not installed (Debian package mariadb-server)",
)


def env_of(tmp: Path, **over: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HAKIT_MODULE_BIN": str(TEMPLATE_BIN),
        "DATADIR": str(tmp / "data"),
        "PORT": "3306",  # unused: no TCP listener (--skip-networking), the socket is enough
        "RUNDIR": str(tmp / "run"),
        "DEFAULTS_FILE": str(tmp / "my.cnf"),
        "LOG_ERROR": str(tmp / "log/error.log"),
        "BIND_ADDRESS": "127.0.0.1",
        "MARIADB_USER": "mysql",
        "EXTRA_ARGS": "--skip-networking",
        "START_TIMEOUT": "60",
        "STOP_TIMEOUT": "30",
    }
    env.update(over)
    return env


def run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TEMPLATE_BIN / script), *(args or ("STOP", "ALONE", "start"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def cnf(tmp: Path, *lines: str) -> Path:
    """An option file as Debian's: [mysqld] settings, then an !includedir of more."""
    (tmp / "conf.d").mkdir(exist_ok=True)
    body = "\n".join(("[client-server]", "[mysqld]", *lines, f"!includedir {tmp}/conf.d", ""))
    (tmp / "my.cnf").write_text(body)
    return tmp / "my.cnf"


def test_the_default_settings_are_durable(tmp_path: Path) -> None:
    cnf(tmp_path, "bind-address = 127.0.0.1", "innodb_buffer_pool_size = 64M")
    r = run("durable", env_of(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "innodb_flush_log_at_trx_commit=1" in r.stdout
    assert "innodb_flush_method=fsync" in r.stdout


@pytest.mark.parametrize(
    ("config", "extra", "refused"),
    [
        (["innodb_flush_log_at_trx_commit = 2"], "", "innodb_flush_log_at_trx_commit=2"),
        (["innodb-flush-log-at-trx-commit=0"], "", "innodb_flush_log_at_trx_commit=0"),
        (["skip-innodb-doublewrite"], "", "innodb_doublewrite=0"),
        (["loose_innodb_doublewrite = OFF"], "", "innodb_doublewrite=0"),
        (["innodb_flush_method = O_DIRECT"], "", "innodb_flush_method=o_direct"),
        (["innodb_flush_method = nosync"], "", "innodb_flush_method=nosync"),
        (["log-bin = mysql-bin", "sync_binlog = 0"], "", "log_bin with sync_binlog=0"),
        ([], "--innodb_flush_log_at_trx_commit=2", "innodb_flush_log_at_trx_commit=2"),
        ([], "--log-bin --sync-binlog=100", "log_bin with sync_binlog=100"),
    ],
)
def test_non_durable_settings_are_refused(
    tmp_path: Path, config: list[str], extra: str, refused: str
) -> None:
    cnf(tmp_path, *config[:1])
    (tmp_path / "conf.d" / "90-site.cnf").write_text("\n".join(["[mariadb]", *config[1:], ""]))
    r = run("durable", env_of(tmp_path, EXTRA_ARGS=extra))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"REFUSED: {refused}" in r.stdout
    assert "mariadbd is not started" in r.stdout


def test_the_last_setting_wins_and_the_binlog_default_is_overridden(tmp_path: Path) -> None:
    """As mariadbd reads them: a later `=1` wins over an earlier `=2`; a binary log without a
    sync_binlog in the files is made durable by the module's own --sync-binlog=1."""
    cnf(tmp_path, "innodb_flush_log_at_trx_commit = 2", "innodb_flush_log_at_trx_commit = 1")
    (tmp_path / "conf.d" / "90-binlog.cnf").write_text("[mysqld]\nlog-bin = mysql-bin\n")
    r = run("durable", env_of(tmp_path))
    assert r.returncode == 0, r.stdout
    assert "sync_binlog=1" in r.stdout


def test_an_unreadable_option_file_is_refused(tmp_path: Path) -> None:
    r = run("durable", env_of(tmp_path, DEFAULTS_FILE=str(tmp_path / "missing.cnf")))
    assert r.returncode == 1
    assert "cannot be read" in r.stdout


@pytest.fixture
def datadir() -> Iterator[dict[str, str]]:
    """A fresh datadir (mariadb-install-db) in a folder the mysql user can reach (pytest's
    tmp_path is under a 0700 folder); mariadbd killed by PID at the end."""
    if os.geteuid() != 0:
        pytest.skip("mariadbd runs as the mysql user: needs root")
    tmp_path = Path(tempfile.mkdtemp(prefix="hakit-mariadb-"))
    tmp_path.chmod(0o755)
    cnf(tmp_path)
    env = env_of(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    shutil.chown(data, "mysql", "mysql")
    subprocess.run(
        [
            "mariadb-install-db",
            f"--defaults-file={tmp_path / 'my.cnf'}",
            "--user=mysql",
            f"--datadir={data}",
            "--skip-test-db",
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert run("prestart", env).returncode == 0
    try:
        yield env
    finally:
        pidfile = tmp_path / "run/mysqld.pid"
        if pidfile.exists() and Path(f"/proc/{int(pidfile.read_text())}").exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        shutil.rmtree(tmp_path, ignore_errors=True)


def mariadbd_pid(env: dict[str, str]) -> int:
    return int(Path(env["RUNDIR"], "mysqld.pid").read_text())


def gone(pid: int) -> bool:
    """Exited (a zombie until whoever adopted it reaps it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_start_check_stop_and_a_forced_stop(datadir: dict[str, str]) -> None:
    env = datadir
    r = run("start_prim", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mariadbd answers" in r.stdout
    assert run("check", env).returncode == 0
    again = run("start_prim", env)  # a second start (reconcile) finds it running
    assert again.returncode == 0
    assert "already running" in again.stdout
    pid = mariadbd_pid(env)
    r = run("stop_prim", env, "ALONE", "STOP", "stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert gone(pid)
    assert run("check", env).returncode != 0
    # forced: SIGKILL, then the next start recovers (crash recovery) from a stale pid file
    assert run("start_prim", env).returncode == 0
    pid = mariadbd_pid(env)
    r = run("stop_prim", env, "ALONE", "STOP", "force")
    assert r.returncode == 0
    assert "SIGKILL" in r.stdout
    assert gone(pid)
    assert Path(env["RUNDIR"], "mysqld.pid").exists()  # left behind, as by a power cut
    r = run("start_prim", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert run("stop_prim", env, "ALONE", "STOP", "stop").returncode == 0


def test_a_refused_setting_keeps_mariadbd_stopped(datadir: dict[str, str]) -> None:
    env = {**datadir, "EXTRA_ARGS": "--skip-networking --innodb-flush-log-at-trx-commit=2"}
    r = run("start_prim", env)
    assert r.returncode == 1
    assert "REFUSED: innodb_flush_log_at_trx_commit=2" in r.stdout
    assert not Path(env["RUNDIR"], "mysqld.pid").exists()
    assert run("check", env).returncode != 0


def test_a_secondary_refuses_a_mariadbd_running_on_its_datadir(datadir: dict[str, str]) -> None:
    env = datadir
    assert run("start_prim", env).returncode == 0
    try:
        r = run("start_second", env, "STOP", "SECOND", "start")
        assert r.returncode == 1
        assert "systemctl disable --now mariadb" in r.stdout
    finally:
        run("stop_prim", env, "ALONE", "STOP", "stop")
    assert run("start_second", env, "STOP", "SECOND", "start").returncode == 0
