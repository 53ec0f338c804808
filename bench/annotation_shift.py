"""Annotation that holds under shift: our pipeline against the plain recipe on shifted queries, novelty
(leave-one-type-out), calibration, kNN against logistic regression per model, majority voting.

    python bench/annotation_shift.py --data path/to/pbmc3k_10x.h5ad --label celltype
    python bench/annotation_shift.py --data ... --suites shift novelty --seeds 0 1

(also reachable as ``python bench/annotation.py --data ... --suite shift novelty calibration speed``).

Suites:

shift        reference = the 70 % training split; queries = the 30 % held-out cells (a) as they are, (b) with a
             simulated interferon response (``isg_shift``), (c) sequenced to 40 % depth (``depth_shift``). Our
             pipeline (baseline backend, logistic-regression and kNN heads, confidence threshold 0, cluster
             consensus on) against the plain recipe a user would write (normalize_total, log1p, the reference's
             2,000 seurat HVGs, LogisticRegression C=0.1 and C=1) and against the baseline's former features
             (the same HVGs z-scaled by the reference's mean and sd, clipped at 10; LogisticRegression C=1).
novelty      for each type T, reference = training split without T, query = all held-out cells, as they are and
             under two simulated condition shifts (the ISGs below; a response programme on 60 of the
             reference's own HVGs, x8): AUROC of
             ``1 - reference_fit`` (and of ``1 - confidence``) for T's cells against the rest, and of the simple
             alternative: the distance to the 15th nearest reference cell in the head's PCA space, as a
             percentile of the reference cells' own 15th-neighbour distances.
calibration  evaluation mode on the whole file (the pipeline's own 70/30 split): ECE before and after
             temperature scaling; accuracy and head timings of both heads.
speed        training-head and predicting seconds of both heads for Geneformer and scGPT on a small subset, with
             generated (random, untrained) real-size checkpoints: their speed is real, their accuracy means
             nothing.

Prints one JSON line per measurement and markdown tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Interferon-stimulated genes: the core ISGs of Schoggins et al., Nature 2011 ("A diverse range of gene products
# are effectors of the type I interferon antiviral response") that rise in every cell type of IFN-beta stimulated
# PBMCs (Kang et al., Nature Biotechnology 2018, the 10x "ifnb" data set: ISG15, IFI6, IFIT1-3, MX1 ...).
ISG = ("ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "MX2", "OAS1", "OAS2", "OAS3", "LY6E", "IFI44L", "IFI44",
       "ISG20", "RSAD2", "IFITM3", "IFITM1", "STAT1", "IRF7", "XAF1", "HERC5", "EPSTI1", "SAMD9L", "PLSCR1", "BST2",
       "IFI35", "CMPK2", "IFI27")
ISG_FOLD = 8.0      # median fold change per cell
ISG_SIGMA = 0.6     # lognormal spread of the fold between cells
ISG_PSEUDO = 0.3    # so genes at zero rise too
DEPTH_KEEP = 0.4    # each UMI kept with this probability
QUERIES = ("in distribution", "interferon (ISG x8)", "depth 40 %")
HEADS = ("logistic_regression", "knn")
NOVELTY_K = 15
NOVELTY_SHIFTS = ("in distribution", "interferon (ISG x8)", "response programme (60 HVGs, x8)")
PROGRAMME_GENES = 60
PROGRAMME_LOG2_FOLD = 3.0
# shift and novelty measure calls, scores and clusters, none of which depends on the UMAP (drawn after them): a
# short layout saves a minute per suite on a 2-core machine. Calibration and speed runs keep the default.
QUICK_UMAP = {"n_epochs": 20}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def emit(row: dict) -> dict:
    print(json.dumps(row, default=float), flush=True)
    return row


def _counts(a: ad.AnnData) -> sp.csr_matrix:
    return sp.csr_matrix(a.X, dtype=np.float32)


def isg_shift(cells: ad.AnnData, rng: np.random.Generator) -> tuple[ad.AnnData, list[str]]:
    """A simulated interferon response: each ISG's counts in a cell become Poisson((count + 0.3) * f), one fold f
    ~ lognormal(log 8, 0.6) per cell (the same for all ISGs of that cell: cells respond more or less strongly)."""
    out = cells.copy()
    names = list(map(str, out.var_names))
    cols = [names.index(g) for g in ISG if g in names]
    x = _counts(out).tolil()
    fold = rng.lognormal(np.log(ISG_FOLD), ISG_SIGMA, size=out.n_obs)
    block = np.asarray(x[:, cols].toarray(), dtype=np.float64)
    x[:, cols] = rng.poisson((block + ISG_PSEUDO) * fold[:, None]).astype(np.float32)
    out.X = sp.csr_matrix(x, dtype=np.float32)
    return out, [names[c] for c in cols]


def depth_shift(cells: ad.AnnData, rng: np.random.Generator, keep: float = DEPTH_KEEP) -> ad.AnnData:
    """Another lab's sequencing depth: binomial thinning of every count (each UMI kept with probability keep)."""
    out = cells.copy()
    x = _counts(out)
    x.data = rng.binomial(x.data.astype(np.int64), keep).astype(np.float32)
    x.eliminate_zeros()
    out.X = x
    return out


