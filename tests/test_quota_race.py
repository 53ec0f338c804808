"""Quota reserved atomically when an upload starts (HELICAL_PLATFORM_QUOTA_GB): uploads at once, on one server or two
replicas of one database (SQLite, PostgreSQL), cannot together pass it; a dead server's reservation counts no more.
An upload body that stalls is answered 408 and leaves nothing. A crash's leftovers (partial files of a dead writer,
dataset files no row records) are removed at start, a live writer's spared."""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import anndata as ad
import pytest
import requests

from app.platform import Platform
from app.settings import Settings
from app.users import User
from store.artifacts import new_id, partial_prefix
from store.engine import read_session, write_session
from store.tables import ServerInstance, UploadReservation
from tests.api_client import error_of
from tests.conftest import PBMC
from tests.reliability import record
from tests.serving import make_serve, wait_until

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab", "carol": "carol-token-0123456789"}


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> list[Path]:
    """Three different .h5ad files of about the same size."""
    folder = tmp_path_factory.mktemp("quota-files")
    cells = ad.read_h5ad(PBMC)
    paths = []
    for i in range(3):
        path = folder / f"part{i}.h5ad"
        cells[i::3].copy().write_h5ad(path)
        paths.append(path)
    return paths


def _quota_for(paths: list[Path], room: float = 2.5) -> str:
    """A quota with room for two of ``paths`` but not three."""
    return f"{max(p.stat().st_size for p in paths) * room / 1e9:.9f}"


class _Together:
    """A file that, once read to its end, waits (up to 5 s) for the other uploads to be read too: every upload is
    stored before any is recorded, the moment a check made after storing was passed by all three."""

    def __init__(self, path: Path, barrier: threading.Barrier) -> None:
        self.fh, self.barrier = open(path, "rb"), barrier  # noqa: SIM115 - closed by the test

    def read(self, n: int = -1) -> bytes:
        chunk = self.fh.read(n)
        if not chunk and not self.barrier.broken:
            try:
                self.barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
        return chunk

    def fileno(self) -> int:
        return self.fh.fileno()

    def tell(self) -> int:
        return self.fh.tell()


def _race(platforms: list[Platform], paths: list[Path], who: str = "alice") -> tuple[list, list]:
    barrier = threading.Barrier(len(paths))
    accepted, refused = [], []

    def upload(i: int) -> None:
        source = _Together(paths[i], barrier)
        try:
            accepted.append(platforms[i % len(platforms)].datasets.ingest(source, paths[i].name, User(who)))
        except Exception as exc:  # noqa: BLE001 - what each refusal was is checked below
            refused.append(exc)
        finally:
            source.fh.close()

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return accepted, refused


def _settings(home: Path, db_url: str | None = None, **extra: str) -> Settings:
    env = {"HELICAL_PLATFORM_HOME": str(home), "HELICAL_PLATFORM_GENERATE_WEIGHTS": "none", **extra}
    if db_url:
        env["HELICAL_PLATFORM_DB_URL"] = db_url
    return Settings.from_env(env)


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_three_uploads_at_once_on_two_replicas_cannot_together_pass_the_quota(three, tmp_path, database, request):
    from app.lifecycle import QuotaExceeded, user_bytes

    db_url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    settings = _settings(tmp_path / "home", db_url, HELICAL_PLATFORM_QUOTA_GB=_quota_for(three))
    replicas = [Platform(settings, start_cluster=False), Platform(settings, start_cluster=False)]
    try:
        accepted, refused = _race(replicas, three)
        assert len(accepted) == 2 and len(refused) == 1, (accepted, refused)
        assert isinstance(refused[0], QuotaExceeded), refused[0]
        limit = settings.quota_gb * 1e9
        assert user_bytes(replicas[0], "alice") <= limit
        with read_session(replicas[0].engine) as s:
            assert list(s.exec(UploadReservation.__table__.select())) == []  # all given back
        stored = list((settings.home / "datasets").rglob("*.h5ad"))
        assert len(stored) == 2  # the refused bytes are not kept
    finally:
        for p in replicas:
            p.close()
    record("security", "Uploads at once against one user's quota (room for two)", f"three uploads by alice at "
           f"once, on two replicas of one {database} database, each stored before any is recorded",
           f"2 accepted, 1 refused: {str(refused[0])[:90]}", "alice's data within the quota; no reservation left",
           request.node.nodeid)


