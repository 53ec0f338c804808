"""Embeddings and batch integration: embeddings computed once (the embedding store), reused across applications,
and the scIB metrics table of each model on two multi-batch PBMC datasets.

    python bench/integration.py                    # everything, CPU: about 20 min on 2 cores
    python bench/integration.py --parts reuse      # (1) only: first/second integration run, then annotation
    python bench/integration.py --parts real       # (2b) only: pbmc3k + pbmc68k (baseline, harmony)
    python bench/integration.py --device cuda --cells 2700   # a GPU machine: the foundation models on every cell

Everything runs in this process through the application objects, as ``app/integrate.py`` does
(``inference.applications.get("embedding-integration")``: ``validate``, ``job``, ``model_phase``, ``cpu_phase``),
each model with its own temporary data home (so its first run starts from an empty embedding store); the model is
loaded once per model, as on its actor.

(1) "reuse": on pbmc3k made 2-batch (``tests/multibatch.py``'s ``with_batch_effect``, seed 0), for each model a
first integration run (empty store) and a second one on the same file (store filled): the model phase's wall time
of each, and second / first (goal <= 5 %). Then, in the same data home, an annotation run (evaluation mode, the
pipeline's own 70/30 split, label ``celltype``) of the same model and file, against the same annotation with no
store (``embeddings_dir=None``, its own empty head cache): the "embedding reference" and "embedding query" stages.
The classical models (baseline, harmony) run on all 2,700 cells and on the subset the foundation models use
(``--cells``, default 500, seeded random cells of the same 2-batch file: on 2 shared CPU cores scGPT embeds about
1-3 cells/s, and the annotation without the store embeds the file 1.7 times; ``--cells 2700`` on a GPU). A
smaller file makes second / first larger (the second run's cost is about constant), so it errs on the safe side.
(2a) the scIB table of those first runs (label column ``celltype``).
(2b) "real": pbmc3k (Chromium v1, one donor) + scanpy's bundled ``10x_pbmc68k_reduced.h5ad`` (another donor and
experiment; approximate counts ``round(expm1(raw.X) * n_counts / 1e4)``), concatenated on their shared genes (the
765 of the reduced file), ``batch`` = pbmc3k / pbmc68k, ``celltype`` = the coarse types of ``HARMONISED`` (types
with no counterpart in the other file dropped). A model the upload check refuses (too few genes of its vocabulary)
is reported as refused.

Foundation models run on generated, real-size, untrained checkpoints (``bench/out/weights-real``, made as
bench/models.py makes them): their speed is real, their metrics mean nothing. Prints one JSON line per
measurement, then markdown tables (``--markdown FILE`` appends them to a file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
PBMC3K = REPO.parent / "shared" / "data" / "pbmc3k_10x.h5ad"
FOUNDATION = ("geneformer", "scgpt")
CLASSICAL = ("baseline", "harmony")
LABEL, BATCH = "celltype", "batch"

# coarse cell types common to both files; a label mapped to None has no counterpart in the other file (dropped)
HARMONISED = {
    "pbmc3k": {"B": "B", "CD4 T": "CD4 T", "CD8 T": "CD8 T", "NK": "NK", "CD14 Monocytes": "CD14 Mono",
               "Dendritic": "DC", "FCGR3A Monocytes": None, "Megakaryocytes": None},
    "pbmc68k": {"CD19+ B": "B", "CD4+/CD25 T Reg": "CD4 T", "CD4+/CD45RO+ Memory": "CD4 T",
                "CD4+/CD45RA+/CD25- Naive T": "CD4 T", "CD8+ Cytotoxic T": "CD8 T",
                "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T", "CD56+ NK": "NK", "CD14+ Monocyte": "CD14 Mono",
                "Dendritic": "DC", "CD34+": None},
}
METRICS = ("Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI", "BRAS", "iLISI", "KBET",
           "Graph connectivity", "PCR comparison")
AGGREGATES = ("Bio conservation", "Batch correction", "Total")


def log(*what: object) -> None:
    print(*what, file=sys.stderr, flush=True)


def emit(row: dict) -> dict:
    if "model_phase_s" in row:
        log(f"   model phase {row['model_phase_s']:.2f} s (CPU {row['model_phase_cpu_s']:.2f} s), load average "
            f"{row['load_average']}")
    print(json.dumps(row, default=str), flush=True)
    return row


# ---------------------------------------------------------------- data

def multibatch_file(folder: Path, cells: int | None) -> Path:
    """pbmc3k with the simulated batch effect (seed 0); ``cells``: that many of its cells (seeded, sorted)."""
    import anndata as ad
    import numpy as np

    sys.path.insert(0, str(REPO))
    from tests.multibatch import with_batch_effect

    adata = with_batch_effect(ad.read_h5ad(PBMC3K), seed=0)
    if cells and cells < adata.n_obs:
        adata = adata[np.sort(np.random.default_rng(0).choice(adata.n_obs, cells, replace=False))].copy()
    path = folder / f"pbmc3k_2batch_{adata.n_obs}.h5ad"
    adata.write_h5ad(path, compression="gzip")
    return path


def pbmc68k_file() -> Path:
    import scanpy

    return Path(scanpy.__file__).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"


def real_multibatch_file(folder: Path) -> tuple[Path, dict]:
    """pbmc3k + pbmc68k_reduced on their shared genes, with ``batch`` and the harmonised ``celltype``."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    p3 = ad.read_h5ad(PBMC3K)
    p68 = ad.read_h5ad(pbmc68k_file())
    raw = p68.raw.to_adata()
    x68 = raw.X.toarray() if sp.issparse(raw.X) else np.asarray(raw.X)
    counts68 = np.round(np.expm1(x68) * p68.obs["n_counts"].to_numpy()[:, None] / 1e4).astype(np.float32)
    shared = [g for g in raw.var_names if g in set(p3.var_names)]
    col68 = raw.var_names.get_indexer(shared)
    parts, summary = [], {"shared_genes": len(shared)}
    for name, a, x, source in (("pbmc3k", p3, p3[:, shared].X, p3.obs["celltype"]),
                               ("pbmc68k", p68, sp.csr_matrix(counts68[:, col68]), p68.obs["bulk_labels"])):
        mapped = source.astype(str).map(HARMONISED[name])
        keep = mapped.notna().to_numpy()
        obs = pd.DataFrame({BATCH: name, LABEL: mapped[keep].to_numpy(), "source_label": source.astype(str)[keep]
                            .to_numpy()}, index=[f"{name}:{c}" for c in a.obs_names[keep]])
        parts.append(ad.AnnData(X=sp.csr_matrix(x[keep], dtype=np.float32), obs=obs))
        summary[name] = {"cells": int(keep.sum()), "dropped": source[~keep].astype(str).value_counts().to_dict(),
                         "types": obs[LABEL].value_counts().to_dict()}
    adata = ad.concat(parts)
    adata.var = p3.var.loc[shared].copy()  # symbols, with pbmc3k's Ensembl ids
    for c in (BATCH, LABEL):
        adata.obs[c] = adata.obs[c].astype("category")
    summary["cells"] = int(adata.n_obs)
    path = folder / "pbmc3k_pbmc68k.h5ad"
    adata.write_h5ad(path, compression="gzip")
    return path, summary