def write(a: ad.AnnData, path: Path):  # noqa: ANN201 - a DataInput
    from inference.counts import DataInput

    a.write_h5ad(path)
    return DataInput(str(path), path.name, sha256(path))


def run_pipeline(ref, query, out_dir: Path, head: str, label: str, seed: int, heads_dir: Path | None = None,
                 majority_voting: bool = True, backend=None, model_info: dict | None = None,  # noqa: ANN001
                 umap: dict | None = None) -> dict:
    """Our pipeline, as a run does it: reference mode when ``ref`` is given, else evaluation mode."""
    from inference.backends import create_backend
    from inference.heads import head_settings
    from inference.pipeline import AnnotationJob, run_annotation

    if backend is None:
        backend = create_backend("baseline", None, None)
        backend.load()
        model_info = backend.provenance()
    job = AnnotationJob(model_id=backend.backend, query=query, label_column=label, out_dir=str(out_dir),
                        reference=ref, truth_column=label if ref is not None else None,
                        heads_dir=str(heads_dir) if heads_dir else None, head=head_settings(head),
                        majority_voting=majority_voting, confidence_threshold=0.0, seed=seed, umap=umap)
    started = time.perf_counter()
    result = run_annotation(job, backend, model_info)
    result["seconds"] = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------------- shift


def plain_recipes(ref: ad.AnnData, queries: dict[str, ad.AnnData], label: str) -> dict[str, dict[str, dict]]:
    """What a user would write, trained on the reference, scored on each query: {recipe: {query: metrics}}."""
    import scanpy as sc
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from inference.metrics import annotation_metrics

    def lognorm(a: ad.AnnData) -> ad.AnnData:
        a = a.copy()
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
        return a

    r = lognorm(ref)
    hvg = sc.pp.highly_variable_genes(r, n_top_genes=2000, flavor="seurat", inplace=False)["highly_variable"]
    hvg = hvg.to_numpy()
    xr = r.X[:, hvg].toarray()
    yr = ref.obs[label].astype(str).to_numpy()
    xq = {name: lognorm(q).X[:, hvg].toarray() for name, q in queries.items()}
    scaler = StandardScaler().fit(xr)

    def scaled(x: np.ndarray) -> np.ndarray:
        return np.clip(scaler.transform(x), -10, 10)

    recipes = {
        "plain recipe, LogisticRegression C=0.1": (LogisticRegression(C=0.1, max_iter=2000), lambda x: x),
        "plain recipe, LogisticRegression C=1": (LogisticRegression(C=1.0, max_iter=2000), lambda x: x),
        "former baseline (z-scaled HVGs, clip 10), LogisticRegression C=1":
            (LogisticRegression(C=1.0, max_iter=2000), scaled),
    }
    out: dict[str, dict[str, dict]] = {}
    for name, (clf, transform) in recipes.items():
        started = time.perf_counter()
        clf.fit(transform(xr), yr)
        fit_s = time.perf_counter() - started
        out[name] = {q: {**annotation_metrics(queries[q].obs[label].astype(str).to_numpy(),
                                              clf.predict(transform(x))), "train_seconds": fit_s}
                     for q, x in xq.items()}
    return out