def test_a_reservation_of_a_server_that_is_gone_counts_no_more_a_live_ones_does(three, tmp_path, request):
    from app.lifecycle import QuotaExceeded

    settings = _settings(tmp_path / "home", HELICAL_PLATFORM_QUOTA_GB=_quota_for(three, 1.5))
    p = Platform(settings, start_cluster=False)
    try:
        p.lease.start(reconcile=False)
        dead, live = new_id(), new_id()
        with write_session(p.engine) as s:
            s.add(ServerInstance(id=dead, host="elsewhere", pid=1, stopped_at=datetime.now(UTC)))
            s.add(ServerInstance(id=live, host="elsewhere", pid=1))
            s.add(UploadReservation(id=new_id(), user="alice", bytes=10**12, owner=dead))
        with open(three[0], "rb") as fh:  # the dead server's reservation is dropped, not counted
            p.datasets.ingest(fh, "a.h5ad", User("alice"))
        with read_session(p.engine) as s:
            assert [r.owner for r in s.exec(UploadReservation.__table__.select())] == []
        with write_session(p.engine) as s:
            s.add(UploadReservation(id=new_id(), user="bob", bytes=int(settings.quota_gb * 1e9) - 10, owner=live))
        with open(three[1], "rb") as fh, pytest.raises(QuotaExceeded, match="other uploads in progress"):
            p.datasets.ingest(fh, "b.h5ad", User("bob"))  # a live replica's upload in progress holds the room
    finally:
        p.close()
    record("security", "A quota reservation left by a server that stopped mid-upload", "a reservation of 1 TB "
           "owned by a stopped server; then one held by a live replica", "the dead one dropped (alice's upload "
           "accepted); the live one counted (bob refused: other uploads in progress)", "no quota held for good",
           request.node.nodeid)


def test_leftovers_of_a_dead_process_are_removed_at_start_a_live_writers_spared(tmp_path, request):
    settings = _settings(tmp_path / "home")
    p = Platform(settings, start_cluster=False)
    tmp = p.artifacts.home / "tmp"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    dead = tmp / partial_prefix("upload").replace(f"w{os.getpid()}h", f"w{dead_pid}h")
    dead = dead.with_name(dead.name + "abc123")
    dead.write_bytes(b"half an upload")  # fresh, but its writer is gone
    mine = tmp / (partial_prefix("upload") + "def456")
    mine.write_bytes(b"an upload this live process is writing")
    old = tmp / ".partial-upload-xyz"  # no writer in its name (an older release's), untouched for two hours
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    with open(PBMC, "rb") as fh:
        kept = p.datasets.ingest(fh, "kept.h5ad")
    shard = p.artifacts.home / "datasets" / "ab"
    shard.mkdir(parents=True, exist_ok=True)
    orphan = shard / ("ab" + "0" * 62 + ".h5ad")  # stored, then the process died before recording it
    orphan.write_bytes(b"x" * 1000)
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    young = shard / ("ab" + "1" * 62 + ".h5ad")  # another replica's upload being checked now
    young.write_bytes(b"y" * 1000)
    p.close()

    again = Platform(settings, start_cluster=False).start()
    try:
        assert not dead.exists() and not old.exists() and not orphan.exists()
        assert mine.exists() and young.exists()
        assert again.datasets.path(kept).exists()
    finally:
        again.close()
    record("security", "Leftovers of a crash in the data home", "at start: a fresh partial upload of a dead "
           "process, one of this live process, an untagged one two hours old, a dataset file with no row two hours "
           "old, one a minute old, one with its row", "removed: the dead writer's, the old partial, the old "
           "orphan; kept: the live writer's, the young orphan, the recorded file",
           "nothing unrecorded stays for good; no live upload is touched", request.node.nodeid)


# ---- over HTTP: one served instance -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, three):
    tmp = tmp_path_factory.mktemp("quota")
    tokens = tmp / "tokens.txt"
    tokens.write_text("".join(f"{u} {t}\n" for u, t in TOKENS.items()))
    logins = tmp / "logins.json"  # a dashboard login too: users for REST need one for the dashboard
    logins.write_text(json.dumps({u: f"{u} password 0123" for u in TOKENS}))
    with make_serve(tmp, {"HELICAL_PLATFORM_TOKENS": str(tokens), "HELICAL_PLATFORM_QUOTA_GB": _quota_for(three),
                          "HELICAL_PLATFORM_UPLOAD_IDLE_S": "2",
                          "SERVE_ARGS": f"--basic-auth {logins} --cookie-secret {'q' * 32}"}) as s:
        yield s


class _Upload:
    """One POST /api/upload over its own connection, sent piece by piece (a slow client, or an idle one)."""

    def __init__(self, server, who: str, path: Path, chunked: bool = False) -> None:
        url = urlparse(server.url)
        self.data, self.sent, self.chunked = path.read_bytes(), 0, chunked
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        self.conn.putrequest("POST", f"/api/upload?filename={path.name}")
        self.conn.putheader("Authorization", f"Bearer {TOKENS[who]}")
        self.conn.putheader("Content-Type", "application/octet-stream")
        if chunked:
            self.conn.putheader("Transfer-Encoding", "chunked")
        else:
            self.conn.putheader("Content-Length", str(len(self.data)))
        self.conn.endheaders()

    def send(self, upto: float) -> None:
        end = int(len(self.data) * upto)
        piece, self.sent = self.data[self.sent:end], end
        if self.chunked:
            self.conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" + (b"0\r\n\r\n" if upto >= 1 else b""))
        else:
            self.conn.send(piece)

    def answer(self) -> tuple[int, dict]:
        r = self.conn.getresponse()
        body = json.loads(r.read() or b"{}")
        self.conn.close()
        return r.status, body


