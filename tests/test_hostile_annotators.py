"""Hostile annotator files and hostile JSON bodies (issue 34, items 4 and 11): zip bombs in every member, sizes
and headers that lie, duplicate, unexpected and path-like members, every malformed manifest field, and JSON
nested too deeply. Each is refused with a sentence saying what is wrong (HTTP 400, the CLI's exit 1), in bounded
memory, and nothing is stored."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests

from app.annotators import AnnotatorFileError
from app.builtin_annotators import PBMC3K_NAME
from app.settings import Settings
from tests.reliability import record

BOMB = 96 << 20  # what each bomb unpacks to: far above every limit, small enough for a shared test machine
MEMORY_LIMIT = 24 << 20  # a refused bomb may allocate at most this (the good file's whole import: ~3 MB)


# ---- building hostile files -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, bytes]:
    """The parts of a real exported annotator (the built-in PBMC one, exported by this platform)."""
    from app.platform import Platform

    home = tmp_path_factory.mktemp("hostile-export") / "home"
    p = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(home)}), start_cluster=False)
    try:
        with zipfile.ZipFile(p.annotators.export(PBMC3K_NAME)) as z:
            return {n: z.read(n) for n in z.namelist()}
    finally:
        p.close()


def zip_of(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip holding ``members`` in this order, duplicates and odd names included."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression=compression) as z:
        warnings.simplefilter("ignore")  # zipfile warns about a duplicate name, and writes it
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def arrays_of(head: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(head), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def npz_of(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def manifest_for(good: dict[str, bytes], head: bytes, change: Callable[[dict], None] | None = None) -> bytes:
    """The good manifest, its checksum and size fitted to ``head`` (so that only the change under test differs)."""
    m = json.loads(good["manifest.json"])
    m["parts"]["head.npz"] = {"sha256": hashlib.sha256(head).hexdigest(), "bytes": len(head)}
    if change is not None:
        change(m)
    return json.dumps(m).encode()


def annotator_with(good: dict[str, bytes], head: bytes, change: Callable[[dict], None] | None = None) -> bytes:
    return zip_of([("manifest.json", manifest_for(good, head, change)), ("head.npz", head)])


def lie_about_size(data: bytes, name: str, size: int) -> bytes:
    """``data`` (a zip) with member ``name``'s uncompressed size set to ``size`` in its local header and in the
    central directory (the one zipfile reads), the bytes themselves unchanged."""
    out = bytearray(data)
    raw = name.encode()
    at = out.find(b"PK\x01\x02")
    while at != -1:
        name_len = struct.unpack_from("<H", out, at + 28)[0]
        if bytes(out[at + 46:at + 46 + name_len]) == raw:
            struct.pack_into("<I", out, at + 24, size)
            local = struct.unpack_from("<I", out, at + 42)[0]
            struct.pack_into("<I", out, local + 22, size)
            return bytes(out)
        at = out.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"no member {name}")


def npy_lying(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    """An .npy whose header declares ``shape`` of ``dtype`` but whose data is ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def npz_members(head: bytes, extra: list[tuple[str, bytes]], drop: str | None = None) -> bytes:
    """head.npz's members (less ``drop``) plus ``extra`` raw members."""
    with zipfile.ZipFile(io.BytesIO(head)) as z:
        members = [(n, z.read(n)) for n in z.namelist() if n != drop]
    return zip_of(members + extra, zipfile.ZIP_STORED)


def import_measured(platform, data: bytes) -> tuple[BaseException | None, int]:  # noqa: ANN001
    """Import ``data`` through the platform's real import path; the exception and the peak Python/numpy
    allocation (tracemalloc: numpy's buffers and zlib's output are traced)."""
    err: BaseException | None = None
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        platform.annotators.import_file(data, name="hostile")
    except Exception as exc:  # noqa: BLE001 - the test asserts on what it was
        err = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return err, peak


