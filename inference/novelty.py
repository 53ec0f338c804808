""""Fits the reference": how typical a query cell is of the reference cells of the type it is called, allowing for
a condition shift that moves the whole query.

For every head the same score, in the top 10 principal components of the reference's embedding: the Mahalanobis
distance of the cell from its called type's reference cells (a shrunk covariance per type, Ledoit-Wolf; Lee et
al., 2018), read two ways against the type's own reference cells.
- **The cell alone**: the share of the type's reference cells at least as far (each measured from a fit without
  it: see ``_held_out_distance``).
- **Its neighbourhood**: the median distance of the cell and its 9 nearest query cells called the same type,
  against the same median over groups of the type's reference cells (``_null_neighbourhoods``).

``reference_fit`` is the smaller of the two shares, doubled (capped at 1; Bonferroni: the two readings together
still put about 5 % of a type's own cells below 0.05). 1 is the type's centre, 0 is beyond every reference cell
of it. Below 0.05, the cell, or the neighbourhood it sits in, lies further from its type than 97.5 % of the
reference's: one the reference does not explain.

Why both: a type the reference lacks is a group of cells, and one cell's distance is noisy; the median of a
neighbourhood tells the group, and one odd cell cannot drag its neighbours (a mean did: one cell 20 SD out put
its 3 neighbours below 0.02). The cell alone still catches an isolated odd cell, which the median would hide.
Leave-one-type-out on pbmc3k (2 seeds, 8 types, 810 held-out cells; docs/BENCHMARKS.md): mean AUROC for the
absent type 0.947 in distribution (0.904 for the cell alone) and 0.864 under a simulated response programme
(0.839); the absent type's cells below 0.05: 76 % (51 %) and 74 % (59 %); known cells below 0.05: 3.3 % (3.3 %)
and 15.7 % (12.4 %). A cell's score depends on the query it came in, as the shift allowance below does too.

A condition shift (stimulated, diseased or perturbed cells mapped onto a healthy reference) moves every type of
the query the same way, more in some cells than others: scored as it is, every shifted cell would look novel
(with a simulated response programme, 20-28 % of known cells below 0.05 instead of 4 %; real interferon-
stimulated PBMCs 94-97 %). So the query's shared shift is estimated and allowed for: each called type's median
offset from its reference mean, and their median across types (robust to a type the reference lacks, whose cells
pull only the type they are called). The distance is then the smallest over any movement along that direction
(so each cell may respond more or less strongly), for the reference's cells and the query's alike. A type the
reference lacks differs in directions of its own and stays far. Measured leave-one-type-out with simulated shifts
in docs/BENCHMARKS.md. Too few called types (< 3 with 10 cells) to tell a shared shift: no allowance, and the
run's provenance says so.

Why not the distance to the k-th reference neighbour, as a percentile of all reference cells: measured leave-one-
type-out on pbmc3k it ranks novel cells worse (mean AUROC 0.77-0.79, against 0.91 for one cell's Mahalanobis
distance and 0.95 for its neighbourhood's) because compact types (T cells) and diffuse ones (monocytes) share one
yardstick. Why 10 components: for one cell's distance, with 20 the mean AUROC was 0.877/0.902 (seeds 0/1), with
50 0.826/0.852, with 10 0.907/0.918; a per-type covariance is estimated from few cells, and fewer dimensions keep
it sound (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np

FIT_COMPONENTS = 10
MIN_CLASS_CELLS = 5  # smaller types borrow the covariance pooled over all types
SHIFT_MIN_CELLS = 10  # a called type's median offset counts towards the shared shift from this many cells
SHIFT_MIN_TYPES = 3  # fewer such types cannot tell a shared shift from one type's own difference
NEIGHBOURS = 10  # the cell and its 9 nearest of the same call: the neighbourhood whose median distance is read
FOLDS = 10  # the reference cells' own distances: each from a fit without its tenth of the type


class ReferenceFit:
    def __init__(self, classes: np.ndarray, means: np.ndarray, precisions: np.ndarray, distances: np.ndarray,
                 offsets: np.ndarray, points: np.ndarray | None = None) -> None:
        self.classes, self.means, self.precisions = classes, means, precisions
        self.distances, self.offsets = distances, offsets  # each type's reference distances, sorted, end to end
        self.points = points  # the reference cells in the fit's space, type after type (None: a head from before)

    @classmethod
    def train(cls, coords: np.ndarray, labels: np.ndarray) -> ReferenceFit:
        """``coords``: the reference in the head's PCA space (its first ``FIT_COMPONENTS`` columns are used)."""
        from sklearn.covariance import LedoitWolf

        x = np.asarray(coords[:, :FIT_COMPONENTS], dtype=np.float64)
        classes = np.unique(np.asarray(labels).astype(str))
        means = np.stack([x[labels == c].mean(axis=0) for c in classes])
        residuals = np.concatenate([x[labels == c] - means[i] for i, c in enumerate(classes)])
        pooled = LedoitWolf(assume_centered=True).fit(residuals).precision_
        precisions, distances, offsets, points = [], [], [0], []
        for i, c in enumerate(classes):
            own = x[labels == c]
            precision = (LedoitWolf().fit(own).precision_ if len(own) >= MIN_CLASS_CELLS else pooled)
            precisions.append(precision)
            order = np.argsort(_mahalanobis(own, means[i], precision), kind="stable")
            points.append(own[order])
            distances.append(_mahalanobis(own[order], means[i], precision))
            offsets.append(offsets[-1] + len(own))
        return cls(classes, means, np.stack(precisions), np.concatenate(distances), np.array(offsets),
                   np.concatenate(points).astype(np.float32))

    @property
    def components(self) -> int:
        return int(self.means.shape[1])

    def shared_shift(self, coords: np.ndarray, called: np.ndarray) -> tuple[np.ndarray | None, dict]:
        """The query's shared shift (a unit direction in the fit's space, or None) and what was found, in words
        and figures for the run's provenance."""
        x = np.asarray(coords[:, :self.components], dtype=np.float64)
        offsets, sizes = [], []
        for i in np.unique(called):
            m = called == i
            if m.sum() >= SHIFT_MIN_CELLS:
                offset = np.median(x[m] - self.means[i], axis=0)
                offsets.append(offset)
        if self.points is None:
            return None, {"condition_shift": "not allowed for: this head was saved before the reference fit kept "
                                             "its reference cells"}
        if len(offsets) < SHIFT_MIN_TYPES:
            return None, {"condition_shift": f"not allowed for: {len(offsets)} called type(s) with at least "
                                             f"{SHIFT_MIN_CELLS} cells, {SHIFT_MIN_TYPES} needed to tell a shared "
                                             "shift"}
        shift = np.median(np.stack(offsets), axis=0)
        norm = float(np.linalg.norm(shift))
        if norm == 0.0:
            return None, {"condition_shift": "none found"}
        for i in np.unique(called):
            sizes.append(float(np.sqrt(max(shift @ self.precisions[i] @ shift, 0.0))))
        return shift / norm, {"condition_shift": "allowed for along the query's shared direction",
                              "types_estimating_it": len(offsets),
                              "shift_in_type_sd": round(float(np.median(sizes)), 3)}

    def score_query(self, coords: np.ndarray, called: np.ndarray,
                    neighbours: int = NEIGHBOURS) -> tuple[np.ndarray, dict]:
        """``reference_fit`` of a whole query (all its cells at once: the shared shift and the neighbourhoods are
        the query's), and how the shift was allowed for. ``neighbours=1`` scores each cell alone (the bench's
        comparison). A head saved before the fit kept its reference cells has neither the allowance nor
        reference neighbourhoods (``score``)."""
        direction, info = self.shared_shift(coords, called)
        if self.points is None:
            return self.score(coords, called), info
        x = np.asarray(coords[:, :self.components], dtype=np.float64)
        out = np.zeros(len(x), dtype=np.float32)
        points = self.points.astype(np.float64)
        for i in np.unique(called):
            m = called == i
            ref = points[self.offsets[i]:self.offsets[i + 1]]
            ref_d, d = self._held_out_distance(ref, i, direction), self._distance(x[m], i, direction)
            alone = _share_at_least(np.sort(ref_d), d)
            k = max(1, min(neighbours, int(m.sum()), len(ref)))
            if k == 1:
                out[m] = alone
                continue
            null = np.sort(_null_neighbourhoods(ref, ref_d, k, int(m.sum())))
            around = _share_at_least(null, _neighbourhood_median(x[m], d, k))
            out[m] = np.minimum(1.0, 2.0 * np.minimum(alone, around))
        return out, {**info, "neighbourhood": f"the cell alone, and with its {neighbours - 1} nearest of the same "
                                              "call (the smaller share, doubled)"}

    def _distance(self, x: np.ndarray, i: int, direction: np.ndarray | None, mean: np.ndarray | None = None,
                  precision: np.ndarray | None = None) -> np.ndarray:
        mean = self.means[i] if mean is None else mean
        precision = self.precisions[i] if precision is None else precision
        if direction is None:
            return _mahalanobis(x, mean, precision)
        return _along_free(x - mean, precision, direction)

    def _held_out_distance(self, ref: np.ndarray, i: int, direction: np.ndarray | None) -> np.ndarray:
        """Type ``i``'s reference cells' distances, each from the mean and covariance of the type's other cells
        (``FOLDS``-fold): a query cell was not in the fit it is measured against, so neither is its yardstick.
        In-sample distances are shorter (the fit has seen the cell), most for small types in many dimensions, and
        a neighbourhood's median, being less noisy than one cell's distance, shows that bias: scored in-sample, a
        4-cell query group of a 15-cell reference type fell below 0.02 whole."""
        from sklearn.covariance import LedoitWolf

        n = len(ref)
        if n < 2:
            return self._distance(ref, i, direction)
        folds = np.arange(n) % min(FOLDS, n)  # the points are stored by distance: each fold takes near and far
        out = np.empty(n)
        for f in range(min(FOLDS, n)):
            held = folds == f
            rest = ref[~held]
            own = n >= MIN_CLASS_CELLS and len(rest) >= MIN_CLASS_CELLS  # as trained: own covariance, or pooled
            precision = LedoitWolf().fit(rest).precision_ if own else self.precisions[i]
            out[held] = self._distance(ref[held], i, direction, rest.mean(axis=0), precision)
        return out

    def score(self, coords: np.ndarray, called: np.ndarray) -> np.ndarray:
        """``reference_fit`` in [0, 1] for query cells in the PCA space, each against ``called`` (class index),
        with no allowance for a shift. Uses as many components as it was trained with (a head cached by an
        earlier version keeps working)."""
        x = np.asarray(coords[:, :self.means.shape[1]], dtype=np.float64)
        out = np.zeros(len(x), dtype=np.float32)
        for i in np.unique(called):
            m = called == i
            own = self.distances[self.offsets[i]:self.offsets[i + 1]]
            d = _mahalanobis(x[m], self.means[i], self.precisions[i])
            out[m] = 1.0 - np.searchsorted(own, d, side="left") / len(own)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"classes": self.classes, "means": self.means, "precisions": self.precisions,
               "distances": self.distances, "offsets": self.offsets}
        return out if self.points is None else {**out, "points": self.points}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> ReferenceFit:
        return cls(a["classes"], a["means"], a["precisions"], a["distances"], a["offsets"], a.get("points"))


