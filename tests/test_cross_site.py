"""Other web sites cannot make a user's browser change data here (cross-site requests), on a real server.

One served instance for the module, set up as a lab server: an API token, Panel's basic auth (the login cookie),
one extra allowed origin, and ``--use-xheaders`` as behind an HTTPS proxy. Each state-changing endpoint is tried
with every way a request can say (or not say) where it comes from; a browser then tries what a foreign page can.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from app.cross_site import (
    Origin,
    cookie_attributes,
    cross_site_refusal,
    is_json,
    parse_allowed_origins,
    parse_origin,
)
from app.settings import Settings, SettingsError
from tests.conftest import REPO, free_port
from tests.reliability import record
from tests.serving import browser_page, make_serve, wait_until

TOKEN = "cross-site-token"
USER, PASSWORD = "ada", "correct horse battery"
FOREIGN = "http://evil.example"
ALLOWED = "https://front.example.org:8443"
SUBMIT = {"application": "cell-type-annotation", "model": "baseline", "label_column": "celltype"}


# --- the rules themselves, without a server -------------------------------------------------------------------

def test_origins_compare_scheme_host_and_port_as_browsers_do():
    assert parse_origin("https://Lab.Example.org") == Origin("https", "lab.example.org", 443)
    assert parse_origin("http://localhost:5006") == Origin("http", "localhost", 5006)
    assert parse_origin("http://localhost:5006") != parse_origin("https://localhost:5006")
    assert parse_origin("http://localhost:5006") != parse_origin("http://localhost:5007")
    assert parse_origin("http://[::1]:5006/page?x=1") == Origin("http", "::1", 5006)  # a Referer's URL
    for not_an_origin in ("null", "file:///home/ada/x.html", "data:text/html,x", "", "http://x:99999"):
        assert parse_origin(not_an_origin) is None, not_an_origin
    assert str(Origin("https", "lab.example.org", 443)) == "https://lab.example.org"


def test_the_rule_for_each_header_and_method():
    own = ("http", "localhost:5006")
    allowed = parse_allowed_origins(ALLOWED)
    refused = partial(cross_site_refusal, protocol=own[0], host=own[1], allowed=allowed)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        refusal = refused(method, {"Origin": FOREIGN})
        assert refusal is not None and "HELICAL_PLATFORM_ALLOWED_ORIGINS" in refusal.message
        assert "Bearer" in refusal.message and refusal.details["origin"] == FOREIGN
    assert refused("GET", {"Origin": FOREIGN}) is None  # reading changes nothing: signed download links
    assert refused("POST", {}) is None  # curl, scripts, the Python client
    assert refused("POST", {"Origin": "http://localhost:5006"}) is None
    assert refused("POST", {"Origin": ALLOWED}) is None
    assert refused("POST", {"Origin": "null"}) is not None  # sandboxed frames, file: pages
    assert refused("POST", {"Referer": "http://localhost:5006/api/docs"}) is None
    assert refused("POST", {"Referer": FOREIGN + "/page.html"}).details["header"] == "Referer"
    # Origin wins over Referer: a foreign page cannot borrow our Referer
    assert refused("POST", {"Origin": FOREIGN, "Referer": "http://localhost:5006/"}) is not None
    # behind an HTTPS proxy (--use-xheaders), the scheme is the proxy's
    assert cross_site_refusal("POST", {"Origin": "https://lab.example.org"}, "https", "lab.example.org") is None
    assert cross_site_refusal("POST", {"Origin": "http://lab.example.org"}, "https", "lab.example.org") is not None


def test_the_allowed_origins_setting_is_explicit_and_checked():
    s = Settings.from_env({"HELICAL_PLATFORM_ALLOWED_ORIGINS": f"{ALLOWED}, http://localhost:3000/"})
    assert s.allowed_origins == (Origin("https", "front.example.org", 8443), Origin("http", "localhost", 3000))
    assert Settings.from_env({}).allowed_origins == ()
    for bad in ("*", "front.example.org", "https://front.example.org/app", "ftp://front.example.org"):
        with pytest.raises(SettingsError, match="HELICAL_PLATFORM_ALLOWED_ORIGINS"):
            Settings.from_env({"HELICAL_PLATFORM_ALLOWED_ORIGINS": bad})


def test_json_content_type_and_cookie_attributes():
    assert is_json("application/json") and is_json("Application/JSON; charset=utf-8")
    for other in (None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                  "application/jsonp"):
        assert not is_json(other), other
    assert cookie_attributes("user", https=False, given={"httponly": True}) == {"samesite": "Lax"}
    assert cookie_attributes("user", https=True, given={}) == {"samesite": "Lax", "secure": True, "httponly": True}
    assert cookie_attributes("_xsrf", https=False, given={}) == {"samesite": "Lax"}  # Bokeh's client reads it
    assert cookie_attributes("user", https=True, given={"samesite": "Strict", "secure": True,
                                                       "httponly": True}) == {}


def test_websocket_origins_are_explicit_wherever_the_product_is_served():
    makefile = (REPO / "Makefile").read_text()
    assert "--allow-websocket-origin" in makefile and "HELICAL_PLATFORM_ALLOW_ORIGIN ?= localhost:" in makefile
    dockerfile = (REPO / "Dockerfile").read_text()
    assert '--allow-websocket-origin "$HELICAL_PLATFORM_ALLOW_ORIGIN"' in dockerfile
    assert "HELICAL_PLATFORM_ALLOW_ORIGIN=localhost:5006" in dockerfile
    for path in (REPO / "Makefile", REPO / "Dockerfile", REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
                 *sorted((REPO / "examples").rglob("*.py"))):
        text = path.read_text()
        assert "allow-websocket-origin *" not in text and "allow-websocket-origin '*'" not in text, path
        assert "BOKEH_ALLOW_WS_ORIGIN=*" not in text, path


# --- the served instance ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cross-site")
    users = tmp / "users.json"
    users.write_text(json.dumps({USER: PASSWORD}))
    args = f"--basic-auth {users} --cookie-secret {'c' * 32} --use-xheaders"
    with make_serve(tmp, {"HELICAL_PLATFORM_API_TOKEN": TOKEN, "HELICAL_PLATFORM_ALLOWED_ORIGINS": ALLOWED,
                          "SERVE_ARGS": args}) as s:
        yield s


class Cells:
    """Valid .h5ad files, each with different bytes: uploads are stored by content, so a refused upload could
    otherwise hide behind an earlier one of the same file."""

    def __init__(self, adata, folder: Path) -> None:
        self.adata, self.folder, self.count = adata, folder, 0

    def new(self) -> Path:
        self.count += 1
        a = self.adata.copy()
        a.uns["nonce"] = self.count
        path = self.folder / f"cells-{self.count}.h5ad"
        a.write_h5ad(path)
        return path


@pytest.fixture(scope="module")
def cells(tmp_path_factory, pbmc_small) -> Cells:
    return Cells(pbmc_small, tmp_path_factory.mktemp("cross-site-cells"))


def bearer(server, method: str, path: str, **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKEN}", **kw.pop("headers", {})}
    return requests.request(method, server.url + path, headers=headers, timeout=120, **kw)


def logged_in(server) -> requests.Session:
    session = requests.Session()
    r = session.post(server.url + "/login", data={"username": USER, "password": PASSWORD}, timeout=60,
                     allow_redirects=False)
    assert r.status_code in (302, 303) and session.cookies.get("user"), r.status_code
    return session


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored_state(server) -> tuple[set[str], set[str]]:
    """(sha256 of every stored dataset, every run id), as the token sees them."""
    datasets = bearer(server, "GET", "/api/datasets").json()
    runs = bearer(server, "GET", "/api/runs").json()
    return {d["sha256"] for d in datasets}, {r["run_id"] for r in runs}


def partials(server) -> list[Path]:
    return list((server.home / "tmp").glob(".partial-*"))


@pytest.fixture(scope="module")
def dataset_id(server, cells) -> str:
    path = cells.new()
    with open(path, "rb") as fh:
        r = bearer(server, "POST", "/api/upload", params={"filename": "query.h5ad"}, data=fh,
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r.json()["dataset_id"]


@pytest.fixture(scope="module")
def victim_run(server, dataset_id) -> str:
    """A run that refused cancels must leave alone."""
    r = bearer(server, "POST", "/api/submit", json={**SUBMIT, "dataset": dataset_id})
    assert r.status_code == 202, r.text
    return r.json()["run_id"]


def attempt(server, client, headers: dict[str, str], cells: Cells, dataset_id: str,
            victim_run: str) -> tuple[dict[str, requests.Response], list[str]]:
    """Upload (raw, multipart), submit and cancel through ``client`` with ``headers``; the uploads' sha256."""
    out: dict[str, requests.Response] = {}
    raw, multi = cells.new(), cells.new()
    with open(raw, "rb") as fh:
        out["upload raw"] = client.post(server.url + "/api/upload", params={"filename": raw.name}, data=fh,
                                        headers={**headers, "Content-Type": "application/octet-stream"}, timeout=120)
    with open(multi, "rb") as fh:
        out["upload multipart"] = client.post(server.url + "/api/upload", files={"file": (multi.name, fh)},
                                              headers=headers, timeout=120)
    out["submit"] = client.post(server.url + "/api/submit", json={**SUBMIT, "dataset": dataset_id},
                                headers=headers, timeout=120)
    run = out["submit"].json()["run_id"] if out["submit"].status_code == 202 else victim_run
    out["cancel"] = client.post(server.url + f"/api/runs/{run}/cancel", headers=headers, timeout=120)
    return out, [sha256(raw), sha256(multi)]