def assert_refused(platform, data: bytes, words: str) -> tuple[str, int]:  # noqa: ANN001
    """Refused as a bad annotator file (HTTP 400 through REST), saying ``words``, within ``MEMORY_LIMIT``, and
    nothing stored."""
    before = {a.name for a in platform.annotators.list()}
    err, peak = import_measured(platform, data)
    assert isinstance(err, AnnotatorFileError), f"{type(err).__name__}: {str(err)[:300]}"
    assert words.lower() in str(err).lower(), str(err)
    assert peak < MEMORY_LIMIT, f"{peak / 2**20:.0f} MB allocated refusing it"
    assert {a.name for a in platform.annotators.list()} == before
    assert {x.stem for x in (platform.artifacts.home / "annotators").glob("*.npz")} == {
        a.head_sha256 for a in platform.annotators.list()}  # no arrays of a refused file
    return str(err), peak


def test_the_good_file_imports_and_its_memory_is_the_yardstick(platform, good, request):
    err, peak = import_measured(platform, zip_of(list(good.items())))
    assert err is None, err
    assert platform.annotators.get("hostile").classes == platform.annotators.get(PBMC3K_NAME).classes
    assert peak < MEMORY_LIMIT, f"the good file took {peak / 2**20:.1f} MB: the limit would not tell bombs apart"
    record("security", "Annotator import: the control", "the built-in PBMC annotator, exported and imported",
           f"imported; peak allocation {peak / 2**20:.1f} MB", f"refused bombs below must stay under "
           f"{MEMORY_LIMIT >> 20} MB", request.node.nodeid)


# ---- zip bombs --------------------------------------------------------------------------------------------------
def test_a_manifest_bomb_is_refused_before_it_is_unpacked(platform, good, request):
    head = good["head.npz"]
    padded = manifest_for(good, head)[:-1] + b" " * BOMB + b"}"  # valid JSON, 96 MB of spaces
    data = zip_of([("manifest.json", padded), ("head.npz", head)])
    assert len(data) < 2 << 20
    message, peak = assert_refused(platform, data, "manifest.json unpacks to")
    record("security", "Annotator import: zip bomb in manifest.json", f"{len(data) / 2**20:.1f} MB zip, manifest "
           f"of {BOMB >> 20} MB (spaces)", f"400: {message[:90]}", f"peak allocation {peak / 2**20:.1f} MB; "
           "nothing stored", request.node.nodeid)


