"""Hostile HDF5 files: refused before any array is read, nothing read from outside the file, the server alive.

The gate (``inference/hdf5_gate.py``) is tried on each kind of lie a file can tell; the served instance gets the
ones that read other files on the server (external storage, external links, virtual datasets, aimed at a secret
file, ``/etc/passwd``, ``/proc/self/environ`` and the tokens file) and the ones that crashed or exhausted it (CSR
indices outside the matrix, indptr past the data, a decompression bomb), and must answer 415 with what was wrong,
never echo a byte of the target, and keep serving with every earlier dataset intact.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import threading
import time
import tracemalloc
from pathlib import Path

import anndata as ad
import numpy as np
import psutil
import pytest
import scipy.sparse as sp

from app.datasets import DatasetRejected
from inference import hdf5_gate
from inference.check_sandbox import check_isolated
from inference.checks import UNSAFE, CheckReport, check_file
from inference.file_errors import UnsafeFileError
from inference.file_gate import check_structure
from inference.readers import open_anndata
from store.artifacts import new_id
from store.engine import write_session
from store.tables import Dataset
from tests import hostile_files as H
from tests.api_client import TOKEN, api, dataset_ids, error_of, own_copy, settle, upload
from tests.broken_files import tenx_h5
from tests.conftest import PBMC, TOKEN_SERVER_ENV
from tests.reliability import record

SECRET = "SECRET-4f1c9a-do-not-leak"
ENV_SECRET = "ENVSECRET-77e2b1"


def _fmt(path: Path) -> str:
    return {".h5": "10x-h5", ".loom": "loom"}.get(path.suffix, "h5ad")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.mark.parametrize("case", list(H.STRUCTURE_CASES))
def test_a_file_that_lies_about_its_structure_is_refused_before_any_array_is_read(folder, case, request):
    sub = folder / case.replace(" ", "_").replace("/", "_")
    sub.mkdir(exist_ok=True)
    path = H.STRUCTURE_CASES[case](sub)
    with pytest.raises(UnsafeFileError, match="Refused before reading: '") as caught:
        check_structure(path, _fmt(path), full=True)
    report = check_file(path, path.name)
    assert not report["ok"] and report["errors"][0]["code"] == UNSAFE, report
    assert CheckReport(report).unreadable  # answered 415 by the API
    record("security", f"Hostile HDF5: {case}", f"{path.name} through the gate and check_file",
           f"refused: {str(caught.value)[:150]}", "no array read", request.node.nodeid)


def test_the_valid_file_passes_the_gate_and_its_check(folder):
    path = H.valid(folder)
    check_structure(path, "h5ad", full=True)
    assert check_file(path, path.name)["ok"]
    (folder / "tenx").mkdir(exist_ok=True)  # a valid Cell Ranger file too: no blanket refusal of its format
    tenx = tenx_h5(folder / "tenx")
    check_structure(tenx, "10x-h5", full=True)
    assert check_file(tenx, tenx.name)["ok"]


@pytest.mark.parametrize("kind", ["external storage (labels)", "external storage (X)", "external link",
                                  "virtual dataset"])
def test_a_file_pointing_at_another_file_is_refused_and_nothing_of_it_is_read(folder, kind, request):
    secret = folder / "secret.txt"
    secret.write_text(f"root:x:0:0:{SECRET}\n" * 8)
    secret_h5 = H.secret_h5(folder, SECRET)
    make = {"external storage (labels)": lambda: H.external_storage(folder, secret),
            "external storage (X)": lambda: H.external_storage_on_x(folder, secret),
            "external link": lambda: H.external_link(folder, secret_h5),
            "virtual dataset": lambda: H.virtual_dataset(folder, secret_h5)}[kind]
    path = make()
    report = check_file(path, path.name)
    assert report["errors"][0]["code"] == UNSAFE and SECRET not in json.dumps(report)
    with pytest.raises(UnsafeFileError):  # a later open (a worker's) goes through the gate too
        open_anndata(path, path.name)
    record("security", f"HDF5 pointing outside itself: {kind}", f"{path.name} aimed at a file outside the data home",
           report["errors"][0]["message"][:150], "the target's bytes never read", request.node.nodeid)


def test_validation_reads_a_sparse_matrix_in_bounded_memory(folder, monkeypatch, request):
    """A 200,000-cell matrix of 6 M values is validated with at most a few blocks in memory at once."""
    n_cells, n_genes, per_cell = 200_000, 2_000, 30
    rng = np.random.default_rng(0)
    indices = np.sort(rng.choice(n_genes, size=(n_cells, per_cell)), axis=1).ravel()
    x = sp.csr_matrix((np.ones(n_cells * per_cell, np.float32), indices, np.arange(0, n_cells * per_cell + 1,
                                                                                  per_cell)), shape=(n_cells, n_genes))
    path = folder / "large-valid.h5ad"
    ad.AnnData(X=x).write_h5ad(path)
    monkeypatch.setattr(hdf5_gate, "BLOCK", 250_000)
    tracemalloc.start()
    hdf5_gate.validate(path, "h5ad")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    whole = (x.indices.nbytes + x.indptr.nbytes) * 2  # as int64
    assert peak < 16 * 2**20 < whole, (peak, whole)
    record("security", "Sparse validation memory", f"{n_cells:,} cells, {x.nnz:,} values, blocks of 250,000",
           f"peak {peak / 2**20:.1f} MB (the index arrays whole: {whole / 2**20:.0f} MB)", "bounded",
           request.node.nodeid)


def _running(p: psutil.Process) -> bool:
    """Alive and set up: in a session of its own (a forked check calls setsid after asking to die with its check
    server; a spawned one is started in its own session), so stopping it cannot catch it half made."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE and os.getsid(p.pid) == p.pid
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False