def own(server) -> str:
    return server.url  # http://localhost:<port>, the Host header requests send


REFUSED = {
    "login cookie, foreign Origin": ("session", lambda s: {"Origin": FOREIGN}),
    "no credentials, foreign Origin": ("anonymous", lambda s: {"Origin": FOREIGN}),
    "login cookie, foreign Referer, no Origin": ("session", lambda s: {"Referer": FOREIGN + "/page.html"}),
    "login cookie, Origin: null": ("session", lambda s: {"Origin": "null"}),
    "wrong bearer token, foreign Origin": ("anonymous", lambda s: {"Origin": FOREIGN,
                                                                   "Authorization": "Bearer wrong"}),
    "login cookie, http page while the proxy says https": (
        "session", lambda s: {"Origin": own(s), "X-Forwarded-Proto": "https"}),
    "login cookie, same host on another port": (
        "session", lambda s: {"Origin": f"http://localhost:{urlsplit(s.url).port + 1}"}),
}
ACCEPTED = {
    "login cookie, own Origin": ("session", lambda s: {"Origin": own(s)}),
    "login cookie, neither Origin nor Referer": ("session", lambda s: {}),
    "login cookie, own Referer, no Origin": ("session", lambda s: {"Referer": own(s) + "/api/docs"}),
    "login cookie, Origin in HELICAL_PLATFORM_ALLOWED_ORIGINS": ("session", lambda s: {"Origin": ALLOWED}),
    "bearer token, foreign Origin": ("anonymous", lambda s: {"Origin": FOREIGN,
                                                             "Authorization": f"Bearer {TOKEN}"}),
    "login cookie, https page behind the proxy (X-Forwarded-Proto)": (
        "session", lambda s: {"Origin": own(s).replace("http://", "https://"), "X-Forwarded-Proto": "https"}),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_state_changing_calls_from_another_origin_are_refused(server, cells, dataset_id, victim_run, case, request):
    who, headers = REFUSED[case]
    client = logged_in(server) if who == "session" else requests
    before_sha, before_runs = stored_state(server)
    responses, shas = attempt(server, client, headers(server), cells, dataset_id, victim_run)
    for name, r in responses.items():
        assert r.status_code == 403, (name, r.status_code, r.text[:300])
        error = r.json()["error"]
        assert error["code"] == "cross_origin" and "HELICAL_PLATFORM_ALLOWED_ORIGINS" in error["message"], error
    after_sha, after_runs = stored_state(server)
    assert not set(shas) & after_sha and after_sha == before_sha, "a refused upload was stored"
    assert after_runs == before_runs, "a refused submit created a run"
    assert bearer(server, "GET", f"/api/status/{victim_run}").json()["status"] != "cancelled"
    assert not partials(server), partials(server)
    record("security", "State-changing API calls from another site's page (CSRF)",
           f"{case}: upload raw + multipart, submit, cancel",
           "403 cross_origin on all four; no dataset stored, no run created or cancelled, no partial file",
           "nothing changed by a foreign page", request.node.nodeid)


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_the_servers_own_pages_scripts_and_listed_origins_still_work(server, cells, dataset_id, victim_run,
                                                                      case, request):
    who, headers = ACCEPTED[case]
    client = logged_in(server) if who == "session" else requests
    responses, shas = attempt(server, client, headers(server), cells, dataset_id, victim_run)
    codes = {name: r.status_code for name, r in responses.items()}
    assert codes == {"upload raw": 201, "upload multipart": 201, "submit": 202, "cancel": 200}, (
        codes, {n: r.text[:200] for n, r in responses.items()})
    assert set(shas) <= stored_state(server)[0]
    record("security", "State-changing API calls from this server's pages, scripts and listed origins",
           f"{case}: upload raw + multipart, submit, cancel", "201, 201, 202, 200 as without the check",
           "the dashboard's and scripts' own calls unaffected", request.node.nodeid)


def test_a_refused_upload_opens_no_file(server, cells, victim_run, request):
    """With the data home's tmp folder swapped for a plain file, any attempt to open a partial file fails (500):
    a refused upload still answers 403, so it never got that far. The same upload from the server's own page does
    reach the disk and fails, which shows the trap works."""
    def settled() -> bool:  # runs stage their results under tmp too: none may be in flight
        return all(r["status"] in ("done", "failed", "cancelled") for r in bearer(server, "GET", "/api/runs").json())

    wait_until(settled, 300, "every run to finish", interval=1)
    tmp, aside = server.home / "tmp", server.home / "tmp-aside"
    path = cells.new()
    tmp.rename(aside)
    tmp.write_text("a file where the upload folder was")
    try:
        refused = []
        for headers in ({"Origin": FOREIGN}, {"Referer": FOREIGN + "/page.html"}):
            with open(path, "rb") as fh:
                refused.append(requests.post(server.url + "/api/upload", params={"filename": path.name}, data=fh,
                                             headers={**headers, "Content-Type": "application/octet-stream"},
                                             timeout=120))
        trap = logged_in(server).post(server.url + "/api/upload", params={"filename": "x.h5ad"}, data=b"x" * 10,
                                      headers={"Origin": own(server), "Content-Type": "application/octet-stream"},
                                      timeout=120)
    finally:
        tmp.unlink()
        aside.rename(tmp)
    for r in refused:
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin", r.text[:300]
    assert trap.status_code == 500, trap.text[:300]
    assert sha256(path) not in stored_state(server)[0] and not partials(server)
    record("security", "A cross-origin upload is refused before anything is written",
           "raw upload of a 3 MB .h5ad from a foreign Origin, and from a foreign Referer, with the data home's tmp "
           "folder replaced by a plain file (any partial file would fail to open)",
           "403 cross_origin for both (the body read and dropped, then answered); the server's own upload at the "
           "same moment: 500 (it does open a file); nothing stored, no partial left",
           "nothing of a refused upload written", request.node.nodeid)


def websocket_handshake(server, origin: str, cookies: str) -> str:
    """The status line the dashboard's websocket answers a handshake from a page at ``origin`` with."""
    port = urlsplit(server.url).port
    request = (f"GET /panel_serve/ws HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: Upgrade\r\n"
               "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               f"Origin: {origin}\r\nCookie: {cookies}\r\n\r\n")
    with socket.create_connection(("localhost", port), timeout=60) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


def test_the_dashboards_websocket_refuses_other_origins(server, request):
    session = logged_in(server)
    cookies = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    foreign = websocket_handshake(server, FOREIGN, cookies)
    same_host_other_port = websocket_handshake(server, f"http://localhost:{urlsplit(server.url).port + 1}", cookies)
    ours = websocket_handshake(server, own(server), cookies)
    assert " 403 " in foreign + " " and " 403 " in same_host_other_port + " ", (foreign, same_host_other_port)
    assert " 101 " in ours + " ", ours
    record("security", "The dashboard's websocket from other origins",
           "websocket handshakes to /panel_serve/ws with the login cookie, from a foreign origin, from localhost on "
           "another port, and from the server's own origin (make serve passes --allow-websocket-origin "
           "localhost:<port>)", f"{foreign}; {same_host_other_port}; own origin: {ours}",
           "only the listed host's pages open the dashboard's websocket", request.node.nodeid)


def test_json_endpoints_take_only_application_json(server, dataset_id, request):
    body = json.dumps({**SUBMIT, "dataset": dataset_id})
    before = stored_state(server)[1]
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": ctype} if ctype else {}
        r = bearer(server, "POST", "/api/submit", data=body.encode(), headers=headers)
        assert r.status_code == 415, (ctype, r.text)
        error = r.json()["error"]
        assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
    assert stored_state(server)[1] == before
    r = bearer(server, "POST", "/api/submit", data=body.encode(),
               headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 202, r.text
    cancel = bearer(server, "POST", f"/api/runs/{r.json()['run_id']}/cancel")  # no body, no content type
    assert cancel.status_code == 200, cancel.text
    record("security", "JSON endpoints take only application/json",
           "POST /api/submit with a valid JSON body as text/plain, form-urlencoded, no type; then as "
           "application/json; charset=utf-8", "415 unsupported_media_type (no run created); 202 with the JSON "
           "type; cancel without a body still 200", "no form or simple fetch reaches a JSON endpoint",
           request.node.nodeid)


def set_cookies(response: requests.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.raw.headers.getlist("Set-Cookie")}


def test_the_login_cookie_is_httponly_samesite_and_secure_over_https(server, request):
    form = {"username": USER, "password": PASSWORD}
    plain = requests.post(server.url + "/login", data=form, timeout=60, allow_redirects=False)
    cookies = set_cookies(plain)
    assert {"user", "id_token"} <= set(cookies), cookies
    for name in ("user", "id_token"):
        attrs = [a.strip().lower() for a in cookies[name].split(";")]
        assert "httponly" in attrs and "samesite=lax" in attrs and "secure" not in attrs, cookies[name]
    proxied = requests.post(server.url + "/login", data=form, headers={"X-Forwarded-Proto": "https"}, timeout=60,
                            allow_redirects=False)
    for name in ("user", "id_token"):
        attrs = [a.strip().lower() for a in set_cookies(proxied)[name].split(";")]
        assert {"httponly", "samesite=lax", "secure"} <= set(attrs), attrs
    page = requests.get(server.url + "/login?next=/", timeout=60)
    assert "samesite=lax" in set_cookies(page)["next_url"].lower()
    record("security", "The login cookie's attributes (Panel basic auth)",
           "POST /login over http, and as forwarded by an HTTPS proxy (X-Forwarded-Proto, --use-xheaders)",
           f"Set-Cookie user: {_attributes(cookies['user'])}; behind HTTPS: "
           f"{_attributes(set_cookies(proxied)['user'])}", "login cookie HttpOnly, SameSite=Lax, Secure over HTTPS",
           request.node.nodeid)


def _attributes(header: str) -> str:
    return "; ".join(a.strip() for a in header.split(";")[1:] if not a.strip().lower().startswith(("expires",
                                                                                                   "path")))


def test_signed_download_links_work_whatever_page_they_are_followed_from(server, victim_run, request):
    def finished() -> str | None:
        status = bearer(server, "GET", f"/api/status/{victim_run}").json()["status"]
        return status if status in ("done", "failed", "cancelled") else None

    status = wait_until(finished, 300, f"run {victim_run}", interval=1)
    assert status == "done", bearer(server, "GET", f"/api/status/{victim_run}").json()
    from types import SimpleNamespace

    from app.downloads import download_url

    settings = SimpleNamespace(home=server.home, download_link_s=3600)  # the server's secret, in its data home
    link = download_url(SimpleNamespace(settings=settings), victim_run, "csv")
    r = requests.get(server.url + link, headers={"Referer": FOREIGN + "/mail.html", "Origin": FOREIGN}, timeout=60)
    assert r.status_code == 200 and r.text.startswith("cell_id,"), r.text[:200]
    record("security", "Signed download links from any page (GET is never refused)",
           "the dashboard's signed CSV link followed with a foreign Origin and Referer", "200, the CSV",
           "downloads keep working", request.node.nodeid)


@contextmanager
def foreign_site(files: dict[str, bytes]) -> Iterator[int]:
    """Another web site: a plain HTTP server on 127.0.0.1 and its own port, serving ``files``."""
    folder_files = dict(files)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = folder_files.get(self.path.split("?")[0].lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if self.path.endswith(".html") else
                             "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


ATTACK_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Cute cats</title></head><body>
<form id="planted" method="post" enctype="multipart/form-data" action="{platform}/api/upload">
<input type="file" name="file" id="file"></form>
<script>
async function attack() {{
  const submit = {submit};
  // a fetch any page may send without a CORS preflight: the JSON body sent as text/plain, with the user's cookies
  await fetch("{platform}/api/submit", {{method: "POST", mode: "no-cors", credentials: "include",
      headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify(submit)}}).catch(() => null);
  // with the JSON type the browser asks first (CORS preflight), and this server never says yes
  await fetch("{platform}/api/submit", {{method: "POST", credentials: "include",
      headers: {{"Content-Type": "application/json"}}, body: JSON.stringify(submit)}}).catch(() => null);
  // a multipart upload by fetch, then the same by an auto-submitted form carrying a real .h5ad
  const bytes = async (name) => await (await fetch(name)).arrayBuffer();
  const data = new FormData();
  data.append("file", new Blob([await bytes("/by-fetch.h5ad")]), "by-fetch.h5ad");
  await fetch("{platform}/api/upload", {{method: "POST", mode: "no-cors", credentials: "include", body: data}})
      .catch(() => null);
  const files = new DataTransfer();
  files.items.add(new File([await bytes("/by-form.h5ad")], "by-form.h5ad"));
  document.getElementById("file").files = files.files;
  document.getElementById("planted").submit();
}}
attack();
</script></body></html>"""

OWN_PAGE_CALLS = """async ([b64, name, submit]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const data = new FormData();
  data.append("file", new Blob([bytes]), name);
  const up = await fetch("/api/upload", {method: "POST", body: data});
  const sub = await fetch("/api/submit", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(submit)});
  const run = (await sub.clone().json()).run_id;
  const cancel = await fetch(`/api/runs/${run}/cancel`, {method: "POST"});
  return {upload: up.status, upload_body: await up.json(), submit: sub.status, cancel: cancel.status};
}"""


def test_a_page_on_another_site_cannot_upload_or_submit_through_the_browser(server, cells, dataset_id, request):
    import base64

    submit = {**SUBMIT, "dataset": dataset_id}
    by_fetch, by_form = cells.new(), cells.new()
    page_html = ATTACK_PAGE.format(platform=server.url, submit=json.dumps(submit)).encode()
    files = {"cats.html": page_html, "by-fetch.h5ad": by_fetch.read_bytes(), "by-form.h5ad": by_form.read_bytes()}
    planted = {sha256(by_fetch), sha256(by_form)}
    results = []
    with foreign_site(files) as port, browser_page() as page:
        page.goto(server.url + "/login")
        page.fill("input[name=username]", USER)
        page.fill("input[name=password]", PASSWORD)
        with page.expect_response(lambda r: r.url.startswith(server.url + "/login") and
                                  r.request.method == "POST"):
            page.click("[type=submit]")
        assert any(c["name"] == "user" for c in page.context.cookies(server.url)), "not logged in"
        before = stored_state(server)

        # 127.0.0.1 is another site (SameSite=Lax keeps the cookie home); localhost on another port is the same
        # site, so the browser sends the login cookie along and only the origin check stands in the way
        for host, cookie_sent in (("127.0.0.1", False), ("localhost", True)):
            def api_call(path: str, kind: str):  # noqa: ANN202
                return lambda r: (r.url.startswith(server.url + path) and r.request.method == "POST"
                                  and r.request.resource_type == kind)

            with page.expect_response(api_call("/api/submit", "fetch"), timeout=60_000) as submitted, \
                 page.expect_response(api_call("/api/upload", "fetch"), timeout=60_000) as fetched, \
                 page.expect_response(api_call("/api/upload", "document"), timeout=60_000) as posted:
                page.goto(f"http://{host}:{port}/cats.html")
            for what, info in (("text/plain submit", submitted), ("fetch upload", fetched), ("form upload", posted)):
                response = info.value
                assert response.status == 403, (host, what, response.status)
                results.append(f"{host} {what}: {response.status}")
            # the sent headers of the navigation are known in full (a fetch's are gone once the page navigates)
            carried = "user=" in (posted.value.request.all_headers().get("cookie") or "")
            assert carried == cookie_sent, (host, posted.value.request.all_headers())
            results[-1] += " (login cookie sent)" if carried else " (login cookie withheld: SameSite=Lax)"
            page.wait_for_url(server.url + "/api/upload", wait_until="load")  # the form's navigation: the refusal
            assert json.loads(page.locator("body").inner_text())["error"]["code"] == "cross_origin"

        after = stored_state(server)
        assert not planted & after[0] and after == before, "a foreign page changed data"
        assert not partials(server)

        own_file = cells.new()
        page.goto(server.url + "/api/docs")
        own = page.evaluate(OWN_PAGE_CALLS, [base64.b64encode(own_file.read_bytes()).decode(), own_file.name,
                                             submit])
    assert (own["upload"], own["submit"], own["cancel"]) == (201, 202, 200), own
    assert own["upload_body"]["sha256"] == sha256(own_file)
    assert stored_state(server)[0] == {*after[0], sha256(own_file)}
    record("security", "A page on another site, in a logged-in user's browser (headless Chromium)",
           "page on 127.0.0.1 and on localhost (other ports): fetch text/plain JSON to /api/submit, fetch "
           "application/json (preflighted), fetch multipart upload, auto-submitted multipart form with a real .h5ad",
           "; ".join(results) + "; the preflighted JSON fetch changed nothing either; datasets and runs "
           f"unchanged. The server's own page (/api/docs): upload {own['upload']}, submit {own['submit']}, cancel "
           f"{own['cancel']}",
           "a foreign page can change nothing; the server's own pages can", request.node.nodeid)