def test_a_head_bomb_is_refused_before_it_is_unpacked(platform, good, request):
    arrays = arrays_of(good["head.npz"])
    arrays["extra__padding"] = np.zeros(BOMB // 4, dtype=np.float32)
    head = npz_of(arrays)  # stored inside: the outer zip's deflate makes it small
    data = annotator_with(good, head)
    assert len(data) < 2 << 20
    message, peak = assert_refused(platform, data, "head.npz unpacks to")
    record("security", "Annotator import: zip bomb in head.npz", f"{len(data) / 2**20:.1f} MB zip, head.npz of "
           f"{len(head) >> 20} MB", f"400: {message[:90]}", f"peak allocation {peak / 2**20:.1f} MB; nothing "
           "stored", request.node.nodeid)


@pytest.mark.parametrize("array", ["space__components", "clf__coef", "fit__distances", "clf__classes",
                                   "check_json", "extra__genes", "extra__new"])
def test_a_bomb_in_each_array_is_refused_before_numpy_allocates_it(platform, good, array, request):
    """head.npz compressed inside (np.savez_compressed): small as a member, huge once its arrays unpack."""
    arrays = arrays_of(good["head.npz"])
    old = arrays.get(array, np.zeros(1, dtype=np.float32))
    rows = max(1, BOMB // max(1, old.dtype.itemsize * (old[0].size if old.ndim > 1 else 1)))
    arrays[array] = (np.zeros((rows,) + old.shape[1:], dtype=old.dtype) if old.ndim
                     else np.array("x" * (BOMB // 4)))  # a 0-d text array: one huge string
    head = npz_of(arrays, compressed=True)
    data = annotator_with(good, head)
    assert len(data) < 2 << 20
    message, peak = assert_refused(platform, data, "arrays unpack to")
    record("security", f"Annotator import: zip bomb in head.npz's {array}", f"{len(data) / 2**20:.1f} MB zip, "
           f"{array} of {arrays[array].nbytes >> 20} MB inside a compressed npz", f"400: {message[:90]}",
           f"peak allocation {peak / 2**20:.1f} MB; nothing stored", request.node.nodeid)


def test_a_member_that_lies_about_its_size_is_read_only_so_far(platform, good, request):
    """The directory says 1 KB; the deflated data unpacks to 96 MB. zipfile's own ``read`` would unpack it all
    before noticing."""
    bomb = npz_of({**arrays_of(good["head.npz"]), "extra__padding": np.zeros(BOMB // 4, np.float32)})
    data = lie_about_size(annotator_with(good, bomb, lambda m: m["parts"]["head.npz"].update(bytes=1024)),
                          "head.npz", 1024)
    message, peak = assert_refused(platform, data, "head.npz cannot be read")
    manifest_lie = lie_about_size(zip_of([("manifest.json", b" " * BOMB + manifest_for(good, good["head.npz"])),
                                          ("head.npz", good["head.npz"])]), "manifest.json", 2048)
    message2, peak2 = assert_refused(platform, manifest_lie, "manifest.json cannot be read")
    record("security", "Annotator import: a member lying about its size", "head.npz and manifest.json declaring "
           f"1-2 KB, unpacking to {BOMB >> 20} MB", f"400: {message[:70]} / {message2[:50]}",
           f"peak allocation {max(peak, peak2) / 2**20:.1f} MB", request.node.nodeid)


@pytest.mark.parametrize("shape", [(1 << 40,), (BOMB // 8,), (4096, 4096)])
def test_an_array_header_that_lies_about_its_shape_is_refused_before_allocation(platform, good, shape, request):
    """A .npy whose header declares far more than its data: numpy allocates from the header first."""
    head = npz_members(good["head.npz"], [("fit__distances.npy", npy_lying(shape, "<f8", b"\0" * 8 * 2700))],
                       drop="fit__distances.npy")
    message, peak = assert_refused(platform, annotator_with(good, head), "refused before allocating")
    record("security", "Annotator import: an array header lying about its shape", f"fit__distances declaring "
           f"{shape} float64 over 21 KB of data", f"400: {message[:90]}", f"peak allocation {peak / 2**20:.1f} MB",
           request.node.nodeid)


def test_shapes_that_do_not_fit_the_manifest_or_each_other_are_refused(platform, good, request):
    arrays = arrays_of(good["head.npz"])
    cases = {
        "more classes than the manifest": ({**arrays, "clf__classes": np.array([f"c{i}" for i in range(9)])},
                                           "classes"),
        "coefficients for another space": ({**arrays, "clf__coef": np.zeros((8, 3000), np.float32)}, "clf__coef"),
        "a fit of more cells than the reference": (
            {**arrays, "fit__distances": np.zeros(5000), "fit__offsets": np.array([0] * 8 + [5000])}, "cells"),
        "an unknown head kind": ({**arrays, "kind": np.array("gradient_boosting")}, "does not know"),
    }
    seen = []
    for case, (changed, words) in cases.items():
        message, _ = assert_refused(platform, annotator_with(good, npz_of(changed)), words)
        seen.append(f"{case}: {message[:60]}")
    record("security", "Annotator import: arrays that do not fit the manifest", "; ".join(cases),
           "400 each: " + " | ".join(seen)[:200], "checked from the headers, before reading the data",
           request.node.nodeid)


# ---- members ----------------------------------------------------------------------------------------------------
def _dup_manifest(good: dict[str, bytes]) -> bytes:
    other = manifest_for(good, good["head.npz"], lambda m: m["annotator"].update(model_checksum="other"))
    return zip_of([("manifest.json", good["manifest.json"]), ("manifest.json", other),
                   ("head.npz", good["head.npz"])])


def _dup_head(good: dict[str, bytes]) -> bytes:
    return zip_of([("manifest.json", good["manifest.json"]), ("head.npz", good["head.npz"]),
                   ("head.npz", good["head.npz"])])


def _dup_array(good: dict[str, bytes]) -> bytes:
    """A second clf__coef.npy (doubled weights) after the first: zipfile, and so numpy, would use this one."""
    buf = io.BytesIO()
    np.save(buf, arrays_of(good["head.npz"])["clf__coef"] * 2)
    return annotator_with(good, npz_members(good["head.npz"], [("clf__coef.npy", buf.getvalue())]))


@pytest.mark.parametrize("case", ["manifest.json twice", "head.npz twice", "an array twice inside head.npz"])
def test_duplicate_members_are_refused(platform, good, case, request):
    data = {"manifest.json twice": _dup_manifest, "head.npz twice": _dup_head,
            "an array twice inside head.npz": _dup_array}[case](good)
    message, _ = assert_refused(platform, data, "two members named")
    record("security", f"Annotator import: duplicate member ({case})", "a zip whose first and last copies differ "
           "(zipfile reads the last, other tools the first)", f"400: {message[:90]}", "nothing stored",
           request.node.nodeid)


@pytest.mark.parametrize(("where", "name", "words"), [
    ("zip", "evil.pkl", "should not"), ("zip", "README.txt", "should not"),
    ("npz", "evil.pkl", "should not"), ("npz", "clf__backdoor.npy", "does not read"),
    ("zip", "../manifest.json", "a path"), ("zip", "/etc/cron.d/x", "a path"), ("zip", "sub/head.npz", "a path"),
    ("zip", "..\\head.npz", "a path"), ("zip", "C:head.npz", "a path"),
    ("npz", "../kind.npy", "a path"), ("npz", "/tmp/x.npy", "a path"), ("npz", "..", "a path"),
])
def test_unexpected_and_path_like_members_are_refused(platform, good, where, name, words, request):
    payload = npy_lying((2,), "<f4", b"\0" * 8)
    if where == "zip":
        data = zip_of([*good.items(), (name, payload)])
    else:
        data = annotator_with(good, npz_members(good["head.npz"], [(name, payload)]))
    message, _ = assert_refused(platform, data, words)
    record("security", f"Annotator import: member {name!r} in the {where}", "an extra member beside the real ones",
           f"400: {message[:90]}", "nothing stored or written outside the data home", request.node.nodeid)


def test_an_object_array_is_refused_from_its_header_and_never_unpickled(platform, good, request):
    pickled = npy_lying((1,), "|O", b"\x80\x04\x95\x00")  # never read: the header alone refuses it
    data = annotator_with(good, npz_members(good["head.npz"], [("clf__classes.npy", pickled)],
                                            drop="clf__classes.npy"))
    message, _ = assert_refused(platform, data, "carries a pickle")
    record("security", "Annotator import: an object array (a pickle) in head.npz", "clf__classes with dtype object",
           f"400: {message[:90]}", "never unpickled", request.node.nodeid)


def test_a_directory_of_many_entries_is_refused_before_zipfile_lists_it(platform, good, request):
    data = zip_of([*good.items(), *((f"m{i}", b"") for i in range(5000))], zipfile.ZIP_STORED)
    message, _ = assert_refused(platform, data, "entries")
    record("security", "Annotator import: a zip directory of 5,002 entries", "5,000 empty extra members",
           f"400: {message[:90]}", "refused from the end-of-directory record", request.node.nodeid)


# ---- malformed manifest fields ----------------------------------------------------------------------------------
def _deep(n: int) -> dict:
    out: dict = {}
    for _ in range(n):
        out = {"a": out}
    return out


FIELD_CASES = {  # case -> (change, words the refusal must say)
    "model_id a list": (lambda m: m["annotator"].update(model_id=["baseline"]), "annotator.model_id must be a string"),
    "model_id missing": (lambda m: m["annotator"].pop("model_id"), "has no annotator.model_id"),
    "model_checksum a number": (lambda m: m["annotator"].update(model_checksum=7),
                                "annotator.model_checksum must be a string"),
    "name an object": (lambda m: m["annotator"].update(name={"x": 1}), "annotator.name must be a string"),
    "description a number": (lambda m: m["annotator"].update(description=5), "annotator.description must be"),
    "author a list": (lambda m: m["annotator"].update(author=["Ada"]), "annotator.author must be a string"),
    "created_at a list": (lambda m: m["annotator"].update(created_at=[2026]), "annotator.created_at must be"),
    "trained a string": (lambda m: m["annotator"].update(trained="yes"), "annotator.trained must be true or false"),
    "reference a list": (lambda m: m["annotator"].update(reference=[1, 2]), "annotator.reference must be an object"),
    "reference.cells a string": (lambda m: m["annotator"]["reference"].update(cells="many"),
                                 "annotator.reference.cells must be a whole number"),
    "reference.cells negative": (lambda m: m["annotator"]["reference"].update(cells=-1), "at least 0"),
    "genes_used a string": (lambda m: m["annotator"].update(genes_used="2000"), "annotator.genes_used must be"),
    "genes_used true": (lambda m: m["annotator"].update(genes_used=True), "annotator.genes_used must be"),
    "ontology a list": (lambda m: m["annotator"].update(ontology=["B"]), "annotator.ontology must be an object"),
    "an ontology term a number": (lambda m: m["annotator"]["ontology"].update(B=236), "annotator.ontology['B']"),
    "classes counts as strings": (lambda m: m["annotator"]["classes"].update(B="42"), "annotator.classes['B']"),
    "provenance a string": (lambda m: m["annotator"].update(provenance="x"), "annotator.provenance must be"),
    "annotator a list": (lambda m: m.update(annotator=[]), "annotator must be an object"),
    "annotator missing": (lambda m: m.pop("annotator"), "has no annotator"),
    "version a string": (lambda m: m.update(version="1"), "version must be a whole number"),
    "version true": (lambda m: m.update(version=True), "version must be a whole number"),
    "parts a list": (lambda m: m.update(parts=["head.npz"]), "parts must be an object"),
    "parts' sha256 a number": (lambda m: m["parts"]["head.npz"].update(sha256=5), "sha256 must be a string"),
    "parts' bytes a string": (lambda m: m["parts"]["head.npz"].update(bytes="1"), "bytes must be a whole number"),
    "nested garbage 100 deep": (lambda m: m["annotator"].update(provenance=_deep(100)), "more than 32 levels"),
    "nested garbage 100,000 deep": (None, "nested too deeply"),
    "a key twice": (None, "appears twice"),
    "NaN": (lambda m: m["annotator"]["reference"].update(cells=float("nan")), "NaN is not a number"),
}


def malformed(good: dict[str, bytes], case: str) -> bytes:
    change, _ = FIELD_CASES[case]
    head = good["head.npz"]
    if case == "nested garbage 100,000 deep":
        m = manifest_for(good, head).decode()
        manifest = m.replace('"annotator": {', '"annotator": {"x": ' + "[" * 100_000 + "]" * 100_000 + ", ", 1)
        assert manifest != m
        return zip_of([("manifest.json", manifest.encode()), ("head.npz", head)])
    if case == "a key twice":
        manifest = manifest_for(good, head).replace(b'"model_id": "baseline"',
                                                    b'"model_id": "baseline", "model_id": "scgpt"')
        assert b'"scgpt"' in manifest
        return zip_of([("manifest.json", manifest), ("head.npz", head)])
    return annotator_with(good, head, change)


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_every_malformed_manifest_field_is_refused_with_its_name(platform, good, case, request):
    message, _ = assert_refused(platform, malformed(good, case), FIELD_CASES[case][1])
    record("security", f"Annotator import: manifest {case}", "a manifest with that one change",
           f"400: {message[:100]}", "a sentence naming the field; nothing stored", request.node.nodeid)


# ---- through REST and the command line --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rest(tmp_path_factory):
    """The REST routes on an in-process Tornado server (no cluster) over their own platform."""
    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    import app.platform as platform_module
    from app.platform import Platform
    from app.rest import ROUTES
    from app.rest_annotators import MAX_IMPORT_BYTES

    home = tmp_path_factory.mktemp("hostile-rest") / "home"
    p = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(home)}), start_cluster=False)
    before, platform_module._shared = platform_module._shared, p
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            server = tornado.httpserver.HTTPServer(tornado.web.Application(ROUTES), max_body_size=MAX_IMPORT_BYTES)
            server.add_sockets(sockets)

        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}", p
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        platform_module._shared = before
        p.close()


def _refusal(response: requests.Response, status: int = 400) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and "Traceback" not in response.text
    return body["error"]


@pytest.mark.parametrize("case", ["model_id a list", "reference a list", "trained a string", "annotator a list",
                                  "nested garbage 100,000 deep", "parts' bytes a string"])
def test_malformed_manifests_through_rest_are_400_naming_the_field(rest, good, case, request):
    url, p = rest
    r = requests.post(f"{url}/api/annotators/import", data=malformed(good, case), params={"name": "hostile"},
                      headers={"Content-Type": "application/zip"}, timeout=60)
    error = _refusal(r)
    assert error["code"] == "invalid_annotator" and FIELD_CASES[case][1].lower() in error["message"].lower()
    assert "hostile" not in {a.name for a in p.annotators.list()}
    record("security", f"REST annotator import: manifest {case}", "POST /api/annotators/import",
           f"400 invalid_annotator: {error['message'][:90]}", "never 500", request.node.nodeid)


def test_bombs_through_rest_are_400_and_the_server_keeps_serving(rest, good, request):
    url, _ = rest
    arrays = arrays_of(good["head.npz"])
    arrays["space__components"] = np.zeros((50, BOMB // 200), np.float32)
    bombs = {"manifest": zip_of([("manifest.json", b" " * BOMB), ("head.npz", good["head.npz"])]),
             "array": annotator_with(good, npz_of(arrays, compressed=True)), "duplicate": _dup_head(good)}
    for what, data in bombs.items():
        error = _refusal(requests.post(f"{url}/api/annotators/import", data=data,
                                       headers={"Content-Type": "application/zip"}, timeout=60))
        assert error["code"] == "invalid_annotator", what
    assert requests.get(f"{url}/api/annotators", timeout=30).status_code == 200
    record("security", "REST annotator import: bombs and duplicates", ", ".join(bombs), "400 invalid_annotator each",
           "the server answers the next request", request.node.nodeid)


@pytest.mark.parametrize(("path", "body"), [
    ("/api/submit", "[" * 100_000 + "]" * 100_000),
    ("/api/annotators", '{"a":' * 100_000 + "1" + "}" * 100_000),
    ("/api/submit", json.dumps({"application": "cell-type-annotation", "model": "baseline", "dataset": "x",
                                "options": _deep(40)})),
    ("/api/annotators", json.dumps({"run_id": "x", "name": "n", "ontology": _deep(40)})),
])
def test_deeply_nested_json_bodies_are_400(rest, path, body, request):
    url, _ = rest
    r = requests.post(url + path, data=body.encode(), headers={"Content-Type": "application/json"}, timeout=60)
    error = _refusal(r)
    assert error["code"] == "invalid_json" and "deep" in error["message"]
    assert requests.get(f"{url}/api/annotators", timeout=30).status_code == 200
    record("security", f"Deeply nested JSON body to {path}", f"{len(body):,} bytes nesting "
           f"{'100,000' if len(body) > 100_000 else 'about 40'} levels", f"400 invalid_json: {error['message'][:80]}",
           "never 500; the server keeps serving", request.node.nodeid)


def test_an_oversized_json_body_is_413(rest, request):
    url, _ = rest
    body = json.dumps({"run_id": "x", "name": "n", "description": "d" * (2 << 20)})
    error = _refusal(requests.post(f"{url}/api/annotators", data=body, headers={"Content-Type": "application/json"},
                                   timeout=60), 413)
    assert error["code"] == "too_large"
    record("security", "An oversized JSON body", "2 MB description to POST /api/annotators",
           f"413: {error['message'][:80]}", "not parsed", request.node.nodeid)


def test_the_command_line_refuses_malformed_and_bombed_files_with_exit_1(good, tmp_path, request):
    env = {**os.environ, "HELICAL_PLATFORM_HOME": str(tmp_path / "home")}
    cli = shutil.which("helical-platform") or str(Path(sys.executable).parent / "helical-platform")
    arrays = arrays_of(good["head.npz"])
    arrays["fit__distances"] = np.zeros(BOMB // 8)
    files = {"reference a list": malformed(good, "reference a list"),
             "bomb": annotator_with(good, npz_of(arrays, compressed=True))}
    words = {"reference a list": "annotator.reference must be an object", "bomb": "arrays unpack to"}
    for case, data in files.items():
        path = tmp_path / "hostile.zip"
        path.write_bytes(data)
        done = subprocess.run([cli, "annotators", "import", str(path), "--name", "hostile"], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, (case, done.stderr[-500:])
        assert done.stderr.startswith("error: ") and words[case] in done.stderr and "Traceback" not in done.stderr
    record("security", "CLI annotator import: malformed manifest and array bomb",
           "helical-platform annotators import", "exit 1 with 'error: …' naming the field or the size",
           "no traceback; nothing stored", request.node.nodeid)
