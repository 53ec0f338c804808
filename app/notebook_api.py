"""The Python API for notebooks: AnnData in, AnnData out, as ``celltypist.annotate`` or ``sc.tl.*`` work.

The functions here hold what does not depend on where the work runs (which client, progress display, writing a
result into the caller's object, DataFrames); a **client** does the rest. ``LocalClient`` (``app/notebook_local.py``)
drives this process's Platform (SQLite + a Dask cluster, started on first use); a remote client (REST) can plug in
behind the same ``Client`` protocol and the same functions. ``helical_platform`` re-exports this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import pandas as pd

from app.notebook_errors import PlatformError

if TYPE_CHECKING:
    from anndata import AnnData

    from app.platform import Platform

ACTIVE = ("queued", "running")
Progress = Callable[[dict], None]
"""Called at every poll with the run's status as the REST API gives it (``status``, ``stage``, ``progress``,
``cells_done``, ``cells_total``, ``eta_s``, ``run_id``; for several runs, ``runs`` lists each one's)."""


class Integrated(NamedTuple):
    """What ``integrate`` returns: the AnnData (``obsm['X_<model>']``, ``obsm['X_umap_<model>']``, metrics in
    ``uns['helical_platform']``) and the metrics table (models as rows)."""

    adata: AnnData
    metrics: pd.DataFrame


class Client(Protocol):
    """Where the work runs. Errors are ``PlatformError``s; results are new AnnData objects, never the caller's."""

    def models(self, application: str | None = None) -> list[dict]: ...

    def annotators(self) -> list[dict]: ...

    def runs(self, limit: int = 200) -> list[dict]: ...

    def annotate(self, adata: AnnData, model: str | None, reference: AnnData | None, label_column: str | None,
                 annotator: str | None, truth_column: str | None, options: dict,
                 progress: Progress | None) -> AnnData: ...

    def integrate(self, adata: AnnData, models: list[str], batch_column: str, label_column: str | None,
                  options: dict, progress: Progress | None) -> Integrated: ...

    def annotated(self, run_id: str) -> AnnData: ...


_client: Client | None = None
_client_lock = threading.Lock()


def use_local(platform: Platform | None = None) -> Client:
    """Run on this process's Platform (default: the shared one, from the environment's settings exactly as the
    server reads them, started on first use); returns the client now in use."""
    from app.notebook_local import LocalClient

    global _client
    with _client_lock:
        _client = LocalClient(platform)
        return _client


def connect(url: str, token: str | None = None, timeout: float = 300) -> Client:
    """Run on a lab server's cluster through its REST API (``http://lab-server:5006``; ``token``: yours from
    the server's ``HELICAL_PLATFORM_TOKENS``, or its shared ``HELICAL_PLATFORM_API_TOKEN``). The same calls and
    exceptions as locally; ``use_local()`` switches back. Checks at once that the server answers and takes the
    token (``Unavailable``, ``AccessDenied``)."""
    from app.notebook_remote import RemoteClient

    global _client
    remote = RemoteClient(url, token, timeout)
    with _client_lock:
        _client = remote
    return remote


def client() -> Client:
    """The client in use: the local one unless another was chosen."""
    with _client_lock:
        current = _client
    return current if current is not None else use_local()


# ---- the public functions -----------------------------------------------------------------------------------
def models(application: str | None = None) -> pd.DataFrame:
    """The catalog (one row per model: weights installed, generated or missing; where it would run)."""
    return pd.DataFrame.from_records(client().models(application))


def annotators() -> pd.DataFrame:
    """Saved annotators (built-in, the lab's, imported): what can label cells without a reference."""
    return pd.DataFrame.from_records(client().annotators())


def runs(limit: int = 200) -> pd.DataFrame:
    """The latest runs, newest first (every user's, as the dashboard's history shows them)."""
    return pd.DataFrame.from_records(client().runs(limit))