def shift_suite(adata: ad.AnnData, label: str, seeds: list[int], tmp: Path) -> list[dict]:
    from inference.pipeline import stratified_split

    rows = []
    for seed in seeds:
        held = stratified_split(adata.obs[label], 0.3, seed)
        ref_cells = adata[~held].copy()
        query = adata[held].copy()
        rng = np.random.default_rng(1000 + seed)
        isg, found = isg_shift(query, rng)
        queries = dict(zip(QUERIES, (query, isg, depth_shift(query, rng)), strict=True))
        folder = tmp / f"shift-{seed}"
        folder.mkdir()
        ref = write(ref_cells, folder / "reference.h5ad")
        inputs = {q: write(a, folder / f"query-{i}.h5ad") for i, (q, a) in enumerate(queries.items())}
        for head in HEADS:
            for q, inp in inputs.items():
                result = run_pipeline(ref, inp, folder / f"run-{head}-{QUERIES.index(q)}", head, label, seed,
                                      heads_dir=folder / "heads", umap=QUICK_UMAP)
                m = result["metrics"]
                rows.append(emit({
                    "suite": "shift", "seed": seed, "query": q, "what": f"our pipeline, baseline, {head} head",
                    "macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
                    "majority_voting_macro_f1": m["majority_voting"]["macro_f1"],
                    "majority_voting_accuracy": m["majority_voting"]["accuracy"],
                    "clusters": m["majority_voting"]["clusters"], "ece": m["calibration"]["ece"],
                    "per_class_f1": {c: round(v["f1"], 3) for c, v in m["per_class"].items()},
                    "majority_voting_per_class_f1": {c: round(v["f1"], 3)
                                                     for c, v in m["majority_voting"]["per_class"].items()},
                    "ece_before_temperature": m["calibration"].get("ece_before_temperature"),
                    "head": result["provenance"]["head"], "seconds": result["seconds"],
                    "stage_timings": result["stage_timings"], "isg_genes_found": len(found)}))
        for recipe, per_query in plain_recipes(ref_cells, queries, label).items():
            for q, m in per_query.items():
                rows.append(emit({"suite": "shift", "seed": seed, "query": q, "what": recipe,
                                  "macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
                                  "seconds": m["train_seconds"]}))
    return rows


