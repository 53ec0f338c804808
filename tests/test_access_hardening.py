"""Issue 34's access holes: download links signed with a per-install secret that expire, a login required on every
way in when users exist, and unknown Host headers refused (DNS rebinding).

The rules are tried without a server first; then one served instance, set up as the issue found it (a tokens file,
admins, Panel's basic auth and NO ``HELICAL_PLATFORM_API_TOKEN``), takes every HTTP check. The refusals to start
run before it (one served instance at a time).
"""

from __future__ import annotations

import hmac
import json
import multiprocessing
import os
import re
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import requests

from app import downloads
from app.downloads import SECRET_FILE, download_signature, download_url, link_refusal, link_secret
from app.server_access import basic_auth_refusal, host_allowed, host_refusal_message, login_refusal
from app.settings import Settings, SettingsError
from tests.conftest import REPO, free_port
from tests.reliability import record
from tests.serving import make_serve, wait_until

TOKENS = {"alice": "alice-token-0123456789ab", "bob": "bob-token-0123456789abcd"}
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22", "carol": "carol-password-333"}
SUBMIT = {"application": "cell-type-annotation", "model": "baseline", "label_column": "celltype"}


def _platform(home: Path, link_s: int = 3600) -> SimpleNamespace:
    return SimpleNamespace(settings=SimpleNamespace(home=home, download_link_s=link_s, api_token=None))


# --- the download secret and links, without a server -----------------------------------------------------------

def _secret_in_child(home: str, out: multiprocessing.Queue) -> None:
    out.put(link_secret(Path(home)).hex())


def test_the_link_secret_is_random_private_and_one_per_data_home(tmp_path, request):
    homes = [tmp_path / "a", tmp_path / "b"]
    downloads._secrets.clear()
    keys = [link_secret(h) for h in homes]
    assert len(keys[0]) == 32 and keys[0] != keys[1] and b"" not in keys
    for home in homes:
        mode = stat.S_IMODE((home / SECRET_FILE).stat().st_mode)
        assert mode == 0o600, oct(mode)
        assert not [p for p in home.iterdir() if p.name != SECRET_FILE]  # no temporary file left

    race = tmp_path / "replicas"  # eight processes on one fresh data home, as replicas starting together
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_secret_in_child, args=(str(race), out)) for _ in range(8)]
    for p in procs:
        p.start()
    seen = {out.get(timeout=120) for _ in procs}
    for p in procs:
        p.join(60)
    assert len(seen) == 1 and seen == {(race / SECRET_FILE).read_text().strip()}, seen

    (race / SECRET_FILE).chmod(0o644)  # copied carelessly: made private again when read
    downloads._secrets.clear()
    assert link_secret(race).hex() in seen and stat.S_IMODE((race / SECRET_FILE).stat().st_mode) == 0o600
    (race / SECRET_FILE).write_text("")
    downloads._secrets.clear()
    with pytest.raises(downloads.SecretError, match="Delete it"):
        link_secret(race)  # an empty key is never used
    record("security", "Download links: the signing secret",
           "two data homes; eight processes creating the secret of one fresh data home at once; the file made "
           "0644; the file emptied", "32 random bytes per home, 0600, no temporary left; all eight processes got "
           "the same secret; 0644 made 0600 again; an empty file refused with what to do",
           "links are keyed by a secret of this install, never the empty string", request.node.nodeid)