# ---------------------------------------------------------------- runs

class Bench:
    """Loaded backends (one per model, as an actor holds it), the weights, and a folder for data homes."""

    def __init__(self, work: Path, weights: Path, device: str) -> None:
        from app.annotate import vocabularies
        from inference.weights import WeightsLocations

        self.work, self.device = work, device
        self.locations = WeightsLocations(staged=OUT / "none", generated=weights, helical_cache=OUT / "none")
        self.vocab = vocabularies(self.locations)
        self.backends: dict[str, tuple[object, dict, float]] = {}
        self.datasets: dict[Path, object] = {}

    def dataset(self, path: Path):  # noqa: ANN201 - a DatasetInfo
        from app.annotate import _dataset

        if path not in self.datasets:
            self.datasets[path] = _dataset(path, self.vocab)
        return self.datasets[path]

    def backend(self, model: str) -> tuple[object, dict, float]:
        from app.annotate import build_backend

        if model not in self.backends:
            started = time.perf_counter()
            backend, info = build_backend(model, None, self.locations, self.device)
            self.backends[model] = (backend, info, time.perf_counter() - started)
        return self.backends[model]

    def integrate(self, model: str, path: Path, home: Path, tag: str) -> dict:
        """One integration run of ``model`` on ``path`` in data home ``home``: the model phase timed on its own."""
        from inference import applications
        from inference.applications.base import ModelInfo, RunRequest
        from inference.integration import HANDOVER

        application = applications.get("embedding-integration")
        request = RunRequest(ModelInfo(model, model, model), self.dataset(path), None, LABEL, None,
                             {"batch_column": BATCH, "seed": 0})
        accepted = application.validate(request)
        backend, info, load_s = self.backend(model)
        run = Path(tempfile.mkdtemp(prefix=f"{model}-{tag}-", dir=self.work))
        work = run / "work"
        work.mkdir()
        job = application.job(request, accepted, run / "result", home)
        load_before = os.getloadavg()[0]
        started, cpu = time.perf_counter(), time.process_time()
        application.model_phase(job, backend, info, work, _progress, lambda: False)
        model_s, model_cpu = time.perf_counter() - started, time.process_time() - cpu
        handover = json.loads((work / HANDOVER).read_text())
        started = time.perf_counter()
        outcome = application.cpu_phase(job, work, _progress, lambda: False)
        cpu_s = time.perf_counter() - started
        prov = outcome.provenance
        return {"part": "integration", "run": tag, "model": model, "data": path.name, "cells": outcome.n_cells,
                "trained": bool(info.get("trained", True)), "device": self.device,
                "model_load_s": round(load_s, 2), "model_phase_s": round(model_s, 3),
                "model_phase_cpu_s": round(model_cpu, 3), "cpu_phase_s": round(cpu_s, 2),
                "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "model_phase_timings": handover["timings"],
                "stage_timings": outcome.stage_timings,
                "embedding_reused": prov["embedding"].get("reused"),
                "correction_reused": prov.get("integration", {}).get("reused"),
                "metrics": outcome.metrics["metrics"], "aggregates": outcome.metrics["aggregates"],
                "cells_scored": outcome.metrics.get("cells_scored")}

    def annotate(self, model: str, path: Path, home: Path | None, tag: str) -> dict:
        """An annotation run, evaluation mode, in data home ``home`` (None: no embedding store, an empty head
        cache)."""
        from inference import applications
        from inference.applications.base import ModelInfo, RunRequest

        application = applications.get("cell-type-annotation")
        request = RunRequest(ModelInfo(model, model, model), self.dataset(path), None, LABEL, None,
                             {"confidence_threshold": 0.0, "seed": 0})
        accepted = application.validate(request)
        backend, info, _ = self.backend(model)
        run = Path(tempfile.mkdtemp(prefix=f"annotate-{model}-{tag}-", dir=self.work))
        work = run / "work"
        work.mkdir()
        job = application.job(request, accepted, run / "result", home or run / "home")
        if home is None:
            job = replace(job, embeddings_dir=None)
        load_before = os.getloadavg()[0]
        started, cpu = time.perf_counter(), time.process_time()
        application.model_phase(job, backend, info, work, _progress, lambda: False)
        model_s, model_cpu = time.perf_counter() - started, time.process_time() - cpu
        outcome = application.cpu_phase(job, work, _progress, lambda: False)
        t = outcome.stage_timings
        return {"part": "annotation", "run": tag, "model": model, "data": path.name, "cells": outcome.n_cells,
                "trained": bool(info.get("trained", True)), "store": home is not None,
                "model_phase_s": round(model_s, 3), "model_phase_cpu_s": round(model_cpu, 3),
                "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)], "result": str(run / "result"),
                "embedding_reference_s": t.get("embedding reference"), "embedding_query_s": t.get("embedding query"),
                "training_head_s": t.get("training head"), "stage_timings": t,
                "query_embedding_reused": outcome.provenance["embedding"].get("reused"),
                "macro_f1": outcome.metrics.get("macro_f1"), "accuracy": outcome.metrics.get("accuracy")}


