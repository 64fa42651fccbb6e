"""Picks in the pool's embedding: TypiClust and the cluster quotas that spread any score's batch.

Both start from k-means of the embeddings of the labelled particles and the candidates into
`labelled + n` clusters (TypiClust, Hacohen et al., "Active Learning on a Budget", ICML 2022),
capped at `MAX_CLUSTERS` as TypiClust's own code does (k-means cost grows with the cluster count,
and a budget of hundreds of labels is past the low-budget regime TypiClust is for).

Clusters are visited in quota order: each next pick comes from the cluster holding the fewest
labelled-or-picked particles, ties to the larger cluster, then to the lower cluster number. So
the first picks go to the uncovered clusters, largest first (TypiClust's order), and when `n`
exceeds the uncovered clusters the picks go round again. Inside a cluster the particles are
taken in the order of a key: typicality for TypiClust, the score (or its power draw) for the
embedding-aware picks of `cryoal.scoring.picks`.

The visit order depends only on the clusters' sizes and labelled counts, so how many picks each
cluster gets is known before any key is computed: typicality (a k-nearest-neighbour search
inside the cluster) is computed only for the clusters that receive a pick.
"""

from __future__ import annotations

import warnings

import numpy as np

MAX_CLUSTERS = 500
K_NEIGHBOURS = 20
_KMEANS_STREAM = 5  # SeedSequence([seed, 5]): the k-means initialisation (picks.py uses 4)


def kmeans_seed(seed: int | None) -> int | None:
    """The k-means random_state that `seed` stands for (None: not reproducible)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, _KMEANS_STREAM]).generate_state(1)[0] % (2**31))


def n_clusters_for(n_labelled: int, n: int, n_points: int) -> int:
    """TypiClust's cluster count: labelled + n, at most MAX_CLUSTERS and at most the points."""
    return max(1, min(n_labelled + n, MAX_CLUSTERS, n_points))


def kmeans_labels(features: np.ndarray, n_clusters: int, random_state: int | None) -> np.ndarray:
    """Cluster number of each row of `features` (scikit-learn's KMeans, k-means++ start)."""
    from sklearn.cluster import KMeans

    x = np.asarray(features, dtype=np.float64)
    if n_clusters <= 1:
        return np.zeros(len(x), dtype=np.int64)
    with warnings.catch_warnings():  # fewer distinct points than clusters: some clusters are duplicates
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=n_clusters, random_state=random_state, n_init="auto")
        return km.fit_predict(x).astype(np.int64)