def annotate(adata: AnnData, model: str | None = None, reference: AnnData | None = None,
             label_column: str | None = None, annotator: str | None = None, truth_column: str | None = None,
             inplace: bool = False, progress: bool | Progress = True,
             truth_ontology: dict[str, str | None] | None = None, **options: object) -> AnnData:
    """Annotate ``adata`` (raw counts) with ``model`` (default ``geneformer``, or the annotator's own model;
    ``geneformer:VARIANT`` picks a variant) and a labelled ``reference`` (its ``label_column``) or a saved
    ``annotator`` (name or id); without either, ``label_column`` of ``adata`` itself is split 70/30 to evaluate.
    ``options`` are the run's options as the REST API takes them (head, k, confidence_threshold,
    novelty_threshold, majority_voting, seed, ...). ``truth_ontology`` (with an annotator that maps its labels to
    the Cell Ontology and a ``truth_column``): true label -> CL id, or None to leave it unmapped, for the cell-class
    scores; other labels take the annotator's term for the same spelling, else the suggested one, and the run's
    parameters record each label's term and how it was found.

    Returns a new AnnData, the same as the downloaded annotated ``.h5ad``; ``inplace=True`` writes its new
    columns into ``adata`` and returns it. Raises ``InputError`` (with ``.report`` for a file the checks refuse),
    ``NotFound``, ``RunFailed``, ``Unavailable``; an interrupt cancels the run."""
    with _progress(progress) as report:
        if truth_ontology is not None:
            options["truth_ontology"] = dict(truth_ontology)
        result = client().annotate(adata, model, reference, label_column, annotator, truth_column, dict(options),
                                   report)
    return merge_into(adata, result) if inplace else result


def integrate(adata: AnnData, models: list[str] | str, batch_column: str, label_column: str | None = None,
              inplace: bool = False, progress: bool | Progress = True, **options: object) -> Integrated:
    """Embed ``adata`` with each model (one run each) and score how well each mixes the batches of
    ``batch_column`` while keeping the cell types of ``label_column`` apart (scIB metrics). Returns
    ``(adata, metrics)``: a new AnnData like the command line's ``integrate`` output (or ``adata`` itself with
    ``inplace=True``) and the metrics table."""
    names = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    with _progress(progress) as report:
        done = client().integrate(adata, [m for m in names if m], batch_column, label_column, dict(options), report)
    return Integrated(merge_into(adata, done.adata), done.metrics) if inplace else done


# ---- what every client shares ---------------------------------------------------------------------------------
def wait_runs(status_of: Callable[[str], dict], cancel: Callable[[list[str]], None], run_ids: list[str],
              progress: Progress | None, poll_s: float) -> None:
    """Poll ``status_of`` (a run's status as the REST API gives it) until every run ends, telling ``progress``; an
    interrupt (the kernel's stop button) calls ``cancel`` (which waits for the runs to stop, so nothing is left
    half-written) and is raised again. A run that did not finish raises RunFailed."""
    from app.notebook_errors import RunFailed

    try:
        while True:
            statuses = [status_of(r) for r in run_ids]
            if progress is not None:
                progress(combined(statuses))
            if all(s["status"] not in ACTIVE for s in statuses):
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        cancel(run_ids)
        raise
    failed = [s for s in statuses if s["status"] != "done"]
    if failed:
        s = failed[0]
        raise RunFailed(f"Run {s['run_id']} ({s.get('model')}) {s['status']}: {s.get('error')}",
                        "cancelled" if s["status"] == "cancelled" else "run_failed",
                        {"run_id": s["run_id"], "status": s["status"]})


def until(done: Callable[[], bool], timeout: float, poll_s: float) -> None:
    """Wait for ``done``; a second interrupt stops the wait (the runs are cancelled either way)."""
    end = time.monotonic() + timeout
    try:
        while not done() and time.monotonic() < end:
            time.sleep(poll_s)
    except KeyboardInterrupt:
        pass