_last_stage = [""]


def _progress(stage: str, done: int, total: int) -> None:
    if stage != _last_stage[0]:
        _last_stage[0] = stage
        log(f"  [{stage}]")


def reuse_part(bench: Bench, files: dict[int, Path], models: list[str], fm_cells: int) -> list[dict]:
    """First and second integration run per model and file, then annotation with the filled store and without."""
    rows = []
    for cells, path in sorted(files.items(), reverse=True):
        for model in models:
            if model in FOUNDATION and cells != fm_cells:
                continue
            home = Path(tempfile.mkdtemp(prefix=f"home-{model}-{cells}-", dir=bench.work))
            log(f"== {model} on {path.name}: first run (empty store)")
            first = emit(bench.integrate(model, path, home, "first"))
            log(f"== {model} on {path.name}: second run (store filled)")
            second = emit(bench.integrate(model, path, home, "second"))
            rows += [first, second]
            if model == "harmony" or cells != fm_cells:
                continue  # harmony does not annotate; the annotation is measured on the shared subset
            log(f"== {model} on {path.name}: annotation after the integration run (store filled)")
            rows.append(emit(bench.annotate(model, path, home, "after integration")))
            log(f"== {model} on {path.name}: annotation without the store")
            plain = bench.annotate(model, path, None, "no store")
            rows.append(emit({**plain, **same_results(rows[-1]["result"], plain["result"])}))
    return rows