def _reservations(server) -> list:
    db = sqlite3.connect(server.home / "platform.db", timeout=30)
    try:
        return db.execute(f"SELECT user, bytes FROM {UploadReservation.__tablename__}").fetchall()
    finally:
        db.close()


def test_over_rest_a_third_upload_at_once_is_refused_while_two_are_still_arriving(server, three, request):
    first, second = _Upload(server, "alice", three[0]), _Upload(server, "alice", three[1])
    first.send(0.5)
    second.send(0.5)  # both started, nothing stored yet: their Content-Length is held
    wait_until(lambda: len(_reservations(server)) == 2, 30, "two reservations")
    with open(three[2], "rb") as fh:
        third = requests.post(server.url + "/api/upload", params={"filename": three[2].name}, data=fh, timeout=120,
                              headers={"Authorization": f"Bearer {TOKENS['alice']}"})
    assert third.status_code == 413 and error_of(third)["code"] == "over_quota", third.text
    assert "other uploads in progress" in error_of(third)["message"]
    first.send(1)
    second.send(1)
    assert first.answer()[0] == 201 and second.answer()[0] == 201
    assert _reservations(server) == []  # given back: the datasets count instead
    # a body of unknown length (chunked) is charged as its bytes arrive
    mine = {d["dataset_id"] for d in requests.get(server.url + "/api/datasets?mine=true", timeout=30, headers={
        "Authorization": f"Bearer {TOKENS['alice']}"}).json()}
    assert len(mine) == 2
    late = _Upload(server, "alice", three[2], chunked=True)
    late.send(0.5)
    late.send(1)
    status, body = late.answer()
    assert status == 413 and body["error"]["code"] == "over_quota", body
    assert _reservations(server) == []
    record("security", "Uploads at once against one user's quota (room for two)", "two REST uploads by alice "
           "half sent, then a third (Content-Length); then a chunked one with no length",
           "the third 413 over_quota (other uploads in progress) while the two were still arriving; both then "
           "201; the chunked one 413 as its bytes came", "alice never over the quota; no reservation left",
           request.node.nodeid)


def test_over_rest_an_upload_body_that_stalls_is_answered_408_and_leaves_nothing(server, three, request):
    stalled = _Upload(server, "bob", three[0])
    stalled.send(0.01)  # a few bytes, then nothing
    began = time.monotonic()
    status, body = stalled.answer()  # the server answers on its own: no more bytes come from here
    waited = time.monotonic() - began
    assert status == 408 and body["error"]["code"] == "upload_idle", body
    assert "HELICAL_PLATFORM_UPLOAD_IDLE_S" in body["error"]["message"] and waited < 30
    assert list((server.home / "tmp").glob(".partial-upload-*")) == []
    wait_until(lambda: _reservations(server) == [], 10, "the stalled upload's reservation to go")
    ok = requests.get(server.url + "/api/health", timeout=30)
    assert ok.status_code in (200, 503)  # the server answers others meanwhile
    record("security", "An upload body that stalls (HELICAL_PLATFORM_UPLOAD_IDLE_S=2)", "bob sends 1% of a "
           "declared body, then nothing", f"408 upload_idle after {waited:.1f} s; connection closed",
           "no temporary file, no quota reservation left", request.node.nodeid)


def test_over_rest_clients_that_hang_up_while_their_files_are_checked_cannot_pass_the_quota(server, three, request):
    """Each file sent whole and the connection closed at once, one after another: the reservation must stay held
    while the server still stores and checks the file (a hang-up once gave it back, and all three were stored)."""
    who = "carol"
    for path in three:
        upload = _Upload(server, who, path)
        upload.send(1)
        upload.conn.close()

    def settled() -> bool:
        return _reservations(server) == [] and not list((server.home / "tmp").glob(".partial-upload-*"))

    wait_until(settled, 120, "the hung-up uploads to be checked")  # each check takes over a second: never at once
    mine = requests.get(server.url + "/api/datasets?mine=true", timeout=30,
                        headers={"Authorization": f"Bearer {TOKENS[who]}"}).json()
    assert len(mine) <= 2, [d["file_name"] for d in mine]
    record("security", "Uploads that hang up while their file is checked (room for two)", "carol sends three "
           "files one after another, closing each connection as soon as its body is sent",
           f"{len(mine)} stored", "carol never over the quota; no reservation left", request.node.nodeid)