def _check_processes(me: psutil.Process) -> tuple[set[int], list[psutil.Process]]:
    """(this process's check servers, the check processes it started: forked by one of its check servers, or
    spawned by it). Only this process's own: a served instance's check server is a grandchild too."""
    def line(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return ""

    mine = [c for c in me.children() if "inference.check_sandbox" in line(c)]
    servers = {c.pid for c in mine if line(c).endswith("--serve")}
    checks = [c for c in mine if c.pid not in servers]  # spawned
    for pid in servers:
        try:
            checks += psutil.Process(pid).children()  # forked (a fork keeps its parent's command line)
        except psutil.NoSuchProcess:
            pass
    return servers, checks


@pytest.mark.parametrize("check_server", [True, False], ids=["forked", "spawned"])
def test_a_check_that_crashes_or_hangs_ends_its_own_process_only(folder, request, monkeypatch, check_server):
    """Forked from the check server (each server's own) or, when there is none, spawned: a check killed by
    SIGSEGV or past its time limit is refused in words, takes nothing else down and leaves no process behind."""
    from inference import check_sandbox

    monkeypatch.setattr(check_sandbox, "USE_CHECK_SERVER", check_server)
    path = H.valid(folder)
    me = psutil.Process()

    def stopped(timeout_s: int) -> tuple[threading.Thread, dict, psutil.Process]:
        """A check of the file, its process stopped (SIGSTOP) as soon as it is seen: a forked check is over in
        ~0.2 s, so a check that ended first is tried again."""
        for _ in range(5):
            outcome: dict = {}
            earlier = {c.pid for c in _check_processes(me)[1]}  # a check that ended may linger unreaped a moment
            worker = threading.Thread(target=lambda o=outcome: o.update(check_isolated(path, path.name, {}, 4096,
                                                                                       timeout_s)))
            worker.start()
            child, deadline = None, time.monotonic() + 60
            while child is None and time.monotonic() < deadline and worker.is_alive():
                child = next((c for c in _check_processes(me)[1] if c.pid not in earlier and _running(c)), None)
            try:
                child.suspend()
                return worker, outcome, child
            except (psutil.NoSuchProcess, AttributeError):  # it ended before it was seen or stopped
                worker.join(60)
        raise AssertionError("no check process was seen: did the check run in this process?")

    for _ in range(5):  # a check whose report was written before the signal landed passes: try again
        worker, outcome, child = stopped(120)
        servers = _check_processes(me)[0]
        assert (child.ppid() in servers) if check_server else (child.ppid() == me.pid), (servers, child)
        env = child.environ()
        child.send_signal(signal.SIGSEGV)  # what scipy did on indices outside the matrix before the gate
        child.resume()
        worker.join(60)
        if not outcome["ok"]:
            break
    assert outcome["ok"] is False and "crashed" in outcome["errors"][0]["message"], outcome
    assert CheckReport(outcome).unreadable
    assert not any(k.startswith("HELICAL_PLATFORM") for k in env), sorted(env)  # no secret handed down
    worker, slow, child = stopped(1)  # a check that hangs: stopped, it never ends; the time limit's SIGKILL does
    worker.join(60)
    assert "longer than 1 s" in slow["errors"][0]["message"], slow
    left_servers, left_checks = _check_processes(me)
    assert not left_checks and left_servers == servers  # the check server outlived both of its children
    assert check_isolated(path, path.name, {}, 4096, 120)["ok"]  # and checks the next file
    record("security", f"The first check crashes (SIGSEGV) or hangs ({request.node.callspec.id})",
           "a check process killed by SIGSEGV; one past its time limit",
           f"refused: {outcome['errors'][0]['message'][:120]}", "the asking process alive, no check process left",
           request.node.nodeid)


def test_a_check_server_that_ends_under_a_check_takes_its_check_along_and_refuses_no_good_file(folder, request):
    """The check server killed while its child checks a good file: the child dies with it (never an orphan), the
    check runs again in a spawned interpreter and the file passes; the next check gets a new check server."""
    path = H.valid(folder)
    me = psutil.Process()
    assert check_isolated(path, path.name, {}, 4096, 120)["ok"]  # the check server is up
    outcome: dict = {}
    for _ in range(5):  # the child stopped (SIGSTOP) as soon as it is seen, before its ~0.2 s are over
        worker = threading.Thread(target=lambda: outcome.update(check_isolated(path, path.name, {}, 4096, 120)))
        worker.start()
        child, deadline = None, time.monotonic() + 60
        while child is None and time.monotonic() < deadline:
            servers, checks = _check_processes(me)
            child = next((c for c in checks if c.ppid() in servers and _running(c)), None)
        try:
            child.suspend()
            break
        except psutil.NoSuchProcess:
            worker.join(60)
    (server,) = servers
    from inference.check_sandbox import CheckServer

    folder = Path(CheckServer._shared._tmp.name)  # its private working folder
    assert folder.is_dir()
    psutil.Process(server).kill()
    worker.join(120)
    assert outcome["ok"], outcome  # checked again, spawned: a good file is not refused for the server's sake
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "the check outlived its server"
    assert check_isolated(path, path.name, {}, 4096, 120)["ok"]
    assert _check_processes(me)[0] - {server}, "no new check server"
    assert not folder.exists()  # nothing of the dead check server left in the temporary folder
    record("security", "The check server killed under a check", "SIGKILL to the check server while its child "
           "checks a good file", "the child ended with it; the file checked again in a spawned interpreter, "
           "accepted", "no orphan check; a new check server for the next file", request.node.nodeid)


def test_a_decompression_bomb_is_refused_by_the_checks_memory_limit(folder, request):
    path = H.memory_bomb(folder, gib=3)  # 3 GiB of zeros in a ~3 MB file
    hdf5_gate.validate(path, "h5ad")  # an honest structure: only the memory limit can stop it
    report = check_isolated(path, path.name, {}, 2048, 300)
    assert not report["ok"] and CheckReport(report).unreadable
    assert "3.00 GiB" in report["errors"][0]["message"] or "2,048 MB" in report["errors"][0]["message"], report
    record("security", f"Decompression bomb (3 GiB in obsm, {path.stat().st_size / 2**20:.0f} MB file)",
           "the first check, limited to 2,048 MB",
           report["errors"][0]["message"][:150], "the server process never allocated it", request.node.nodeid)


# ---- through a served instance ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(token_server):
    """The shared token server: its first check is limited to 2,048 MB and it holds ``ENV_SECRET`` in its
    environment (``TOKEN_SERVER_ENV``)."""
    assert TOKEN_SERVER_ENV["HELICAL_PLATFORM_CHECK_MEMORY_MB"] == "2048"
    assert TOKEN_SERVER_ENV["HELICAL_PLATFORM_TEST_ENV_SECRET"] == ENV_SECRET
    return settle(token_server)  # the data home's datasets must not change while it tries its files


def _digest(home: Path) -> dict[str, str]:
    return {str(f.relative_to(home)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted((home / "datasets").rglob("*")) if f.is_file()}


def test_hostile_uploads_are_refused_with_415_read_nothing_outside_and_the_server_keeps_serving(server, folder,
                                                                                                request):
    stored_before = dataset_ids(server)
    good = upload(server, own_copy(PBMC, folder / "pbmc-own.h5ad", "hostile files"), name="pbmc.h5ad")
    assert good.status_code == 201, good.text
    before = _digest(server.home)
    secret = folder / "server-secret.txt"
    secret.write_text(f"alice {SECRET}\n" * 8)
    secret_h5 = H.secret_h5(folder, SECRET)
    sub = folder / "served"
    sub.mkdir(exist_ok=True)
    cases = {
        "external storage → a secret file": lambda: H.external_storage(sub, secret),
        "external storage → /etc/passwd": lambda: H.external_storage(sub, Path("/etc/passwd")),
        "external storage → /proc/self/environ": lambda: H.external_storage(sub, Path("/proc/self/environ")),
        "external storage (X) → the secret": lambda: H.external_storage_on_x(sub, secret),
        "external link → another HDF5 file": lambda: H.external_link(sub, secret_h5),
        "virtual dataset → another HDF5 file": lambda: H.virtual_dataset(sub, secret_h5),
        "CSR indices at 2^30 (was SIGSEGV)": lambda: H.indices_outside(sub),
        "indptr past the data (was 13 GB)": lambda: H.indptr_past_data(sub),
        "indptr backwards": lambda: H.indptr_backwards(sub),
        "decompression bomb (3 GiB)": lambda: H.memory_bomb(sub, gib=3),
    }
    for case, make in cases.items():
        path = make()
        for raw in (True, False):
            r = upload(server, path, raw=raw)
            assert r.status_code == 415, (case, r.status_code, r.text[:400])
            err = error_of(r)
            assert err["code"] == "unreadable_file", (case, err)
            for leaked in (SECRET, ENV_SECRET, "root:x:0", TOKEN):
                assert leaked not in r.text, (case, leaked)
            assert api(server, "GET", "/api/models").status_code == 200, f"server down after {case}"
        record("security", f"Hostile upload: {case}", "REST upload, raw and multipart",
               f"415: {(err.get('details') or {}).get('errors', [{}])[0].get('message', err['message'])[:140]}",
               "server up, nothing read outside, earlier dataset unchanged", request.node.nodeid)
    listing = api(server, "GET", "/api/datasets")
    assert {d["dataset_id"] for d in listing.json()} - stored_before == {good.json()["dataset_id"]}
    assert SECRET not in listing.text and ENV_SECRET not in listing.text
    assert _digest(server.home) == before
    assert server.proc.poll() is None


@pytest.mark.parametrize("case", ["MTX header of 10^12 entries", "MTX array of 10^10 values", "MTX without banner",
                                  "CSV first line of 2 MB", "CSV.gz bomb first line"])
def test_text_formats_that_declare_more_than_their_bytes_are_refused_before_reading(folder, case, request):
    sub = folder / ("text-" + case.replace(" ", "_").replace("^", ""))
    sub.mkdir(exist_ok=True)
    if case.startswith("MTX"):
        head = {"MTX header of 10^12 entries": "%%MatrixMarket matrix coordinate integer general\n1000000 1000000 "
                                               "1000000000000\n1 1 1\n",
                "MTX array of 10^10 values": "%%MatrixMarket matrix array integer general\n100000 100000\n1\n",
                "MTX without banner": "1000 1000 5\n1 1 1\n"}[case]
        (sub / "matrix.mtx").write_text(head)
        (sub / "barcodes.tsv").write_text("AAAC-1\n")
        (sub / "features.tsv").write_text("ENSG00000243485\tMIR1302-2HG\tGene Expression\n")
        path, fmt = sub, "10x-mtx"
    elif case == "CSV first line of 2 MB":
        path, fmt = sub / "cells.csv", "csv"
        path.write_text("cell," + ",".join(f"G{i}" for i in range(400_000)) + "\nc1," + ",".join("1" * 1) + "\n")
    else:
        path, fmt = sub / "cells.csv.gz", "csv"
        with gzip.open(path, "wb") as fh:
            fh.write(b"cell," + b"A" * (3 * 2**20))
    with pytest.raises(UnsafeFileError) as caught:
        check_structure(path, fmt)
    report = check_file(path, path.name)
    assert report["errors"][0]["code"] == UNSAFE, report
    record("security", f"Hostile text file: {case}", f"{fmt} through its gate", f"refused: {str(caught.value)[:140]}",
           "nothing allocated for the declared size", request.node.nodeid)


def test_the_gate_opens_a_file_another_reader_holds_open(folder):
    """A run whose reference is its query opens one file twice in a worker: the gate must agree with anndata's
    HDF5 locking flags (a mismatch failed such runs as 'could not be read')."""
    path = H.valid(folder)
    held = ad.read_h5ad(path, backed="r")
    try:
        adata, _ = open_anndata(path, path.name)
        assert adata.n_obs == held.n_obs
        adata.file.close()
    finally:
        held.file.close()


def test_label_names_too_long_to_be_labels_are_not_offered_and_the_report_stays_small(folder, request):
    path = H.long_class_names(folder)
    report = check_isolated(path, path.name, {}, 4096, 300)
    assert report["ok"], report  # a usable file, its long column refused as a label column
    assert "blob" in report["rejected_label_columns"] and "blob" not in report["label_columns"]
    size = len(json.dumps(report))
    assert size < 200_000, size
    record("security", "Label values of 20,000 characters (100 classes, gzip)", "the first check's report",
           f"the column is not offered ({report['rejected_label_columns']['blob']}); report {size / 1024:.0f} kB",
           "every user's copy of the report stays small", request.node.nodeid)


def _stored_before_the_gate(platform, path: Path, name: str, label_columns: dict) -> str:
    """A dataset as a store from before the gate holds it: the file under its sha256, a row whose report (then
    'ok') has no gate mark."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    target = platform.artifacts.dataset_path(sha, ".h5ad")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    ds = Dataset(id=new_id(), file_name=name, sha256=sha, size_bytes=len(data), n_cells=120, n_genes=32_738,
                 check_report={"ok": True, "n_cells": 120, "n_genes": 32_738, "errors": [], "warnings": [],
                               "label_columns": label_columns})
    with write_session(platform.engine) as s:
        s.add(ds)
    return ds.id


def test_a_dataset_stored_before_the_gate_passes_it_before_its_first_run(platform, folder, request):
    sub = folder / "before-the-gate"
    sub.mkdir(exist_ok=True)
    labels = {"celltype": {"B": 60, "T": 60}}
    hostile = _stored_before_the_gate(platform, H.legacy_sparse_outside(sub), "old.h5ad", labels)
    with pytest.raises(DatasetRejected) as refused:
        platform.runs.submit("cell-type-annotation", "baseline", hostile, reference_id=hostile,
                             label_column="celltype")
    assert refused.value.unreadable and "Refused before reading" in str(refused.value)
    assert not CheckReport(platform.datasets.get(hostile).check_report).gated  # still refused next time
    good = _stored_before_the_gate(platform, H.valid(sub), "old-good.h5ad", labels)
    platform.datasets.gated(platform.datasets.get(good))
    assert CheckReport(platform.datasets.get(good).check_report).gated  # checked once, marked, not again
    record("security", "A dataset stored before the gate", "a legacy sparse X with an index outside the matrix, "
           "recorded as 'ok' by an older version; a run submitted on it", f"refused: {str(refused.value)[:120]}",
           "checked by the gate (in the child process) before its first run", request.node.nodeid)