def same_results(a: str, b: str) -> dict:
    """How far two annotation results differ: query embeddings (max abs difference) and calls."""
    import numpy as np
    import pandas as pd

    from inference.run_files import EMBEDDINGS, PREDICTIONS

    ea, eb = np.load(Path(a) / EMBEDDINGS), np.load(Path(b) / EMBEDDINGS)
    pa, pb = (pd.read_parquet(Path(x) / PREDICTIONS, columns=["predicted_label"])["predicted_label"] for x in (a, b))
    return {"embeddings_max_abs_diff_vs_store": float(np.abs(ea - eb).max()) if ea.shape == eb.shape else None,
            "same_calls_vs_store": float(np.mean(pa.to_numpy() == pb.to_numpy()))}


def real_part(bench: Bench, path: Path, models: list[str]) -> list[dict]:
    from inference.applications.base import ModelCannotUse

    rows = []
    for model in models:
        home = Path(tempfile.mkdtemp(prefix=f"home-{model}-real-", dir=bench.work))
        log(f"== {model} on {path.name}")
        try:
            rows.append(emit(bench.integrate(model, path, home, "real")))
        except ModelCannotUse as exc:
            rows.append(emit({"part": "integration", "run": "real", "model": model, "data": path.name,
                              "refused": str(exc)}))
    return rows


# ---------------------------------------------------------------- tables

