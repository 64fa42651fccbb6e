"""Class templates: macromolecule-like densities built from pseudo-atoms (Gaussian blobs).

Each class is an asymmetric unit of globular domains (clusters of pseudo-atoms filling an
ellipsoid) copied by the class's point group (C2 ... D7, T, O, I) or helical rule. Shapes depend
only on the class index, never on the user's --seed, so every simulated set shares the same
classes; the seed changes poses and noise. Coordinates are in Å, centred on the centre of mass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cryoal.simulate.rotations import axis_angle

# A fixed offset so that class shapes do not share random streams with anything seeded by users.
_SHAPE_SEED = 20_240_917
_PHI = (1 + 5**0.5) / 2


@dataclass(frozen=True)
class ClassShape:
    """One class: pseudo-atom centres (A, 3) in Å (x, y, z), widths (A,) in Å and masses (A,)."""

    name: str
    symmetry: str
    positions: np.ndarray
    sigmas: np.ndarray
    weights: np.ndarray

    @property
    def radius(self) -> float:
        """Radius in Å of the sphere holding the density out to two blob widths."""
        return float(np.max(np.linalg.norm(self.positions, axis=1) + 2 * self.sigmas))

    @property
    def n_atoms(self) -> int:
        """Number of pseudo-atoms."""
        return len(self.positions)


# ---------------------------------------------------------------- point groups


def _closure(generators: list[np.ndarray], order: int) -> np.ndarray:
    """All products of the generators (a finite rotation group), as (order, 3, 3)."""
    group = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for g in frontier:
            for h in generators:
                m = h @ g
                if not any(np.allclose(m, x, atol=1e-8) for x in group):
                    group.append(m)
                    new.append(m)
        frontier = new
    if len(group) != order:  # a wrong generator would silently give another group
        raise AssertionError(f"point group closure gave {len(group)} elements, expected {order}")
    return np.stack(group)


@functools.cache
def point_group(symmetry: str) -> np.ndarray:
    """Rotation matrices (G, 3, 3) of a point group: 'C<n>', 'D<n>' (n-fold axis z), 'T', 'O' or 'I'."""
    s = symmetry.upper()
    if s[0] in "CD" and s[1:].isdigit():
        n = int(s[1:])
        cyclic = np.stack([axis_angle([0, 0, 1], 2 * np.pi * k / n) for k in range(n)])
        if s[0] == "C":
            return cyclic
        flip = axis_angle([1, 0, 0], np.pi)  # two-fold axis along x, perpendicular to the n-fold axis
        return np.concatenate([cyclic, flip[None] @ cyclic])
    three = axis_angle([1, 1, 1], 2 * np.pi / 3)
    if s == "T":
        return _closure([three, axis_angle([0, 0, 1], np.pi)], 12)
    if s == "O":
        return _closure([three, axis_angle([0, 0, 1], np.pi / 2)], 24)
    if s == "I":
        return _closure([three, axis_angle([0, 1, _PHI], 2 * np.pi / 5)], 60)
    raise ValueError(f"unknown point group {symmetry!r}")


# ---------------------------------------------------------------- building blocks


@dataclass
class _Atoms:
    positions: list[np.ndarray]
    sigmas: list[np.ndarray]

    def add(self, pos: np.ndarray, sigma: float) -> None:
        self.positions.append(pos)
        self.sigmas.append(np.full(len(pos), sigma))


def _domain(
    rng: np.random.Generator, centre, radii, n: int, sigma: float, tilt: np.ndarray | None = None
) -> np.ndarray:
    """`n` pseudo-atoms spread evenly inside an ellipsoid (greedy farthest-apart sampling)."""
    radii = np.asarray(radii, dtype=np.float64)
    cand = rng.uniform(-1, 1, (40 * n + 40, 3))
    cand = cand[np.sum(cand**2, axis=1) <= 1.0] * radii
    # farthest-point sampling: compact, evenly filled domains without lumps or holes
    chosen = [int(np.argmin(np.sum(cand**2, axis=1)))]
    dist = np.linalg.norm(cand - cand[chosen[0]], axis=1)
    while len(chosen) < n:
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(cand - cand[i], axis=1))
    pts = cand[chosen]
    if tilt is not None:
        pts = pts @ tilt.T
    return pts + np.asarray(centre, dtype=np.float64)


def _symmetrise(unit: _Atoms, symmetry: str) -> _Atoms:
    ops = point_group(symmetry)
    pos = np.concatenate(unit.positions)
    sig = np.concatenate(unit.sigmas)
    return _Atoms([np.concatenate([pos @ g.T for g in ops])], [np.tile(sig, len(ops))])


def _finish(name: str, symmetry: str, atoms: _Atoms) -> ClassShape:
    pos = np.concatenate(atoms.positions)
    sig = np.concatenate(atoms.sigmas)
    weights = (sig / 10.0) ** 3  # each blob stands for a volume ~ sigma^3: uniform protein density
    pos = pos - (weights[:, None] * pos).sum(0) / weights.sum()  # centre of mass at the origin
    return ClassShape(name, symmetry, pos, sig, weights)


def _unit() -> _Atoms:
    return _Atoms([], [])


# ---------------------------------------------------------------- the class library


def _ring_c6(rng):
    u = _unit()
    u.add(_domain(rng, (48, 0, 0), (20, 16, 18), 7, 8.0), 8.0)
    u.add(_domain(rng, (62, 0, 16), (8, 8, 8), 2, 7.0), 7.0)
    return "C6", _symmetrise(u, "C6")


def _dimer_c2(rng):
    u = _unit()
    u.add(_domain(rng, (30, 6, 0), (34, 20, 22), 14, 9.0, axis_angle([0, 0, 1], 0.5)), 9.0)
    u.add(_domain(rng, (50, -20, 16), (12, 12, 12), 3, 8.0), 8.0)
    return "C2", _symmetrise(u, "C2")


def _trimer_c3(rng):
    u = _unit()
    u.add(_domain(rng, (16, 0, -22), (12, 12, 45), 8, 8.0), 8.0)
    u.add(_domain(rng, (24, 4, 40), (24, 18, 20), 8, 8.0), 8.0)
    return "C3", _symmetrise(u, "C3")


def _tetramer_d2(rng):
    u = _unit()
    u.add(_domain(rng, (26, 22, 20), (22, 18, 20), 8, 9.0), 9.0)
    return "D2", _symmetrise(u, "D2")


def _proteasome_d7(rng):
    u = _unit()
    u.add(_domain(rng, (46, 0, 38), (13, 12, 10), 2, 8.0), 8.0)  # outer (alpha) ring
    u.add(_domain(rng, (44, 0, 13), (14, 13, 11), 2, 8.0), 8.0)  # inner (beta) ring
    return "D7", _symmetrise(u, "D7")


def _ribosome_c1(rng):
    u = _unit()
    u.add(_domain(rng, (0, 0, -18), (70, 60, 52), 40, 13.0), 13.0)  # large subunit
    u.add(_domain(rng, (12, -6, 56), (56, 32, 30), 12, 11.0), 11.0)  # small subunit
    u.add(_domain(rng, (-62, 24, 30), (9, 9, 26), 3, 8.0), 8.0)  # stalk
    return "C1", u


def _filament(rng):
    # an actin-like helix: 27.5 Å rise and 166 degree twist per subunit, cut to 8 subunits
    sub = _domain(rng, (22, 0, 0), (18, 16, 14), 4, 8.0)
    u = _unit()
    for k in range(8):
        turn = axis_angle([0, 0, 1], np.deg2rad(166.15) * k)
        u.add(sub @ turn.T + np.array([0, 0, 27.5 * (k - 3.5)]), 8.0)
    return "helical", u


def _cage_o(rng):
    u = _unit()
    direction = np.array([0.3, 0.5, 0.81]) / np.linalg.norm([0.3, 0.5, 0.81])
    u.add(_domain(rng, 52 * direction, (14, 12, 12), 3, 8.0), 8.0)
    return "O", _symmetrise(u, "O")


def _hexamer_d3(rng):
    u = _unit()
    u.add(_domain(rng, (34, 0, 22), (20, 18, 16), 7, 8.0), 8.0)
    return "D3", _symmetrise(u, "D3")


def _channel_c5(rng):
    u = _unit()
    u.add(_domain(rng, (30, 0, 10), (11, 11, 48), 8, 8.0, axis_angle([1, 0, 0], 0.35)), 8.0)
    u.add(_domain(rng, (40, 10, -52), (16, 14, 12), 4, 8.0), 8.0)
    return "C5", _symmetrise(u, "C5")


def _capsid_i(rng):
    u = _unit()
    direction = np.array([0.2, 0.4, 0.89]) / np.linalg.norm([0.2, 0.4, 0.89])
    u.add(_domain(rng, 105 * direction, (12, 10, 9), 2, 9.0), 9.0)
    return "I", _symmetrise(u, "I")


def _cage_t(rng):
    u = _unit()
    direction = np.array([0.7, 0.2, 0.4]) / np.linalg.norm([0.7, 0.2, 0.4])
    u.add(_domain(rng, 45 * direction, (16, 14, 14), 4, 8.0), 8.0)
    return "T", _symmetrise(u, "T")


def _lshape_c1(rng):
    u = _unit()
    u.add(_domain(rng, (0, 0, 0), (28, 18, 16), 8, 8.0), 8.0)
    u.add(_domain(rng, (30, 38, 0), (14, 26, 16), 6, 8.0), 8.0)
    return "C1", u


_LIBRARY = (
    ("ring_c6", _ring_c6),
    ("dimer_c2", _dimer_c2),
    ("trimer_c3", _trimer_c3),
    ("tetramer_d2", _tetramer_d2),
    ("proteasome_d7", _proteasome_d7),
    ("ribosome_c1", _ribosome_c1),
    ("filament", _filament),
    ("cage_o", _cage_o),
    ("hexamer_d3", _hexamer_d3),
    ("channel_c5", _channel_c5),
    ("capsid_i", _capsid_i),
    ("cage_t", _cage_t),
    ("lshape_c1", _lshape_c1),
)
_PROCEDURAL_SYMMETRIES = ("C1", "C2", "C3", "C4", "C5", "C6", "D2", "D3", "D4")


def _procedural(index: int, rng: np.random.Generator) -> tuple[str, str, _Atoms]:
    """Classes beyond the named library: 1-3 random domains under a cyclic or dihedral group."""
    sym = _PROCEDURAL_SYMMETRIES[index % len(_PROCEDURAL_SYMMETRIES)]
    n_ops = len(point_group(sym))
    budget = max(3, 36 // n_ops)  # keep the atom count (render cost) modest
    u = _unit()
    for _ in range(int(rng.integers(1, 4))):
        off = 0.0 if sym == "C1" else rng.uniform(18, 45)
        centre = (off, rng.uniform(-15, 15), rng.uniform(-35, 35))
        radii = rng.uniform(10, 28, 3)
        u.add(_domain(rng, centre, radii, int(rng.integers(3, budget + 1)), 8.0), 8.0)
    return f"blob{index}_{sym.lower()}", sym, _symmetrise(u, sym) if sym != "C1" else u


@functools.cache
def class_shape(index: int) -> ClassShape:
    """The template of class `index` (0-based). Deterministic; independent of any user seed."""
    if index < 0:
        raise ValueError(f"class index must be >= 0, got {index}")
    rng = np.random.default_rng([_SHAPE_SEED, index])
    if index < len(_LIBRARY):
        name, build = _LIBRARY[index]
        sym, atoms = build(rng)
    else:
        name, sym, atoms = _procedural(index, rng)
    return _finish(name, sym, atoms)


def class_names(n_classes: int) -> list[str]:
    """Readable names of the first `n_classes` classes (used as labels in truth.csv)."""
    return [class_shape(i).name for i in range(n_classes)]


N_NAMED_CLASSES = len(_LIBRARY)