def shift_tables(rows: list[dict]) -> str:
    rows = [r for r in rows if r["suite"] == "shift"]
    seeds = sorted({r["seed"] for r in rows})
    whats = list(dict.fromkeys(r["what"] for r in rows))

    def stat(what: str, q: str, key: str) -> tuple[float, float]:
        v = [r[key] for r in rows if r["what"] == what and r["query"] == q]
        return float(np.mean(v)), float(np.min(v))

    lines = [f"Macro-F1 then accuracy, mean (min) over split seeds {', '.join(map(str, seeds))}; every row on the "
             "same held-out cells.", "",
             "| what | " + " | ".join(f"{q}: macro-F1 | {q}: accuracy" for q in QUERIES) + " |",
             "|---|" + "---|---|" * len(QUERIES)]
    for what in whats:
        cells = []
        for q in QUERIES:
            for key in ("macro_f1", "accuracy"):
                mean, low = stat(what, q, key)
                cells.append(f"{mean:.3f} ({low:.3f})")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    lines += ["", "Ours minus the plain recipe (C=0.1 / C=1), same seed, then mean and worst over seeds; goal: "
              "never below -0.01.", "",
              "| head | query | macro-F1 vs C=0.1 | accuracy vs C=0.1 | macro-F1 vs C=1 | accuracy vs C=1 |",
              "|---|---|---|---|---|---|"]
    for head in HEADS:
        ours = f"our pipeline, baseline, {head} head"
        for q in QUERIES:
            cells = []
            for c in ("0.1", "1"):
                plain = f"plain recipe, LogisticRegression C={c}"
                for key in ("macro_f1", "accuracy"):
                    d = [next(r[key] for r in rows if r["what"] == ours and r["query"] == q and r["seed"] == s)
                         - next(r[key] for r in rows if r["what"] == plain and r["query"] == q and r["seed"] == s)
                         for s in seeds]
                    cells.append(f"{np.mean(d):+.3f} (worst {np.min(d):+.3f})")
            lines.append(f"| {head} | {q} | " + " | ".join(cells) + " |")
    lines += ["", "Cluster consensus (majority voting) against per-cell calls, macro-F1 mean (min) over seeds.", "",
              "| head | query | per cell | majority voting | clusters |", "|---|---|---|---|---|"]
    for head in HEADS:
        ours = f"our pipeline, baseline, {head} head"
        for q in QUERIES:
            sel = [r for r in rows if r["what"] == ours and r["query"] == q]
            pc, mv = [r["macro_f1"] for r in sel], [r["majority_voting_macro_f1"] for r in sel]
            lines.append(f"| {head} | {q} | {np.mean(pc):.3f} ({np.min(pc):.3f}) | {np.mean(mv):.3f} "
                         f"({np.min(mv):.3f}) | {np.mean([r['clusters'] for r in sel]):.0f} |")
    lines += ["", "Calibration under shift (logistic-regression head, ECE over the query's cells, mean over seeds).",
              "", "| query | ECE before temperature | ECE after |", "|---|---|---|"]
    for q in QUERIES:
        sel = [r for r in rows if r["what"] == "our pipeline, baseline, logistic_regression head" and r["query"] == q]
        lines.append(f"| {q} | {np.mean([r['ece_before_temperature'] for r in sel]):.3f} | "
                     f"{np.mean([r['ece'] for r in sel]):.3f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- novelty


def kth_distance_percentile(ref_coords: np.ndarray, query_coords: np.ndarray, k: int = NOVELTY_K) -> np.ndarray:
    """The query cells' distance to their k-th nearest reference cell, as the share of reference cells whose own
    k-th neighbour (themselves left out) is nearer."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(ref_coords)
    own = np.sort(nn.kneighbors(ref_coords, n_neighbors=k + 1)[0][:, k])
    query = nn.kneighbors(query_coords, n_neighbors=k)[0][:, k - 1]
    return np.searchsorted(own, query, side="left") / len(own)


def programme_shift(cells: ad.AnnData, genes: list[str], label: str, rng: np.random.Generator,
                    n_genes: int = PROGRAMME_GENES, log2_fold: float = PROGRAMME_LOG2_FOLD) -> ad.AnnData:
    """A condition's coherent response programme on genes the reference itself finds variable (as interferon-
    stimulated genes are in a reference with some basal response; the bench's ISGs are not among pbmc3k's
    HVGs): ``n_genes`` of ``genes`` (expressed in > 2 % of cells) all rise 2^(log2_fold * s), s lognormal(0, 0.4)
    per cell and twice as strong in monocytes (a ``label`` naming "Mono": they respond most to interferon)."""
    out = cells.copy()
    keys = list(map(str, out.var["gene_ids"])) if "gene_ids" in out.var else list(map(str, out.var_names))
    if not set(genes) & set(keys):
        keys = list(map(str, out.var_names))
    x = _counts(out)
    expressed = np.asarray((x > 0).mean(axis=0)).ravel() > 0.02
    position = {k: i for i, k in enumerate(keys)}
    candidates = [position[g] for g in genes if g in position and expressed[position[g]]]
    cols = rng.choice(candidates, size=min(n_genes, len(candidates)), replace=False)
    monocyte = out.obs[label].astype(str).str.contains("Mono").to_numpy()
    strength = np.where(monocyte, 2.0, 1.0) * rng.lognormal(0, 0.4, out.n_obs)
    x = x.tolil()
    block = np.asarray(x[:, cols].toarray(), dtype=np.float64)
    x[:, cols] = rng.poisson((block + 0.2) * 2.0 ** (log2_fold * strength[:, None])).astype(np.float32)
    out.X = sp.csr_matrix(x, dtype=np.float32)
    return out


def novelty_suite(adata: ad.AnnData, label: str, seeds: list[int], tmp: Path) -> list[dict]:
    """Leave one type out, on the held-out cells as they are and under two simulated condition shifts; the
    reference fit with the shared-shift allowance (what runs give) and without it (the score before issue 39)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from inference.backends import create_backend
    from inference.heads import Head
    from inference.pipeline import stratified_split
    from inference.run_files import PREDICTIONS, head_file

    rows = []
    types = sorted(adata.obs[label].astype(str).unique())
    for seed in seeds:
        held = stratified_split(adata.obs[label], 0.3, seed)
        folder = tmp / f"novelty-{seed}"
        folder.mkdir()
        held_cells = adata[held].copy()
        query = write(held_cells, folder / "query.h5ad")
        train = adata[~held]
        for i, t in enumerate(types):
            ref_cells = train[train.obs[label].astype(str) != t].copy()
            ref = write(ref_cells, folder / f"reference-{i}.h5ad")
            out = folder / f"run-{i}"
            result = run_pipeline(ref, query, out, "logistic_regression", label, seed, heads_dir=folder / "heads",
                                  majority_voting=False, umap=QUICK_UMAP)
            table = pd.read_parquet(out / PREDICTIONS)
            head = Head.load(head_file(folder / "heads", result["provenance"]["head"]["cache_key"]))
            backend = create_backend("baseline", None, None)
            backend.set_state(head.extra)
            ref_coords = head.space.project(backend.head_input(ref_cells))
            shifted = {"in distribution": held_cells,
                       NOVELTY_SHIFTS[1]: isg_shift(held_cells, np.random.default_rng(1000 + seed))[0],
                       NOVELTY_SHIFTS[2]: programme_shift(held_cells, [str(g) for g in head.extra["genes"]], label,
                                                          np.random.default_rng(2000 + seed))}
            for name, cells in shifted.items():
                proba, coords = head.classify(backend.head_input(cells))
                called = proba.argmax(axis=1)
                fit, info = head.fit.score_query(coords, called)
                if name == "in distribution":  # the bench's score is the run's
                    assert np.allclose(fit, table["reference_fit"].to_numpy(), atol=1e-6)
                one_cell, _ = head.fit.score_query(coords, called, neighbours=1)  # the cell alone
                before = head.fit.score(coords, called)
                novel = (cells.obs[label].astype(str) == t).to_numpy()
                knn = kth_distance_percentile(ref_coords, head.space.project(backend.head_input(cells)))
                rows.append(emit({
                    "suite": "novelty", "seed": seed, "left_out": t, "query": name, "novel_cells": int(novel.sum()),
                    "known_correct": float(np.mean(head.classes[called][~novel] == cells.obs[label].astype(str)
                                                   .to_numpy()[~novel])),
                    "auroc_reference_fit": roc_auc_score(novel, 1 - fit),
                    "auroc_reference_fit_before": roc_auc_score(novel, 1 - before),
                    "auroc_one_cell": roc_auc_score(novel, 1 - one_cell),
                    "flagged_one_cell_novel": float(np.mean(one_cell[novel] < 0.05)),
                    "flagged_one_cell_known": float(np.mean(one_cell[~novel] < 0.05)),
                    "auroc_confidence": roc_auc_score(novel, 1 - proba.max(axis=1)),
                    "auroc_knn_distance": roc_auc_score(novel, knn),
                    "flagged_at_0.05_novel": float(np.mean(fit[novel] < 0.05)),
                    "flagged_at_0.05_known": float(np.mean(fit[~novel] < 0.05)),
                    "flagged_before_novel": float(np.mean(before[novel] < 0.05)),
                    "flagged_before_known": float(np.mean(before[~novel] < 0.05)),
                    "shift": info, "seconds": result["seconds"]}))
    return rows


