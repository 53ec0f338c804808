"""Lab-server access: Panel's basic authentication guards the dashboard, and the API accepts either the bearer
token or the dashboard's login."""

from __future__ import annotations

import json

import requests

from tests.reliability import record
from tests.serving import make_serve

TOKEN = "access-test-token"


def test_basic_auth_guards_the_dashboard_and_its_login_opens_the_api(tmp_path, request):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"ada": "correct horse battery"}))
    env = {"HELICAL_PLATFORM_API_TOKEN": TOKEN}
    args = f"--basic-auth {users} --cookie-secret {'s' * 32}"
    with make_serve(tmp_path, {**env, "SERVE_ARGS": args}) as server:
        page = requests.get(server.url + "/", timeout=60, allow_redirects=False)
        assert page.status_code in (302, 303) and "login" in page.headers["Location"]
        for listing in ("/api/models", "/api/datasets", "/api/runs"):  # no anonymous listing
            assert requests.get(server.url + listing, timeout=30).status_code == 401
        assert requests.get(server.url + "/api/models", timeout=30,
                            headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200

        browser = requests.Session()
        bad = browser.post(server.url + "/login", data={"username": "ada", "password": "wrong"}, timeout=30)
        assert browser.get(server.url + "/api/models", timeout=30).status_code == 401, bad.status_code
        browser.post(server.url + "/login", data={"username": "ada", "password": "correct horse battery"},
                     timeout=30)
        assert browser.get(server.url + "/", timeout=60).status_code == 200
        assert browser.get(server.url + "/api/models", timeout=30).status_code == 200
    record("security", "Lab-server access: Panel basic auth (password file)",
           "the dashboard and the API without login, with a wrong password, with the token, after login",
           "dashboard redirects to /login; API (models, datasets, runs listings) 401 without token or login and "
           "after a wrong password; 200 with the bearer token or the login cookie",
           "nothing served to an anonymous user", request.node.nodeid)
