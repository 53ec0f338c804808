"""The baseline through our pipeline (evaluation mode) against plain scanpy + scikit-learn on the same split.

    python bench/annotation.py --data path/to/pbmc3k_10x.h5ad --label celltype

(the 10x Genomics 3k PBMCs with cell-type labels; this project's benchmark used the copy of its shared data,
see docs/BENCHMARKS.md).

Also compares the two candidate classifier heads (logistic regression, a small MLP as in helical's
Cell-Type-Annotation notebook) on the same features. Prints JSON lines and a markdown table.

Annotation under shift, novelty, calibration and the heads per model (bench/annotation_shift.py):

    python bench/annotation.py --data path/to/pbmc3k_10x.h5ad --label celltype --suite shift novelty calibration
    python bench/annotation.py --data ... --suite speed

(``--suite heads`` is the comparison above, the default.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
from annotation_shift import SUITES, add_arguments, run_suites


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plain_scanpy(adata: ad.AnnData, labels: np.ndarray, held: np.ndarray) -> dict:
    """normalize_total, log1p, HVG on the training cells, LogisticRegression: what a user would write."""
    import scanpy as sc
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    started = time.perf_counter()
    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    hvg = sc.pp.highly_variable_genes(a[~held].copy(), n_top_genes=2000, flavor="seurat", inplace=False)
    x = a.X[:, hvg["highly_variable"].to_numpy()]
    clf = LogisticRegression(max_iter=2000).fit(x[~held], labels[~held])
    pred = clf.predict(x[held])
    return {"macro_f1": f1_score(labels[held], pred, average="macro"),
            "accuracy": float(np.mean(pred == labels[held])), "seconds": time.perf_counter() - started}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a labelled .h5ad with raw counts")
    p.add_argument("--label", default="celltype")
    p.add_argument("--threshold", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--suite", nargs="+", choices=("heads", *SUITES), default=["heads"],
                   help="heads: this comparison; the others: bench/annotation_shift.py")
    add_arguments(p)
    args = p.parse_args()
    others = [s for s in args.suite if s != "heads"]
    if "heads" in args.suite:
        heads(args)
    if others:
        run_suites(Path(args.data), args.label, others, args.seeds, args.novelty_seeds, args.speed_cells,
                   args.speed_models)


def heads(args: argparse.Namespace) -> None:
    from sklearn.metrics import f1_score
    from sklearn.neural_network import MLPClassifier

    from inference.backends import create_backend
    from inference.heads import Head
    from inference.pipeline import AnnotationJob, DataInput, run_annotation, stratified_split

    path = Path(args.data)
    adata = ad.read_h5ad(path)
    labels = adata.obs[args.label].astype(str).to_numpy()
    held = stratified_split(adata.obs[args.label], 0.3, 0)
    rows = []
    for threshold in args.threshold:
        with tempfile.TemporaryDirectory() as tmp:
            backend = create_backend("baseline", None, None)
            backend.load()
            job = AnnotationJob(model_id="baseline", query=DataInput(str(path), path.name, sha256(path)),
                                label_column=args.label, out_dir=f"{tmp}/run", confidence_threshold=threshold)
            started = time.perf_counter()
            result = run_annotation(job, backend, {"checksum": "baseline", "trained": True})
            rows.append({"what": f"our pipeline, baseline, confidence threshold {threshold}",
                         "macro_f1": result["metrics"]["macro_f1"], "accuracy": result["metrics"]["accuracy"],
                         "seconds": time.perf_counter() - started,
                         "stage_timings": result["stage_timings"]})
            print(json.dumps(rows[-1]), flush=True)
    plain = plain_scanpy(adata, labels, held)
    rows.append({"what": "plain scanpy + scikit-learn LogisticRegression", **plain})
    print(json.dumps(rows[-1]), flush=True)
    # head choice on the same features
    backend = create_backend("baseline", None, None)
    backend.fit(adata[~held].copy())
    feats = backend.embed(adata).for_head
    for name, make in (("logistic regression head", lambda: Head.train(feats[~held], labels[~held], {})),
                       ("MLP head (128 hidden, as helical's notebook)",
                        lambda: MLPClassifier(hidden_layer_sizes=(128,), max_iter=300, random_state=0)
                        .fit(feats[~held], labels[~held]))):
        started = time.perf_counter()
        model = make()
        seconds = time.perf_counter() - started
        pred = (model.classes[model.predict_proba(feats[held]).argmax(1)] if isinstance(model, Head)
                else model.predict(feats[held]))
        rows.append({"what": name + " on the baseline's features", "macro_f1": f1_score(labels[held], pred,
                     average="macro"), "accuracy": float(np.mean(pred == labels[held])), "seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| what | macro-F1 | accuracy | seconds |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['macro_f1']:.3f} | {r['accuracy']:.3f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