def novelty_table(rows: list[dict]) -> str:
    rows = [r for r in rows if r["suite"] == "novelty"]
    seeds = sorted({r["seed"] for r in rows})
    keys = ("auroc_reference_fit", "auroc_one_cell", "auroc_reference_fit_before", "flagged_at_0.05_novel",
            "flagged_at_0.05_known", "flagged_one_cell_novel", "flagged_one_cell_known", "flagged_before_novel",
            "flagged_before_known", "auroc_confidence", "auroc_knn_distance")
    lines = [f"Leave one type out, split seeds {', '.join(map(str, seeds))}: mean over the seeds (the lower seed's "
             "mean in brackets on the mean rows). Flagged: share of cells with a score < 0.05. reference_fit: "
             "what runs give (the shared-shift allowance; the cell alone and the median of its 10 nearest of the "
             "same call, each against held-out reference distances, the smaller share doubled); 'one cell': the "
             "cell alone; 'before': neither the allowance nor the held-out yardstick.", "",
             "| query | left-out type | its cells | AUROC reference_fit | AUROC one cell | AUROC before | flagged "
             "left-out | flagged known | flagged left-out, one cell | flagged known, one cell | flagged left-out, "
             "before | flagged known, before | AUROC 1 - confidence | AUROC 15th-neighbour |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    types = list(dict.fromkeys(r["left_out"] for r in rows))
    for q in dict.fromkeys(r["query"] for r in rows):
        at = [r for r in rows if r["query"] == q]
        for t in types + ["mean"]:
            sel = at if t == "mean" else [r for r in at if r["left_out"] == t]
            cells = []
            for k in keys:
                if t == "mean":
                    per_seed = [np.mean([r[k] for r in sel if r["seed"] == s]) for s in seeds]
                    cells.append(f"**{np.mean(per_seed):.3f}** ({np.min(per_seed):.3f})")
                else:
                    cells.append(f"{np.mean([r[k] for r in sel]):.3f}")
            n = "" if t == "mean" else f"{np.mean([r['novel_cells'] for r in sel]):.0f}"
            lines.append(f"| {q} | {t} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- calibration


def calibration_suite(path: Path, label: str, seeds: list[int], tmp: Path) -> list[dict]:
    from inference.counts import DataInput

    rows = []
    inp = DataInput(str(path), path.name, sha256(path))
    for seed in seeds:
        for head in HEADS:
            result = run_pipeline(None, inp, tmp / f"calibration-{seed}-{head}", head, label, seed,
                                  majority_voting=False)
            m, t = result["metrics"], result["stage_timings"]
            rows.append(emit({
                "suite": "calibration", "seed": seed, "head": head, "macro_f1": m["macro_f1"],
                "accuracy": m["accuracy"], "ece": m["calibration"]["ece"],
                "ece_before_temperature": m["calibration"].get("ece_before_temperature"),
                "temperature": m["calibration"].get("temperature"), "training_head_s": t.get("training head"),
                "predicting_s": t.get("predicting"), "seconds": result["seconds"], "stage_timings": t}))
    return rows


def calibration_table(rows: list[dict]) -> str:
    rows = [r for r in rows if r["suite"] == "calibration"]
    lines = ["| head | seed | macro-F1 | accuracy | temperature | ECE before temperature | ECE after |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        before = "n/a" if r["ece_before_temperature"] is None else f"{r['ece_before_temperature']:.3f}"
        temp = "n/a" if r["temperature"] is None else f"{r['temperature']:.2f}"
        lines.append(f"| {r['head']} | {r['seed']} | {r['macro_f1']:.3f} | {r['accuracy']:.3f} | {temp} | {before} | "
                     f"{r['ece']:.3f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- speed


def speed_suite(adata: ad.AnnData, label: str, cells: int, tmp: Path, models: list[str]) -> list[dict]:
    from inference.backends import create_backend
    from inference.checkpoints import generate
    from inference.weights import WeightsError, WeightsLocations

    weights = REPO / "bench" / "out" / "weights-real"
    loc = WeightsLocations(staged=tmp / "none", generated=weights, helical_cache=tmp / "none")
    variants = {"geneformer": "gf-6L-10M-i2048", "scgpt": None}
    try:
        for m in models:
            loc.resolve(m, variants[m] or "whole-human", verify=False)
    except WeightsError:
        print(f"generating real-size untrained checkpoints in {weights}", file=sys.stderr, flush=True)
        generate(weights, "real", ["gf-6L-10M-i2048"], scgpt="scgpt" in models)
    rng = np.random.default_rng(0)
    subset = adata[np.sort(rng.choice(adata.n_obs, size=min(cells, adata.n_obs), replace=False))].copy()
    path = tmp / "speed.h5ad"
    inp = write(subset, path)
    rows = []
    for model in models:
        backend = create_backend(model, variants[model], loc, device="cpu")
        started = time.perf_counter()
        backend.load()
        load_s = time.perf_counter() - started
        for head in HEADS:
            result = run_pipeline(None, inp, tmp / f"speed-{model}-{head}",
                                  head, label, 0, majority_voting=False, backend=backend,
                                  model_info=backend.provenance())
            t = result["stage_timings"]
            rows.append(emit({
                "suite": "speed", "model": model, "weights": "generated, untrained", "head": head, "cells": cells,
                "reference_cells": result["provenance"]["head"]["reference_cells"],
                "dims": int(np.load(tmp / f"speed-{model}-{head}" / "embeddings.npy", mmap_mode="r").shape[1]),
                "training_head_s": t.get("training head"), "predicting_s": t.get("predicting"),
                "embedding_s": t.get("embedding reference", 0) + t.get("embedding query", 0),
                "load_s": load_s, "seconds": result["seconds"], "macro_f1_meaningless": result["metrics"]["macro_f1"],
                "stage_timings": t}))
    return rows


def speed_table(rows: list[dict]) -> str:
    lines = ["| model (weights) | head | cells (reference / query) | embedding dims | embedding s | training head s "
             "| predicting s | accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["suite"] == "calibration":
            t = r["stage_timings"]
            embedding = t.get("embedding reference", 0) + t.get("embedding query", 0)
            lines.append(f"| baseline (fitted on the reference) | {r['head']} (seed {r['seed']}) | 1,890 / 2,700 | "
                         f"2,000 | {embedding:.2f} | {r['training_head_s']:.2f} | {r['predicting_s']:.3f} | "
                         f"{r['accuracy']:.3f} |")
        elif r["suite"] == "speed":
            lines.append(f"| {r['model']} (generated, untrained) | {r['head']} | {r['reference_cells']} / {r['cells']}"
                         f" | {r['dims']} | {r['embedding_s']:.1f} | {r['training_head_s']:.2f} | "
                         f"{r['predicting_s']:.3f} | meaningless |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main

SUITES = ("shift", "novelty", "calibration", "speed")


def run_suites(data: Path, label: str, suites: list[str], seeds: list[int], novelty_seeds: list[int],
               speed_cells: int, speed_models: list[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    adata = ad.read_h5ad(data)
    rows: list[dict] = []
    timings = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for suite in suites:
            started = time.perf_counter()
            if suite == "shift":
                rows += shift_suite(adata, label, seeds, tmp)
            elif suite == "novelty":
                rows += novelty_suite(adata, label, novelty_seeds, tmp)
            elif suite == "calibration":
                rows += calibration_suite(data, label, seeds, tmp)
            elif suite == "speed":
                rows += speed_suite(adata, label, speed_cells, tmp, speed_models)
            timings[suite] = round(time.perf_counter() - started, 1)
            emit({"suite_done": suite, "seconds": timings[suite]})
    if "shift" in suites:
        print("\n## Shift\n\n" + shift_tables(rows))
    if "novelty" in suites:
        print("\n## Novelty (leave one type out)\n\n" + novelty_table(rows))
    if "calibration" in suites:
        print("\n## Calibration (evaluation mode, whole file)\n\n" + calibration_table(rows))
    if "calibration" in suites or "speed" in suites:
        print("\n## Heads per model\n\n" + speed_table(rows))
    print("\nsuite seconds: " + json.dumps(timings))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds (shift, calibration)")
    p.add_argument("--novelty-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--speed-cells", type=int, default=40, help="cells of the foundation models' speed subset")
    p.add_argument("--speed-models", nargs="+", default=["geneformer", "scgpt"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a labelled .h5ad with raw counts")
    p.add_argument("--label", default="celltype")
    p.add_argument("--suites", nargs="+", choices=SUITES, default=list(SUITES))
    add_arguments(p)
    args = p.parse_args()
    run_suites(Path(args.data), args.label, args.suites, args.seeds, args.novelty_seeds, args.speed_cells,
               args.speed_models)


if __name__ == "__main__":
    main()
