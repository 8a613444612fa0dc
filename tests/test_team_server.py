"""The team set-up for real: PostgreSQL + MLflow's tracking server with basic-auth (genlab.tracking.server) on loopback,
a tiny experiment tracked into it by `dvc repro`, read back over the REST API, its security and its faults."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from genlab.tracking.server import Server, ServerError

from conftest import Project, assert_one_point_per_step

pytestmark = pytest.mark.slow
EPOCHS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Team:
    """The server and two accounts: alice (runs the experiments) and bob (may only read)."""

    def __init__(self, server: Server, admin: str):
        self.server, self.admin = server, admin
        self.alice, self.bob = ("alice", secrets.token_urlsafe(16)), ("bob", secrets.token_urlsafe(16))
        self.secrets = [admin, self.alice[1], self.bob[1]]

    def env(self, user: tuple[str, str]) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.server.url,
            "MLFLOW_TRACKING_USERNAME": user[0],
            "MLFLOW_TRACKING_PASSWORD": user[1],
        }

    def api(self, method: str, path: str, user: tuple[str, str] | None, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.server.url}/api/2.0/mlflow/{path}", auth=user, timeout=60, **kwargs)

    def client(self, user: tuple[str, str], monkeypatch):
        from mlflow import MlflowClient

        for key, value in self.env(user).items():
            monkeypatch.setenv(key, value)
        return MlflowClient(self.server.url)


@pytest.fixture(scope="module")
def team():
    with _new_server() as server:
        admin = secrets.token_urlsafe(16)
        server.start(admin)
        team = Team(server, admin)
        for name, password in (team.alice, team.bob):
            response = team.api("POST", "users/create", ("admin", admin), json={"username": name, "password": password})
            assert response.status_code == 200, response.text
        _cheap_logins(server, (team.alice, team.bob))
        yield team


def _cheap_logins(server: Server, users) -> None:
    """MLflow's basic-auth checks the password of every request against werkzeug's default hash, scrypt: 0.3 s of
    CPU per request on 2 cores, so a training logging to the server waited on logins (the suite's slowest module).
    The test accounts get a one-round PBKDF2 hash of the same password: the same check, a fraction of the cost."""
    import sqlite3

    from werkzeug.security import generate_password_hash

    con = sqlite3.connect(server.root / "secrets" / "users.db")
    try:
        with con:
            for name, password in users:
                cheap = generate_password_hash(password, method="pbkdf2:sha256:1")
                updated = con.execute("UPDATE users SET password_hash = ? WHERE username = ?", (cheap, name))
                assert updated.rowcount == 1, name
    finally:
        con.close()


@contextlib.contextmanager
def _new_server():
    # As root, PostgreSQL runs as another account, which must be able to reach its folder (pytest's is 0700).
    root = Path(tempfile.mkdtemp(prefix="genlab-server-"))
    root.chmod(0o755)
    server = Server(root / "server", port=_free_port(), pg_port=_free_port())
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _assert_nothing_left(server: Server) -> None:
    """No PostgreSQL or MLflow of `server` running, no pid file, no cluster: the next start is a first one."""
    pgdata = str(server.pgdata.resolve())
    assert not [p.pid for p in psutil.process_iter(["cwd"]) if (p.info["cwd"] or "").startswith(pgdata)]
    assert not (server.root / "mlflow.pid").exists() and not server.pgdata.exists()
    assert not (server.root / "secrets" / "users.db").exists()


@pytest.fixture
def alice_project(project: Project, team: Team, request) -> Project:
    project.env.update(team.env(team.alice))
    project.env["MLFLOW_EXPERIMENT_NAME"] = request.node.name  # the tests share the server: one experiment each
    return project


def _runs(team: Team, project: Project) -> list[dict]:
    name, user = project.env["MLFLOW_EXPERIMENT_NAME"], team.alice
    experiment = team.api("GET", "experiments/get-by-name", user, params={"experiment_name": name}).json()
    found = team.api("POST", "runs/search", user, json={"experiment_ids": [experiment["experiment"]["experiment_id"]]})
    return found.json().get("runs", [])


def test_repro_report_and_four_queued_experiments_against_the_server(alice_project, team, monkeypatch):
    repro = alice_project.run("dvc", "repro")
    report = alice_project.run("python", "stages/report.py", "--dataset", "digits", "--family", "vae")
    assert "1 run(s) from " + team.server.url in report.stdout

    (run,) = _runs(team, alice_project)
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")  # stored by the server, not the client
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert "test/elbo" in metrics and "val/elbo" in metrics
    history = team.api("GET", "metrics/get-history", team.alice, params={"run_id": run_id, "metric_key": "val/elbo"})
    assert sorted(m["step"] for m in history.json()["metrics"]) == list(range(1, EPOCHS + 1))
    client = team.client(team.alice, monkeypatch)
    assert_one_point_per_step(client, client.get_run(run_id), EPOCHS)

    def listing(path: str = "") -> list[str]:
        got = team.api("GET", "artifacts/list", team.alice, params={"run_id": run_id, "path": path}).json()
        return [f["path"] for f in got.get("files", [])]

    images = [p for p in listing("images") if p.endswith(".png")]
    assert images and "model_file/model.pt" in listing("model_file")
    served = requests.get(
        f"{team.server.url}/get-artifact", params={"run_id": run_id, "path": images[0]}, auth=team.alice, timeout=60
    )
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
    registered = team.api("GET", "registered-models/search", team.alice).json()
    assert registered.get("registered_models"), registered

    # The MLflow model loads back from the server (set explicitly: MLflow keeps a URI set earlier in the process
    # over the environment's).
    import mlflow.pyfunc

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(team.server.url)
    try:
        loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(previous)
    assert loaded.metadata.run_id == run_id

    # No credential in the run, the outputs, the console or the server's logs.
    recorded = json.dumps(run["data"])
    texts = [recorded, repro.stdout, repro.stderr, report.stdout, report.stderr]
    for path in [*alice_project.root.rglob("*"), *(team.server.root / "logs").rglob("*")]:
        if path.is_file() and path.stat().st_size < 50_000_000:
            texts.append(path.read_bytes().decode("latin-1"))
    for secret in team.secrets:
        assert not any(secret in text for text in texts)

    # Four queued experiments, two at a time: four more complete runs.
    alice_project.commit("baseline results")
    betas = ("0.5", "1.5", "2.0", "3.0")
    for beta in betas:
        alice_project.run("dvc", "exp", "run", "--queue", "-S", f"vae.beta={beta}")
    status = alice_project.run_queue(jobs=2)
    assert status.count("Success") == 4, status
    runs = _runs(team, alice_project)
    queued = [r for r in runs if any(t["key"] == "dvc.exp_name" for t in r["data"].get("tags", []))]
    assert sorted({p["key"]: p["value"] for p in r["data"]["params"]}["vae.beta"] for r in queued) == list(betas)
    assert len(runs) == 5 and all(r["info"]["status"] == "FINISHED" for r in runs)
    for run in queued:
        assert_one_point_per_step(client, client.get_run(run["info"]["run_id"]), EPOCHS)


def test_anonymous_and_other_users_cannot_change_the_experiment(alice_project, team):
    name = alice_project.env["MLFLOW_EXPERIMENT_NAME"]
    experiment_id = team.api("POST", "experiments/create", team.alice, json={"name": name}).json()["experiment_id"]
    run_id = team.api("POST", "runs/create", team.alice, json={"experiment_id": experiment_id}).json()["run"]["info"][
        "run_id"
    ]

    assert team.api("POST", "runs/search", None, json={"experiment_ids": [experiment_id]}).status_code == 401
    assert team.api("GET", "runs/get", ("alice", "not-her-password"), params={"run_id": run_id}).status_code == 401
    # bob reads (the server's default permission) but writes, deletes and tags nothing of alice's.
    assert team.api("GET", "runs/get", team.bob, params={"run_id": run_id}).status_code == 200
    refused = [
        team.api("POST", "runs/create", team.bob, json={"experiment_id": experiment_id}),
        team.api("POST", "runs/delete", team.bob, json={"run_id": run_id}),
        team.api("POST", "runs/set-tag", team.bob, json={"run_id": run_id, "key": "x", "value": "y"}),
        team.api("POST", "runs/log-metric", team.bob, json={"run_id": run_id, "key": "x", "value": 1, "timestamp": 0}),
        team.api("POST", "experiments/delete", team.bob, json={"experiment_id": experiment_id}),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    run = team.api("GET", "runs/get", team.alice, params={"run_id": run_id}).json()["run"]
    # Bob's tag and metric are absent by key: the run's random name (e.g. "…-lynx-651") may well hold an "x".
    keys = {item["key"] for kind in ("tags", "metrics") for item in run["data"].get(kind, [])}
    assert run["info"]["lifecycle_stage"] == "active" and "x" not in keys, keys
    # ... and genlab tells bob why when he tries to train into alice's experiment.
    alice_project.env.update(team.env(team.bob))
    alice_project.stage("download")
    refused_train = alice_project.stage("train", check=False)
    assert refused_train.returncode == 2, refused_train.stderr
    assert f"user 'bob' may not change experiment '{name}'" in refused_train.stderr
    assert "Traceback" not in refused_train.stderr


def test_server_and_database_listen_on_loopback_only(team):
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in (team.server.port, team.server.pg_port)
    }
    assert listening == {("127.0.0.1", team.server.port), ("127.0.0.1", team.server.pg_port)}
    assert (team.server.root / "secrets").stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in (team.server.root / "secrets").iterdir())


def _train_in_background(project: Project, epochs: int):
    project.set_params({"train": {"epochs": epochs}})
    project.stage("download")
    return project.popen("python", "stages/train.py")


def _wait_for_epoch(project: Project, proc, epoch: int, timeout: float = 300) -> None:
    import torch

    ckpt = project.root / "checkpoints" / "train.pt"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                if torch.load(ckpt, weights_only=True)["epoch"] >= epoch:
                    return
            except (EOFError, RuntimeError):  # caught mid-replace
                pass
        time.sleep(0.05)
    raise AssertionError(f"training did not reach epoch {epoch}: {proc.poll()} {proc.stdout.read()}")


def _assert_one_complete_run(team: Team, project: Project, epochs: int, monkeypatch) -> None:
    (run,) = _runs(team, project)
    assert run["info"]["status"] == "FINISHED"
    client = team.client(team.alice, monkeypatch)
    assert_one_point_per_step(client, client.get_run(run["info"]["run_id"]), epochs)


@pytest.mark.parametrize("what", ["mlflow", "postgres"])
def test_a_server_or_database_outage_mid_run_loses_no_metric(alice_project, team, what, monkeypatch):
    """Killed (SIGKILL / PostgreSQL's immediate stop) and back 5 s later: MLflow's client retries meanwhile, so
    the run continues and every epoch's metrics arrive once."""
    epochs = 12
    proc = _train_in_background(alice_project, epochs)
    _wait_for_epoch(alice_project, proc, 3)
    if what == "mlflow":
        team.server.stop_mlflow(signal.SIGKILL)
        time.sleep(5)
        team.server.start_mlflow(None)
    else:
        team.server.stop_postgres("immediate")
        time.sleep(5)
        team.server.start_postgres()
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    _assert_one_complete_run(team, alice_project, epochs, monkeypatch)


def test_a_server_gone_for_good_stops_training_clearly_and_resume_completes_the_run(alice_project, team, monkeypatch):
    alice_project.env.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"})
    epochs = 12
    proc = _train_in_background(alice_project, epochs)
    _wait_for_epoch(alice_project, proc, 3)
    team.server.stop_mlflow(signal.SIGKILL)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        team.server.start_mlflow(None)
    assert proc.returncode == 2 and "did not answer" in out and "train.resume: true continues it" in out, out
    assert not (alice_project.root / "models/model.pt").exists()
    alice_project.set_params({"train": {"resume": True}})
    resumed = alice_project.stage("train")
    assert "resuming from checkpoints/train.pt" in resumed.stdout
    _assert_one_complete_run(team, alice_project, epochs, monkeypatch)


def test_a_failed_first_start_leaves_nothing_running_and_the_next_start_is_a_first_one(monkeypatch):
    """MLflow refuses the admin password (too short): PostgreSQL is stopped again, the pid file and the new cluster
    removed, so the next start asks for the password again instead of starting a server without an admin."""
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("GENLAB_ADMIN_PASSWORD_FILE", raising=False)
    with _new_server() as server:
        with pytest.raises(ServerError, match="did not start") as refused:
            server.start("short")
        assert "admin" in str(refused.value) and "password" in str(refused.value)  # MLflow's reason, from its log
        _assert_nothing_left(server)
        with pytest.raises(ServerError, match="the first start creates MLflow's admin account"):
            server.start()


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_port_another_program_holds_is_named_and_the_start_undone():
    """Another program answering /health on MLflow's port: the start must not take it for its own server."""
    with _new_server() as server:
        other = http.server.HTTPServer(("127.0.0.1", server.port), _Health)
        threading.Thread(target=other.serve_forever, daemon=True).start()
        try:
            with pytest.raises(
                ServerError, match=f"port 127.0.0.1:{server.port} is taken by pid {os.getpid()} "
            ) as taken:
                server.start(secrets.token_urlsafe(16))
            assert "set GENLAB_SERVER_PORT to a free port" in str(taken.value)
        finally:
            other.shutdown()
            other.server_close()
        _assert_nothing_left(server)


def test_stop_signals_no_process_but_the_mlflow_server_genlab_started(tmp_path):
    """A stale mlflow.pid whose pid is now another program's (own session, as the server's was): not signalled."""
    server = Server(tmp_path / "server")
    server.root.mkdir()
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    started = psutil.Process(other.pid).create_time()
    mlflow_cmd = [sys.executable, "-m", "mlflow", "server"]
    stale = [
        str(other.pid),  # an older genlab's pid file
        json.dumps({"pid": other.pid, "started": started - 60, "cmdline": ["sleep", "600"]}),  # another start time
        json.dumps({"pid": other.pid, "started": started, "cmdline": mlflow_cmd}),  # another command line
    ]
    try:
        for record in stale:
            (server.root / "mlflow.pid").write_text(record)
            server.stop_mlflow()
            assert other.poll() is None, record
            assert not (server.root / "mlflow.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_a_crash_lock_file_naming_another_program_is_not_signalled_and_postgres_starts(team):
    """PostgreSQL crashed and its pid is now another program of the same account: `pg_ctl status` would call that
    running and `pg_ctl stop` signal it; genlab sees it is no postmaster, removes the stale lock and starts."""
    server = team.server
    server.stop_postgres()
    other = subprocess.Popen(["sleep", "600"], start_new_session=True, **server._pg_user())
    lock = server.pgdata / "postmaster.pid"
    lock.write_text(f"{other.pid}\n{server.pgdata}\n{int(time.time())}\n{server.pg_port}\n\n127.0.0.1\n0 0\nready\n")
    try:
        assert not server.postgres_running()
        server.stop_postgres()
        assert other.poll() is None
        server.start_postgres()
        assert server.postgres_running() and other.poll() is None
        assert server._psql("SELECT 1").strip() == "1"
    finally:
        other.kill()
        other.wait()
        server.start_postgres()


def test_a_registered_model_name_another_user_created_is_refused_clearly_and_the_run_kept(
    alice_project, team, monkeypatch
):
    """bob creates the name alice's training registers under: her run completes with its model logged, genlab says
    why it is not registered and how to register it once granted, and nothing of hers lands in bob's model."""
    name, admin = "genlab-vae-digits", ("admin", team.admin)
    team.api("DELETE", "registered-models/delete", admin, json={"name": name})  # an earlier test's registration
    assert team.api("POST", "registered-models/create", team.bob, json={"name": name}).status_code == 200
    try:
        alice_project.stage("download")
        trained = alice_project.stage("train")
        assert f"user 'alice' may not register models as '{name}'" in trained.stderr
        assert "Traceback" not in trained.stderr
        (run,) = _runs(team, alice_project)
        assert run["info"]["status"] == "FINISHED"
        run_id = run["info"]["run_id"]
        versions = team.api("GET", "model-versions/search", team.alice, params={"filter": f"name='{name}'"}).json()
        assert not versions.get("model_versions"), versions

        # Granted EDIT by the name's owner, alice registers the run's model as the message says.
        grant = {"username": "alice", "resource_type": "registered_model", "resource_id": name, "permission": "EDIT"}
        granted = requests.post(
            f"{team.server.url}/api/3.0/mlflow/users/permissions/grant", json=grant, auth=team.bob, timeout=60
        )
        assert granted.status_code == 200, granted.text
        import mlflow

        team.client(team.alice, monkeypatch)  # alice's credentials in the environment
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(team.server.url)
        try:
            version = mlflow.register_model(f"runs:/{run_id}/model", name)
        finally:
            mlflow.set_tracking_uri(previous)
        assert version.run_id == run_id
    finally:
        team.api("DELETE", "registered-models/delete", admin, json={"name": name})