def test_a_link_is_valid_only_for_its_run_format_and_time(tmp_path, request):
    downloads._secrets.clear()
    p, now = _platform(tmp_path / "home"), time.time()
    url = download_url(p, "run-a", "csv", now=now)
    query = dict(kv.split("=", 1) for kv in urlsplit(url).query.split("&"))
    assert url.startswith("/api/download/run-a?format=csv&") and int(query["exp"]) == int(now) + 3600
    exp, sig = query["exp"], query["sig"]
    assert link_refusal(p, "run-a", "csv", exp, sig, now=now) is None
    assert link_refusal(p, "run-a", "csv", exp, sig, now=int(exp) - 1) is None
    forged = {
        "another run": link_refusal(p, "run-b", "csv", exp, sig, now=now),
        "another format": link_refusal(p, "run-a", "h5ad", exp, sig, now=now),
        "a later exp": link_refusal(p, "run-a", "csv", str(int(exp) + 86400), sig, now=now),
        "no exp": link_refusal(p, "run-a", "csv", None, sig, now=now),
        "empty key, old message": link_refusal(
            p, "run-a", "csv", exp, hmac.new(b"", b"run-a:csv", "sha256").hexdigest(), now=now),
        "empty key, new message": link_refusal(
            p, "run-a", "csv", exp, hmac.new(b"", downloads._message("run-a", "csv", int(exp)),
                                             "sha256").hexdigest(), now=now),
        "empty sig": link_refusal(p, "run-a", "csv", exp, "", now=now),
        "another install's key": link_refusal(p, "run-a", "csv", exp, download_signature(
            _platform(tmp_path / "other"), "run-a", "csv", int(exp)), now=now),
    }
    for case, why in forged.items():
        assert why is not None and ("not valid" in why or "exp=" in why), (case, why)
    expired = link_refusal(p, "run-a", "csv", exp, sig, now=int(exp) + 1)
    assert expired is not None and "expired" in expired and "fresh one" in expired
    short = Settings.from_env({"HELICAL_PLATFORM_DOWNLOAD_LINK_S": "120"})
    assert short.download_link_s == 120 and Settings.from_env({}).download_link_s == 3600
    for bad in ("30", str(8 * 24 * 3600), "soon"):
        with pytest.raises(SettingsError, match="HELICAL_PLATFORM_DOWNLOAD_LINK_S"):
            Settings.from_env({"HELICAL_PLATFORM_DOWNLOAD_LINK_S": bad})
    record("security", "Download links: what a signature covers", ", ".join(forged) + "; the real link one second "
           "after exp", "each refused with why; the real link accepted until exp, then 'expired'; lifetime "
           "60 s to 7 days (default 3600 s)", "a link opens one run's one format until it expires",
           request.node.nodeid)


# --- hosts and logins, without a server ------------------------------------------------------------------------

def test_the_host_rule(request):
    from bokeh.server.util import create_hosts_allowlist

    allowed = create_hosts_allowlist(["localhost:5006", "Lab.Example.org", "*.lab.internal:8443"], 5006)
    for host in ("localhost:5006", "LOCALHOST:5006", "lab.example.org", "lab.example.org:80",
                 "node1.lab.internal:8443"):
        assert host_allowed(host, allowed, 5006), host
    assert host_allowed("127.0.0.1:5006", allowed, 5006) and host_allowed("[::1]:5006", allowed, 5006)
    refused = ("evil.example", "evil.example:5006", "localhost:5007", "127.0.0.1:5007", "lab.example.org:5006",
               "lab.example.org.evil.example", "evil.example@localhost:5006", "", "node1.lab.internal:443")
    for host in refused:
        assert not host_allowed(host, allowed, 5006), host
    assert not host_allowed("127.0.0.1:5006", allowed, None)  # loopback only with the port the request came to
    message = host_refusal_message("evil.example:5006")
    assert "'evil.example:5006'" in message and "HELICAL_PLATFORM_ALLOW_ORIGIN" in message
    record("security", "Allowed hosts: the rule (DNS rebinding)", "; ".join(h or "(empty)" for h in refused),
           "each refused; the listed hosts (case-insensitive, default port 80, Bokeh's wildcards) and loopback "
           "names on the served port allowed", "only this server's names are answered", request.node.nodeid)