def typicality(features: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    """1 / mean Euclidean distance to each row's k nearest other rows (k = min(k, rows - 1)).

    A single row has typicality 1, as in scikit-activeml's TypiClust; 1e-7 is added to the
    distance sum (the same guard) so duplicates give a large finite value.
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(features, dtype=np.float64)
    if len(x) == 1:
        return np.ones(1)
    k = min(k, len(x) - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return k / (dist.sum(axis=1) + 1e-7)  # the row itself is its own first neighbour, at 0


def cluster_quotas(clusters: np.ndarray, labelled_mask: np.ndarray, n: int,
                   n_clusters: int) -> np.ndarray:
    """(n_clusters,) picks per cluster for the first `n` picks in quota order (see the module)."""
    order = _visit_order(clusters, labelled_mask, n_clusters)
    quotas = np.zeros(n_clusters, dtype=np.int64)
    np.add.at(quotas, order[:n, 0], 1)
    return quotas


def _visit_order(clusters: np.ndarray, labelled_mask: np.ndarray, n_clusters: int) -> np.ndarray:
    """(M, 2) rows (cluster, j) for every candidate slot, in visit order: slot j of cluster c is
    taken when c holds labelled_c + j, and the greedy "fewest first" visit is the sort of those
    counts (each cluster's counts increase with j, so the greedy merge equals one global sort)."""
    clusters = np.asarray(clusters)
    lab = np.asarray(labelled_mask, dtype=bool)
    size = np.bincount(clusters, minlength=n_clusters)
    n_lab = np.bincount(clusters[lab], minlength=n_clusters)
    n_cand = size - n_lab
    c = np.repeat(np.arange(n_clusters), n_cand)
    j = np.arange(c.size) - np.repeat(np.cumsum(n_cand) - n_cand, n_cand)
    order = np.lexsort((c, -size[c], n_lab[c] + j))
    return np.stack([c[order], j[order]], axis=1)


def quota_order(clusters: np.ndarray, labelled_mask: np.ndarray, keys: dict[int, np.ndarray],
                n: int, n_clusters: int) -> np.ndarray:
    """The first `n` candidate rows (indices into `clusters`) in quota order.

    `keys[c]` ranks cluster c's candidates (rows `flatnonzero((clusters == c) & ~labelled)`, in
    that order; higher first, ties to the lower row, NaN last); it is needed only for the
    clusters with a nonzero quota.
    """
    lab = np.asarray(labelled_mask, dtype=bool)
    visits = _visit_order(clusters, lab, n_clusters)[:n]
    ranked: dict[int, np.ndarray] = {}
    out = np.empty(len(visits), dtype=np.int64)
    for pos, (c, j) in enumerate(visits):
        if c not in ranked:
            rows = np.flatnonzero((clusters == c) & ~lab)
            key = np.where(np.isnan(keys[c]), -np.inf, keys[c])
            ranked[c] = rows[np.lexsort((rows, -key))]
        out[pos] = ranked[c][j]
    return out


def typiclust_order(features: np.ndarray, labelled_mask: np.ndarray, n: int, k: int = K_NEIGHBOURS,
                    seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """TypiClust: (order, typicality) of the first `n` unlabelled rows of `features` to label.

    `features` (M, E) holds the labelled and the candidate rows, `labelled_mask` (M,) marks the
    labelled ones; `n == 0` orders every candidate. Deterministic for a given `seed`.
    """
    x = np.asarray(features, dtype=np.float64)
    lab = np.asarray(labelled_mask, dtype=bool)
    n = n or int((~lab).sum())
    n_clusters = n_clusters_for(int(lab.sum()), n, len(x))
    clusters = kmeans_labels(x, n_clusters, kmeans_seed(seed))
    quotas = cluster_quotas(clusters, lab, n, n_clusters)
    typ = np.full(len(x), np.nan)
    keys = {}
    for c in np.flatnonzero(quotas):
        members = np.flatnonzero(clusters == c)  # labelled members count towards density
        typ[members] = typicality(x[members], k)
        keys[int(c)] = typ[members[~lab[members]]]
    order = quota_order(clusters, lab, keys, n, n_clusters)
    return order, typ[order]


def cluster_pick_order(keys: np.ndarray, features: np.ndarray, labelled_features: np.ndarray | None,
                       n: int, seed: int | None = 0) -> np.ndarray:
    """The first `n` candidates (all when 0) in quota order, each cluster's taken by `keys`.

    `keys` (N,) rank the candidates inside their cluster, higher first (ties to the lower
    position: pass ranks when ties must follow another rule); `features` (N, E) are the
    candidates' embeddings, `labelled_features` (L, E) the labelled particles' (they cover their
    clusters). k-means runs on both, into `labelled + n` clusters (`n_clusters_for`).
    """
    cand = np.asarray(features, dtype=np.float64)
    lab_x = np.zeros((0, cand.shape[1])) if labelled_features is None else np.asarray(labelled_features,
                                                                                        dtype=np.float64)
    x = np.concatenate([cand, lab_x])
    lab = np.arange(len(x)) >= len(cand)  # candidates first: their rows are their positions
    n = n or len(cand)
    n_clusters = n_clusters_for(len(lab_x), n, len(x))
    clusters = kmeans_labels(x, n_clusters, kmeans_seed(seed))
    keys = np.asarray(keys, dtype=np.float64)
    by_cluster = {int(c): keys[clusters[: len(cand)] == c] for c in np.flatnonzero(
        cluster_quotas(clusters, lab, n, n_clusters))}
    return quota_order(clusters, lab, by_cluster, n, n_clusters)


__all__ = ["K_NEIGHBOURS", "MAX_CLUSTERS", "cluster_pick_order", "cluster_quotas", "kmeans_labels",
           "kmeans_seed", "n_clusters_for", "quota_order", "typicality", "typiclust_order"]