def _f(v: object, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _who(r: dict) -> str:
    return r["model"] + ("" if r.get("trained", True) else " (untrained — means nothing)")


def _untrained(r: dict) -> str:
    return r["model"] + ("" if r.get("trained", True) else " (generated, untrained)")


def reuse_tables(rows: list[dict]) -> list[str]:
    out = ["| model | cells | model load s | first run (empty store): model phase s, CPU s (embedding / integrating "
           "s) | second run (store filled): model phase s, CPU s | second / first | reused |",
           "|---|---|---|---|---|---|---|"]
    firsts = [r for r in rows if r["part"] == "integration" and r["run"] == "first"]
    for f in firsts:
        s = next(r for r in rows if r["part"] == "integration" and r["run"] == "second" and r["model"] == f["model"]
                 and r["data"] == f["data"])
        t = f["model_phase_timings"]
        split = f"{t.get('embedding', 0):.2f}" + (f" / {t['integrating']:.2f}" if "integrating" in t else "")
        reused = ("embedding" + (" + correction" if s.get("correction_reused") else "")
                  if s["embedding_reused"] else "**no**")
        out.append(f"| {_untrained(f)} | {f['cells']:,} | {f['model_load_s']:.1f} | {f['model_phase_s']:.2f}, "
                   f"{f['model_phase_cpu_s']:.2f} ({split}) | {s['model_phase_s']:.3f}, {s['model_phase_cpu_s']:.3f} "
                   f"| **{100 * s['model_phase_s'] / f['model_phase_s']:.2f} %** | {reused} |")
    out += ["", "| model | cells | annotation without the store: embedding reference / query s | after the "
            "integration run (store filled): embedding reference / query s | query: with / without | query "
            "embedding reused | query embeddings: max abs diff | same calls | accuracy |",
            "|---|---|---|---|---|---|---|---|---|"]
    for a in (r for r in rows if r["part"] == "annotation" and r["run"] == "after integration"):
        n = next(r for r in rows if r["part"] == "annotation" and r["run"] == "no store" and r["model"] == a["model"])
        diff = n.get("embeddings_max_abs_diff_vs_store")
        out.append(f"| {_untrained(a)} | {a['cells']:,} | {_f(n['embedding_reference_s'], 2)} / "
                   f"{_f(n['embedding_query_s'], 2)} | {_f(a['embedding_reference_s'], 2)} / "
                   f"{_f(a['embedding_query_s'], 2)} | "
                   f"**{100 * a['embedding_query_s'] / n['embedding_query_s']:.1f} %** | "
                   f"{'yes' if a['query_embedding_reused'] else 'no'} | {'n/a' if diff is None else f'{diff:.1e}'} | "
                   f"{100 * n['same_calls_vs_store']:.1f} % | {_f(a['accuracy'])} |")
    return out


def metrics_table(rows: list[dict]) -> list[str]:
    out = ["| model | cells | " + " | ".join(METRICS) + " | " + " | ".join(f"**{a}**" for a in AGGREGATES) + " |",
           "|---|---|" + "---|" * (len(METRICS) + len(AGGREGATES))]
    for r in rows:
        if "refused" in r:
            out.append(f"| {r['model']} | refused by the upload check: {r['refused']} |" + " |" * (
                len(METRICS) + len(AGGREGATES) - 1))
            continue
        out.append(f"| {_who(r)} | {r['cells']:,} | " + " | ".join(_f(r["metrics"].get(m)) for m in METRICS) + " | "
                   + " | ".join(f"**{_f(r['aggregates'].get(a))}**" for a in AGGREGATES) + " |")
    return out


def harmony_check(rows: list[dict]) -> list[str]:
    """Harmony's batch correction against the baseline's on the same cells."""
    out = []
    for h in (r for r in rows if r["model"] == "harmony" and "aggregates" in r):
        b = next((r for r in rows if r["model"] == "baseline" and r.get("data") == h["data"] and "aggregates" in r),
                 None)
        if b is None:
            continue
        hb, bb = h["aggregates"]["Batch correction"], b["aggregates"]["Batch correction"]
        out.append(f"Harmony against the baseline on {h['data']} ({h['cells']:,} cells): batch correction {hb:.3f} "
                   f"vs {bb:.3f} ({'better' if hb > bb else '**not better**'}, {hb - bb:+.3f}); bio conservation "
                   f"{h['aggregates']['Bio conservation']:.3f} vs {b['aggregates']['Bio conservation']:.3f}; total "
                   f"{h['aggregates']['Total']:.3f} vs {b['aggregates']['Total']:.3f}.")
        emit({"part": "check", "data": h["data"], "cells": h["cells"], "harmony_batch_correction": hb,
              "baseline_batch_correction": bb, "harmony_better": hb > bb})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=("reuse", "real"), default=["reuse", "real"])
    p.add_argument("--models", nargs="+", default=[*CLASSICAL, *FOUNDATION],
                   choices=[*CLASSICAL, *FOUNDATION])
    p.add_argument("--cells", type=int, default=500,
                   help="cells of the 2-batch pbmc3k the foundation models (and the annotations) run on; 2700 = all")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="real", choices=["tiny", "real"], help="generated checkpoints' size")
    p.add_argument("--markdown", help="append the tables to this file")
    args = p.parse_args()

    sys.path.insert(0, str(REPO / "bench"))
    from models import ensure_weights

    OUT.mkdir(parents=True, exist_ok=True)
    weights = OUT / f"weights-{args.size}"
    if any(m in FOUNDATION for m in args.models):
        from inference.weights import DEFAULT_GENEFORMER

        ensure_weights(weights, args.size, [DEFAULT_GENEFORMER])
    began = time.perf_counter()
    lines = [f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs, "
             f"{args.device}), commit {_commit()}; command: "
             f"`{' '.join(['python bench/integration.py', *sys.argv[1:]])}`"]
    with tempfile.TemporaryDirectory(prefix="bench-integration-") as tmp:
        work = Path(tmp)
        bench = Bench(work, weights, args.device)
        if "reuse" in args.parts:
            files = {c: multibatch_file(work, c) for c in {2700, min(args.cells, 2700)}}
            files = {int(path.stem.rsplit("_", 1)[1]): path for path in files.values()}
            rows = reuse_part(bench, files, args.models, min(args.cells, 2700))
            lines += ["", "Embeddings computed once (model phase of two integration runs on the same file):", "",
                      *reuse_tables(rows), "", "(a) pbmc3k, two batches with the simulated batch effect:", "",
                      *metrics_table(firsts := [r for r in rows if r["part"] == "integration" and r["run"] == "first"]),
                      "", *harmony_check(firsts)]
        if "real" in args.parts:
            path, summary = real_multibatch_file(work)
            emit({"part": "data", "data": path.name, **summary})
            rows = real_part(bench, path, args.models)
            lines += ["", f"(b) pbmc3k + pbmc68k_reduced ({summary['cells']:,} cells on {summary['shared_genes']} "
                      "shared genes):", "", *metrics_table(rows), "", *harmony_check(rows)]
    lines += ["", f"total {time.perf_counter() - began:.0f} s"]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write(table + "\n\n")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