def test_users_without_a_dashboard_login_is_refused_with_how_to_add_one(tmp_path, request):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-0123456789ab\n")
    with_tokens = Settings.from_env({"HELICAL_PLATFORM_TOKENS": str(tokens)})
    with_admins = Settings.from_env({"HELICAL_PLATFORM_ADMINS": "carol"})
    for settings, variable in ((with_tokens, "HELICAL_PLATFORM_TOKENS"), (with_admins, "HELICAL_PLATFORM_ADMINS")):
        why = login_refusal(settings, has_login=False)
        assert why is not None and variable in why
        assert "--basic-auth" in why and "PANEL_COOKIE_SECRET" in why and "--oauth-provider" in why
        assert login_refusal(settings, has_login=True) is None
    assert login_refusal(Settings.from_env({}), has_login=False) is None  # one user: the open server as before
    shared = {"HELICAL_PLATFORM_API_TOKEN": "t" * 20}
    for address in ("localhost", "127.0.0.1", "::1"):  # only this machine's accounts reach it
        assert login_refusal(Settings.from_env({**shared, "HELICAL_PLATFORM_ADDRESS": address}), False) is None
    for address in ("0.0.0.0", "::", "192.168.1.20", "lab.example.org"):  # the network does: a login is needed
        why = login_refusal(Settings.from_env({**shared, "HELICAL_PLATFORM_ADDRESS": address}), has_login=False)
        assert why is not None and "HELICAL_PLATFORM_API_TOKEN" in why and "--basic-auth" in why, address
        assert login_refusal(Settings.from_env({**shared, "HELICAL_PLATFORM_ADDRESS": address}), True) is None
    record("security", "Users without a dashboard login: the rule", "tokens file, admins, neither, the shared "
           "token alone on loopback and on network addresses; each with and without a login",
           "refused (naming --basic-auth, PANEL_COOKIE_SECRET and OAuth) exactly when users are configured, or the "
           "shared token guards a server listening beyond loopback, and there is no login",
           "no anonymous dashboard beside a locked API", request.node.nodeid)


def test_the_sidebar_says_who_may_delete_what(tmp_path, monkeypatch, request):
    import panel as pn

    from app.platform import Platform
    from dashboards.usage import UsageView, delete_rule, who_text

    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{u} {t}\n" for u, t in TOKENS.items()))
    env = {"HELICAL_PLATFORM_HOME": str(tmp_path / "home"), "HELICAL_PLATFORM_TOKENS": str(tokens),
           "HELICAL_PLATFORM_ADMINS": "carol,dave"}
    p = Platform(Settings.from_env(env), start_cluster=False)
    shown = {}
    try:
        for name in ("bob", "carol"):
            monkeypatch.setattr(type(pn.state), "user", property(lambda self, n=name: n))
            shown[name] = UsageView(p).who.object
    finally:
        p.close()
    assert "Signed in as** bob (may delete what they made)" in shown["bob"]
    assert "the admins (carol, dave) may delete anyone's" in shown["bob"]
    assert "an admin: may delete anything" in shown["carol"]
    assert "no one deletes another user's" in delete_rule((), True)
    assert "every signed-in user may delete" in delete_rule((), False)
    assert "may delete anything" not in who_text("anonymous", False, True)  # never promised with users configured
    record("security", "The sidebar's rule of deletion", "UsageView for bob and carol with a tokens file and "
           "admins carol, dave; the rule with no admins, with no users", f"bob: {shown['bob'][:160]}",
           "the sidebar says who may delete what", request.node.nodeid)


def test_with_only_a_dashboard_login_the_api_and_downloads_need_it_too(tmp_path, request):
    """Basic auth and no tokens (the users are the dashboard's): an anonymous API call was let in as the open
    server's one user. The REST routes on an in-process Tornado server, with and without a login configured."""
    import asyncio
    import threading

    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    import app.platform as platform_module
    from app.platform import Platform
    from app.rest import ROUTES

    secret = "k" * 32

    class WithLogin(tornado.web.Application):  # what Panel's --basic-auth gives the server: an auth provider
        auth_provider = SimpleNamespace(get_user=lambda handler: None, get_user_async=None)

    p = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home")}), start_cluster=False)
    before, platform_module._shared = platform_module._shared, p
    loop = asyncio.new_event_loop()
    ports: dict[str, int] = {}
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            for name, cls in (("login", WithLogin), ("open", tornado.web.Application)):
                sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
                tornado.httpserver.HTTPServer(cls(ROUTES, cookie_secret=secret)).add_sockets(sockets)
                ports[name] = sockets[0].getsockname()[1]

        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(60)
        cookie = tornado.web.create_signed_value(secret, "user", "alice").decode()
        run = "00000000-0000-4000-8000-000000000000"
        got = {}
        for name, port in ports.items():
            base = f"http://127.0.0.1:{port}"
            got[name] = [requests.get(base + "/api/runs", timeout=60).status_code,
                         requests.get(base + f"/api/download/{run}?format=csv", timeout=60).status_code,
                         requests.get(base + "/api/runs", cookies={"user": cookie}, timeout=60).status_code]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        platform_module._shared = before
        p.close()
    assert got["login"] == [401, 401, 200], got  # anonymous refused; the login cookie lets alice in
    assert got["open"] == [200, 404, 200], got  # an open server stays open (the control)
    record("security", "Only a dashboard login (basic auth, no tokens): the API and downloads",
           "anonymous GET /api/runs and /api/download, and with the login cookie; the same on an open server",
           f"with a login: {got['login']}; open: {got['open']}", "no anonymous API or download when the dashboard "
           "asks for a login", request.node.nodeid)


