"""The random views of self-supervised pretraining keep the missing wedge where physics puts it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoal.modes.views import ViewSettings, cone_free_noise, missing_cone, random_view, rotate_in_plane

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BOX = 16


def wedge_masked_volumes(n: int, seed: int = 0, tilt_deg: float = 60.0) -> torch.Tensor:
    """Smooth random blobs near the centre, with the +-tilt wedge (tilt axis y) removed: (n, 1, D, H, W)."""
    g = np.random.default_rng(seed)
    c = np.arange(BOX) - BOX / 2
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    vols = []
    for _ in range(n):
        v = np.zeros((BOX,) * 3)
        for _ in range(4):
            z0, y0, x0 = g.uniform(-3, 3, 3)
            v += np.exp(-((zz - z0) ** 2 + (yy - y0) ** 2 + (xx - x0) ** 2) / (2 * g.uniform(1.0, 2.0) ** 2))
        kz = np.fft.fftfreq(BOX)[:, None, None]
        kx = np.fft.fftfreq(BOX)[None, None, :]
        wedge = np.abs(kz) > math.tan(math.radians(tilt_deg)) * np.abs(kx)
        f = np.fft.fftn(v)
        f[np.broadcast_to(wedge, f.shape)] = 0
        vols.append(np.fft.ifftn(f).real)
    x = torch.tensor(np.stack(vols), dtype=torch.float32).unsqueeze(1)
    return (x - x.mean()) / x.std()


def cone_power_share(x: torch.Tensor) -> torch.Tensor:
    """Per volume: share of the (non-DC) Fourier power that lies in the missing cone."""
    power = torch.fft.fftn(x[:, 0].double(), dim=(-3, -2, -1)).abs() ** 2
    power[:, 0, 0, 0] = 0
    cone = missing_cone((BOX,) * 3)
    return power[:, cone].sum(1) / power.flatten(1).sum(1)


def test_shapes_dtype_and_seed_determinism():
    x = wedge_masked_volumes(3)
    a = random_view(x, torch.Generator().manual_seed(5))
    b = random_view(x, torch.Generator().manual_seed(5))
    c = random_view(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_quarter_turn_in_plane_equals_rot90():
    x = torch.randn(2, 1, 5, BOX, BOX, generator=torch.Generator().manual_seed(0))
    turned = rotate_in_plane(x, torch.full((2,), math.pi / 2))
    # the slow, obvious reference: rot90 over (H, W); interior only (bilinear reads 0 past the edge)
    for k in (1, 3):
        ref = torch.rot90(x, k, dims=(3, 4))
        if torch.allclose(turned[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-4):
            break
    else:
        raise AssertionError("a 90-degree in-plane rotation is not a quarter turn of (H, W)")
    # and it never mixes z slices: a volume with one non-zero slice keeps it alone
    one = torch.zeros(1, 1, 5, BOX, BOX)
    one[0, 0, 2] = torch.randn(BOX, BOX)
    out = rotate_in_plane(one, torch.tensor([0.3]))
    assert out[0, 0, [0, 1, 3, 4]].abs().max() == 0 and out[0, 0, 2].abs().max() > 0


def test_missing_cone_stays_empty_after_every_transform():
    x = wedge_masked_volumes(6)
    assert cone_power_share(x).max() < 1e-12  # the physics of the input: nothing measured there
    settings = {
        "rot90/flip/shift": ViewSettings(rotate=False, noise=0.0, scale=(1.0, 1.0)),
        "in-plane rotation": ViewSettings(max_shift=0, noise=0.0, scale=(1.0, 1.0)),
        "noise": ViewSettings(max_shift=0, rotate=False, noise=1.0, scale=(1.0, 1.0)),
        "scale": ViewSettings(max_shift=0, rotate=False, noise=0.0),
        "all": ViewSettings(),
    }
    for name, s in settings.items():
        for seed in range(4):
            v = random_view(x, torch.Generator().manual_seed(seed), s)
            # interpolation near the box edge leaks a little; real wedges hold ~30% of the power
            assert cone_power_share(v).max() < 3e-3, name


def test_a_tilting_rotation_fills_the_cone():
    # the negative control: the same measure catches a rotation that tilts the wedge off kz
    x = wedge_masked_volumes(4)
    tilted = torch.rot90(x, 1, dims=(2, 3))  # 90 degrees about x: z goes to y
    assert cone_power_share(tilted).min() > 0.02


def test_noise_is_cone_free_and_unit_std():
    n = cone_free_noise((4, 1, BOX, BOX, BOX), torch.Generator().manual_seed(0))
    assert abs(float(n.std()) - 1) < 1e-4
    assert cone_power_share(n).max() < 1e-12
    # statistically white outside the cone: mean power per kept frequency is even in |k|
    power = torch.fft.fftn(n[:, 0].double(), dim=(-3, -2, -1)).abs() ** 2
    kept = ~missing_cone((BOX,) * 3)
    kept[0, 0, 0] = False
    k = torch.sqrt(sum(f**2 for f in torch.meshgrid(*(torch.fft.fftfreq(BOX),) * 3, indexing="ij")))
    low, high = power[:, kept & (k < 0.25)].mean(), power[:, kept & (k >= 0.25)].mean()
    assert 0.8 < float(low / high) < 1.25


def test_intensity_scale_and_noise_level_follow_settings():
    x = wedge_masked_volumes(64, seed=1)
    v = random_view(x, torch.Generator().manual_seed(0), ViewSettings(max_shift=0, rotate=False, noise=0.0))
    ratio = (v.flatten(1).std(1) / x.flatten(1).std(1)).numpy()
    assert ratio.min() >= 0.8 - 1e-5 and ratio.max() <= 1.25 + 1e-5
    assert ratio.std() > 0.05  # really drawn, not one fixed factor
    quiet = random_view(x, torch.Generator().manual_seed(0), ViewSettings(max_shift=0, rotate=False,
                                                                          noise=0.0, scale=(1.0, 1.0)))
    # no noise, no scaling: only quarter turns and flips, which permute the voxels
    torch.testing.assert_close(quiet.flatten(1).sort(1).values, x.flatten(1).sort(1).values, rtol=0, atol=0)