def combined(statuses: list[dict]) -> dict:
    """One status for several runs (integration: one per model): the first active one's stage and cells, the mean
    progress; a single run's status as it is."""
    if len(statuses) == 1:
        return statuses[0]
    active = [s for s in statuses if s["status"] in ACTIVE]
    now = (active or statuses)[0]
    return {**now, "status": now["status"] if active else ("done" if all(s["status"] == "done" for s in statuses)
                                                            else "failed"),
            "stage": f"{now['model']}: {now['stage']}",
            "progress": sum(float(s["progress"] or 0) for s in statuses) / len(statuses), "runs": statuses}


@contextmanager
def _progress(progress: bool | Progress) -> Iterator[Progress | None]:
    """The caller's callback, a progress bar (closed however the call ends: an interrupt, an error), or none."""
    if callable(progress) or not progress:
        yield progress or None
        return
    bar = ProgressBar()
    try:
        yield bar
    finally:
        bar.close()


class ProgressBar:
    """A notebook progress bar (plain text outside Jupyter): the run's stage, cells embedded, percent and ETA.
    Opened at the first status, closed when the run ends."""

    def __init__(self) -> None:
        self._bar = None

    def __call__(self, status: dict) -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=100, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                                             "[{elapsed}<{remaining}{postfix}]")
        self._bar.set_description_str(str(status.get("stage") or status.get("status")), refresh=False)
        cells = f"{status['cells_done']:,}/{status['cells_total']:,} cells" if status.get("cells_total") else ""
        self._bar.set_postfix_str(cells, refresh=False)
        self._bar.update(max(0.0, round(100 * float(status.get("progress") or 0), 1) - self._bar.n))
        if status.get("status") not in ("queued", "running"):
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def merge_into(adata: AnnData, result: AnnData) -> AnnData:
    """Write into ``adata`` what ``result`` (the annotated copy of it) has new or changed: obs columns, obsm
    entries, uns keys. Compared rather than named, so it holds for any application's file and for a file that was
    annotated before (its old prediction columns are replaced, as in the downloaded file)."""
    if adata.n_obs != result.n_obs or not np.array_equal(adata.obs_names, result.obs_names):
        raise PlatformError("The result's cells are not the cells given (the AnnData changed during the run?).")
    for key in result.obs.columns:
        if key not in adata.obs.columns or not _same_column(adata.obs[key], result.obs[key]):
            adata.obs[key] = result.obs[key].values  # a categorical stays one (positions: the same cells)
    for key in result.obsm.keys():
        value = result.obsm[key]
        if key not in adata.obsm or not _same(adata.obsm[key], value):
            if isinstance(value, pd.DataFrame):
                value = value.set_axis(adata.obs_names, axis=0)
            adata.obsm[key] = value
    for key in result.uns.keys():
        if key not in adata.uns or not _same(adata.uns[key], result.uns[key]):
            adata.uns[key] = result.uns[key]
    return adata


def _same_column(a: pd.Series, b: pd.Series) -> bool:
    """Equal values, whatever the dtype the file round trip gave them (strings may come back categorical)."""
    return pd.Series(a.to_numpy(dtype=object)).equals(pd.Series(b.to_numpy(dtype=object)))


def _same(a: object, b: object) -> bool:
    if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
        return isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame) and a.reset_index(drop=True).equals(
            b.reset_index(drop=True))
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    try:
        if isinstance(a, (np.ndarray, list, tuple)) or isinstance(b, (np.ndarray, list, tuple)) \
                or hasattr(a, "toarray") or hasattr(b, "toarray"):
            dense = [x.toarray() if hasattr(x, "toarray") else np.asarray(x) for x in (a, b)]
            return dense[0].shape == dense[1].shape and bool(np.array_equal(dense[0], dense[1]))
        return bool(a == b)
    except (TypeError, ValueError):
        return False