def _serve_expecting_refusal(tmp: Path, env: dict[str, str]) -> tuple[int | None, str, float]:
    port = free_port()
    full = {**os.environ, "HELICAL_PLATFORM_PORT": str(port), "HELICAL_PLATFORM_HOME": str(tmp / "home"),
            "HELICAL_PLATFORM_WORKERS": "1", **env}
    start = time.monotonic()
    proc = subprocess.Popen(["make", "serve"], cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        return None, out, time.monotonic() - start
    with socket.socket() as s:  # nothing listens: it never served
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return proc.returncode, out, time.monotonic() - start


@pytest.mark.parametrize("case", ["tokens file", "admins"])
@pytest.mark.faults
def test_the_server_refuses_to_start_with_users_but_no_dashboard_login(tmp_path, case, request):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-0123456789ab\n")
    env = {"HELICAL_PLATFORM_TOKENS": str(tokens)} if case == "tokens file" else {"HELICAL_PLATFORM_ADMINS": "carol"}
    code, out, took = _serve_expecting_refusal(tmp_path, env)
    assert code not in (0, None), out[-2000:]
    assert "Not starting" in out and "--basic-auth" in out and "--oauth-provider" in out, out[-2000:]
    record("security", "Users configured, dashboard without a login: make serve", f"{case}, no SERVE_ARGS",
           f"exit {code} after {took:.0f} s, nothing listening: {out[out.index('Not starting'):][:140]}…",
           "never an anonymous dashboard beside a locked API", request.node.nodeid)


# --- the served instance: tokens file, admins, basic auth, no API token ----------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("access-hardening")
    (tmp / "tokens").write_text("".join(f"{u} {t}\n" for u, t in TOKENS.items()))
    (tmp / "users.json").write_text(json.dumps(PASSWORDS))
    env = {"HELICAL_PLATFORM_TOKENS": str(tmp / "tokens"), "HELICAL_PLATFORM_ADMINS": "carol",
           "SERVE_ARGS": f"--basic-auth {tmp / 'users.json'} --cookie-secret {'h' * 32}",
           "HELICAL_PLATFORM_API_TOKEN": ""}  # unset, as the issue found it: links were then keyed by ""
    with make_serve(tmp, env) as s:
        yield s


def _as(server, who: str, method: str, path: str, **kw) -> requests.Response:  # noqa: ANN003
    headers = {"Authorization": f"Bearer {TOKENS[who]}", **kw.pop("headers", {})}
    return requests.request(method, server.url + path, headers=headers, timeout=300, **kw)


@pytest.fixture(scope="module")
def finished_run(server, pbmc_small, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("access-cells") / "cells.h5ad"
    pbmc_small.write_h5ad(path)
    with open(path, "rb") as fh:
        up = _as(server, "alice", "POST", "/api/upload", params={"filename": "cells.h5ad"}, data=fh,
                 headers={"Content-Type": "application/octet-stream"})
    assert up.status_code == 201, up.text
    sub = _as(server, "alice", "POST", "/api/submit", json={**SUBMIT, "dataset": up.json()["dataset_id"]})
    assert sub.status_code == 202, sub.text
    run = sub.json()["run_id"]

    def done() -> str | None:
        status = _as(server, "alice", "GET", f"/api/status/{run}").json()["status"]
        return status if status in ("done", "failed", "cancelled") else None

    assert wait_until(done, 300, f"run {run}", interval=1) == "done"
    return run


def _link(server, run: str, fmt: str, exp: int, key: bytes | None = None, signed_run: str | None = None,
          signed_fmt: str | None = None) -> str:
    key = link_secret(server.home) if key is None else key
    sig = hmac.new(key, downloads._message(signed_run or run, signed_fmt or fmt, exp), "sha256").hexdigest()
    return f"{server.url}/api/download/{run}?format={fmt}&exp={exp}&sig={sig}"


def test_downloads_need_a_credential_or_a_valid_unexpired_link(server, finished_run, request):
    run, now = finished_run, int(time.time())
    real = server.url + download_url(_platform(server.home), run, "csv")  # as the dashboard hands it out
    good = requests.get(real, timeout=60)
    assert good.status_code == 200 and good.text.startswith("cell_id,"), good.text[:200]
    assert stat.S_IMODE((server.home / SECRET_FILE).stat().st_mode) == 0o600

    refused = {
        "no credential, no link": f"{server.url}/api/download/{run}?format=csv",
        "empty-key signature (the old link)": f"{server.url}/api/download/{run}?format=csv&sig="
                                              + hmac.new(b"", f"{run}:csv".encode(), "sha256").hexdigest(),
        "empty-key signature with exp": _link(server, run, "csv", now + 600, key=b""),
        "expired an hour ago": _link(server, run, "csv", now - 3600),
        "expired a second ago": _link(server, run, "csv", now - 1),
        "the CSV link used for the .h5ad": _link(server, run, "h5ad", now + 600, signed_fmt="csv"),
        "another run's link": _link(server, run, "csv", now + 600, signed_run="00000000-0000-4000-8000-000000000000"),
        "a real link with exp moved a day later": re.sub(r"exp=(\d+)", lambda m: f"exp={int(m[1]) + 86400}", real),
    }
    answers = {case: requests.get(url, timeout=60) for case, url in refused.items()}
    for case, r in answers.items():
        assert r.status_code == 401, (case, r.status_code, r.text[:200])
        assert "cell_id" not in r.text
    assert "expired" in answers["expired a second ago"].json()["error"]["message"]
    assert answers["another run's link"].json()["error"]["code"] == "invalid_link"

    by_token = _as(server, "bob", "GET", f"/api/download/{run}", params={"format": "csv"})
    session = requests.Session()
    session.post(server.url + "/login", data={"username": "bob", "password": PASSWORDS["bob"]}, timeout=60)
    by_login = session.get(f"{server.url}/api/download/{run}", params={"format": "csv"}, timeout=60)
    stale_with_login = session.get(_link(server, run, "csv", now - 1), timeout=60)  # an old page, signed in
    for r in (by_token, by_login, stale_with_login):
        assert r.status_code == 200 and r.text.startswith("cell_id,"), r.text[:200]
    record("security", "Downloads with users configured and no HELICAL_PLATFORM_API_TOKEN (tokens file, admins, "
           "basic auth)", "; ".join(refused), "401 for each (expired ones say so); the dashboard's link, a user's "
           "token, the login cookie (even with an expired link) 200", "no download without a credential or a "
           "valid, unexpired link made by the server", request.node.nodeid)


def _raw(server, host: str, method: str = "GET", path: str = "/api/health", body: bytes = b"") -> tuple[int, str]:
    """One request with exactly this Host header (requests would take it from the URL)."""
    port = urlsplit(server.url).port
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")
    with socket.create_connection(("localhost", port), timeout=120) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")


def test_unknown_hosts_are_refused_on_every_request(server, finished_run, request):
    port = urlsplit(server.url).port
    link = download_url(_platform(server.home), finished_run, "csv")
    paths = [("GET", "/"), ("GET", "/login"), ("GET", "/api/health"), ("GET", "/api/openapi.json"),
             ("GET", link), ("POST", "/api/upload?filename=x.h5ad"), ("GET", "/panel_serve/ws")]
    hosts = ["evil.example", f"evil.example:{port}", f"localhost:{port + 1}", f"127.0.0.1:{port + 1}"]
    results = []
    for host in hosts:
        for method, path in paths:
            status, body = _raw(server, host, method, path, b"x" * 1000 if method == "POST" else b"")
            assert status == 403, (host, path, status, body[:200])
            assert "HELICAL_PLATFORM_ALLOW_ORIGIN" in body and "cell_id" not in body, (host, path, body[:300])
            if path.startswith("/api/"):
                assert json.loads(body)["error"]["code"] == "unknown_host"
        results.append(f"{host}: 403 on all {len(paths)}")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}"):
        assert _raw(server, host)[0] == 200, host
        assert _raw(server, host, "GET", link)[0] == 200, host
    record("security", "Requests for another host (DNS rebinding)",
           f"{', '.join(hosts)} × {', '.join(p for _, p in paths[:4])}, a signed download link, an upload, the "
           "websocket path", "; ".join(results) + "; localhost and 127.0.0.1 on the served port: 200",
           "a rebinding page reads and changes nothing", request.node.nodeid)


def test_with_users_basic_auth_must_name_a_file_of_users_not_one_password(tmp_path, request):
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{u} {t}\n" for u, t in TOKENS.items()))
    users = tmp_path / "users.json"
    users.write_text(json.dumps(PASSWORDS))
    multi = Settings.from_env({"HELICAL_PLATFORM_TOKENS": str(tokens)})
    why = basic_auth_refusal(multi, "one-shared-password")  # Panel then signs its holder in under any name
    assert why is not None and "any name" in why and "users.json" in why
    assert basic_auth_refusal(multi, str(users)) is None
    assert basic_auth_refusal(Settings.from_env({"HELICAL_PLATFORM_ADMINS": "carol"}), "pw") is not None
    assert basic_auth_refusal(Settings.from_env({}), "one-shared-password") is None  # one user: nothing to tell
    record("security", "Basic auth with one password while users are configured", "--basic-auth <password> "
           "with a tokens file or admins; with a JSON file of users; on a single-user server",
           "refused at start (anyone holding the password could sign in as an admin); a file of users starts",
           "logins tell users apart", request.node.nodeid)


def test_a_body_read_whole_is_bounded_before_anyone_is_asked_who_they_are(server, request):
    """Tornado buffers a non-streamed body (100 MB by default, no time limit) before the handler checks who calls:
    anyone could hold the server's memory with a few. Every such body is now bounded (2 MB; the annotator import
    100 MB), for callers with and without a token."""
    big = b"[" + b"0," * (3 * 2**20) + b"0]"  # 6 MB of JSON
    for headers in ({}, {"Authorization": f"Bearer {TOKENS['alice']}"}):
        try:
            r = requests.post(server.url + "/api/submit", data=big, timeout=60,
                              headers={"Content-Type": "application/json", **headers})
            status = r.status_code
        except requests.ConnectionError:  # Tornado closes the connection on a declared length over the bound
            status = "connection closed"
        assert status in (400, 413, "connection closed"), status
    ok = _as(server, "alice", "POST", "/api/submit", json={**SUBMIT, "dataset": "0" * 8})
    assert ok.status_code in (400, 404), ok.text  # a normal body still reaches the handler and gets its answer
    assert requests.get(server.url + "/api/health", timeout=30).status_code in (200, 503)
    record("security", "A 6 MB JSON body, with and without a token", "POST /api/submit",
           f"refused before it is buffered ({status})", "a body read whole is at most 2 MB (annotator import: "
           "100 MB), 60 s", request.node.nodeid)


def test_limit_body_bounds_whole_bodies_and_leaves_streamed_ones_alone():
    from app.rest_annotators import AnnotatorImportHandler
    from app.rest_upload import UploadHandler
    from app.server_access import BUFFERED_BODY_BYTES, limit_body

    class Connection:
        def __init__(self) -> None:
            self.size = self.timeout = None

        def set_max_body_size(self, n: int) -> None:
            self.size = n

        def set_body_timeout(self, s: float) -> None:
            self.timeout = s

    seen = {}
    for cls in (object, AnnotatorImportHandler, UploadHandler):
        conn = Connection()
        limit_body(type("Request", (), {"connection": conn})(), cls)
        seen[cls.__name__] = (conn.size, conn.timeout)
    assert seen["object"] == (BUFFERED_BODY_BYTES, 60)
    assert seen["AnnotatorImportHandler"][0] > 100 * 2**20 - 1 and seen["AnnotatorImportHandler"][1] == 600
    assert seen["UploadHandler"] == (None, None)  # streamed: its own size, quota and idle limits
