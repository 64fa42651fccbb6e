"""`exact_float32`: scoring and prediction run with TF32 off and leave the caller's flags as they were."""

from __future__ import annotations

import torch

from cryoal.learn.device import exact_float32


def _flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def test_tf32_is_off_inside_and_restored_after_even_on_error():
    saved = _flags()
    seen = []

    @exact_float32()
    def inner(fail: bool) -> None:
        seen.append(_flags())
        if fail:
            raise RuntimeError("boom")

    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        inner(False)
        try:
            inner(True)
        except RuntimeError:
            pass
        assert seen == [(False, False), (False, False)]
        assert _flags() == (True, True)
        with exact_float32():  # nested use keeps the outer state
            with exact_float32():
                assert _flags() == (False, False)
            assert _flags() == (False, False)
        assert _flags() == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _guard_of(fn) -> object | None:
    """The exact_float32 instance a decorated function closes over, if any."""
    for cell in fn.__closure__ or ():
        if isinstance(cell.cell_contents, exact_float32):
            return cell.cell_contents
    return None


def test_the_scoring_and_prediction_entry_points_are_guarded(monkeypatch):
    """The engine, `cryoal.score` and the pool-level select/predict run under the guard; `score`
    is also checked by behaviour: the flags seen inside it are off."""
    from cryoal import predict, select
    from cryoal.scoring import api, gradnorm

    for fn in (gradnorm.gradnorm_scores, api.score, select.select_pool, predict.predict_pool,
               predict.predict_masks):
        assert _guard_of(fn) is not None, fn.__qualname__

    seen = []

    def spy(name):
        seen.append(_flags())
        raise LookupError(name)

    monkeypatch.setattr(api, "get_scheme", spy)
    saved = _flags()
    torch.backends.cudnn.allow_tf32 = True
    try:
        try:
            api.score(torch.nn.Identity(), torch.zeros(1, 1, 2, 2, 2), "expected")
        except LookupError:
            pass
        assert seen == [(False, False)] and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