def _mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = x - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))


def _null_neighbourhoods(ref: np.ndarray, d: np.ndarray, k: int, n_query: int) -> np.ndarray:
    """The reference's neighbourhood medians as the query's are taken: among as many cells as the query's group
    has. Fewer cells lie further apart, so their k nearest span more of the type; a 4-cell query group is compared
    with random 4-cell groups of the reference, not with the reference's tightest 4-cell neighbourhoods. Seeded
    subsamples, together at least as many as the reference's cells (at most 20)."""
    if k <= 1 or n_query >= len(ref):
        return _neighbourhood_median(ref, d, k)
    rng = np.random.default_rng(0)
    draws = min(20, -(-len(ref) // n_query))
    parts = []
    for _ in range(draws):
        pick = rng.choice(len(ref), n_query, replace=False)
        parts.append(_neighbourhood_median(ref[pick], d[pick], k))
    return np.concatenate(parts)


def _neighbourhood_median(x: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    """The median of each point's ``d`` and its ``k - 1`` nearest others' (Euclidean, in the fit's space)."""
    if k <= 1:
        return d
    from sklearn.neighbors import NearestNeighbors

    neighbours = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x, return_distance=False)
    return np.median(d[neighbours], axis=1)


def _share_at_least(sorted_null: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The share of ``sorted_null`` at or beyond each of ``d``."""
    return 1.0 - np.searchsorted(sorted_null, d, side="left") / len(sorted_null)


def _along_free(residuals: np.ndarray, precision: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The Mahalanobis length of each residual minimised over any movement along ``direction``:
    min_a (r - a u)' P (r - a u) = r' P r - (u' P r)^2 / (u' P u)."""
    full = np.einsum("ij,jk,ik->i", residuals, precision, residuals)
    pu = precision @ direction
    along = (residuals @ pu) ** 2 / max(float(direction @ pu), 1e-12)
    return np.sqrt(np.maximum(full - along, 0.0))
