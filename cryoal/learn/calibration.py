"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

One scalar T > 0 divides the logits before the softmax: p = softmax(z / T). `cryoal train` fits T
on its validation split after early stopping (minimum negative log-likelihood; the argmax, hence
accuracy, is unchanged) and stores it in the checkpoint. `select`, `predict` and every baseline use
softmax(z / T) wherever they turn logits into probabilities, and the gradient-norm schemes take the
gradients of the losses of z / T (so `expected` = sum_c p_c ||grad CE(z/T, c)||).

The temperature travels with the model object as the attribute `cryoal_temperature` (a plain float,
not a buffer, so the state dict and the parameter set stay what they are); `temperature_of` reads it
(1.0 when absent).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

ATTRIBUTE = "cryoal_temperature"
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))  # T in [0.05, 20]: far outside is a broken fit
Logits = TypeVar("Logits", np.ndarray, torch.Tensor)


def temperature_of(model: nn.Module) -> float:
    """The model's fitted temperature (1.0: uncalibrated)."""
    return float(getattr(model, ATTRIBUTE, 1.0))


def set_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """Attach `temperature` to the model (returned for chaining). ValueError unless finite and > 0."""
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    setattr(model, ATTRIBUTE, t)
    return model


def apply_temperature(logits: Logits, temperature: float) -> Logits:
    """The calibrated logits z / T, of the type and dtype given (a tensor or an array): the one
    place where the temperature meets the logits."""
    return logits / temperature


def calibrated_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(z / T) over the class axis (1) in float64, for (B, C) or per-pixel (B, C, *S) logits."""
    return torch.softmax(apply_temperature(logits.double(), temperature), dim=1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (N, C) logits, float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    logp = log_softmax(apply_temperature(np.asarray(logits, dtype=np.float64), temperature))
    y = np.asarray(labels, dtype=np.int64)
    return float(-logp[np.arange(y.size), y].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the NLL of `labels` under softmax(logits / T), T in [0.05, 20].

    A 1-D bounded search on log T (the NLL is smooth and, in practice, unimodal in log T). With no
    samples, or logits that carry no information (all equal), returns 1.0.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0 or z.ndim != 2 or np.ptp(z, axis=1).max(initial=0.0) == 0.0:
        return 1.0
    res = minimize_scalar(lambda lt: nll(z, y, math.exp(lt)), bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


def confidence_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE from each prediction's confidence and whether it was right: the sum over equal-width
    bins [k/bins, (k+1)/bins) of |accuracy - mean confidence| x the bin's share. NaN if empty."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if conf.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(ok[m].mean() - conf[m].mean())
    return float(ece)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of (N, C) probabilities against the true labels (`confidence_ece` of the top class)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    return confidence_ece(p.max(axis=1), p.argmax(axis=1) == y, bins) if y.size else float("nan")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax(logits / temperature), float64."""
    return np.exp(log_softmax(apply_temperature(np.asarray(logits, dtype=np.float64), temperature)))


def calibration_report(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """NLL and ECE of (logits, labels) before (T = 1) and after temperature scaling."""
    return {
        "temperature": float(temperature),
        "nll_before": nll(logits, labels, 1.0), "nll_after": nll(logits, labels, temperature),
        "ece_before": expected_calibration_error(softmax(logits), labels),
        "ece_after": expected_calibration_error(softmax(logits, temperature), labels),
    }


# Below this many validation particles T is not fitted: the fit follows a handful of confident
# mistakes (T = 2.7 was seen fitted on 4 particles) and the ECE it is judged by is noise.
MIN_CALIBRATION_PARTICLES = 20
# 95 % quantile of chi-squared with 1 degree of freedom: the likelihood-ratio test's threshold
CHI2_1_95 = 3.841458820694124


def decide_temperature(logits: np.ndarray, labels: np.ndarray, *,
                       min_particles: int = MIN_CALIBRATION_PARTICLES,
                       critical: float = CHI2_1_95) -> dict[str, Any]:
    """Whether to keep a temperature fitted on the validation split, and why; T = 1 otherwise.

    With fewer than `min_particles` validation particles T stays 1. Otherwise T is fitted (the
    minimum NLL) and kept only if it lowers the NLL by more than fitting one free number would by
    chance: fitting T on the same particles always lowers their NLL, even when the raw softmax is
    already calibrated. Under that null hypothesis (T = 1 is right) the likelihood ratio
    2 n (NLL(1) - NLL(T)) follows a chi-squared law with one degree of freedom (Wilks' theorem),
    so T is kept when it exceeds `critical` (3.84: the test rejects T = 1 at the 5 % level), i.e.
    when the NLL drops by more than 1.92 / n nats per particle (0.096 at n = 20, 0.019 at 100).
    At most 5 % of calibrated models get a needless T, and a clearly over- or under-confident
    model keeps its T from a few dozen particles on.

    Returns a JSON-ready dict: `temperature` (the one to use), `applied`, `fitted_temperature`
    (None when not fitted), `reason`, `n_val`, `nll_before` (T = 1), `nll_fitted`, `nll_after`
    (at `temperature`), `ece_before`, `ece_after`, `likelihood_ratio`.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n = int(y.size)
    out: dict[str, Any] = {"temperature": 1.0, "applied": False, "fitted_temperature": None,
                           "reason": "", "n_val": n}
    if n == 0:
        return {**out, "reason": "no validation particles"}
    out.update(nll_before=nll(z, y), ece_before=expected_calibration_error(softmax(z), y))
    if n < min_particles:
        out.update(nll_after=out["nll_before"], ece_after=out["ece_before"])
        reason = f"only {n} validation particles (fewer than {min_particles}): too few to fit a temperature"
        return {**out, "reason": reason}
    t = fit_temperature(z, y)
    fitted = nll(z, y, t)
    ratio = 2.0 * n * (out["nll_before"] - fitted)
    out.update(fitted_temperature=t, nll_fitted=fitted, likelihood_ratio=ratio)
    if ratio > critical:
        out.update(temperature=t, applied=True, nll_after=fitted, ece_after=expected_calibration_error(
            softmax(z, t), y))
        out["reason"] = (f"T = {t:.3g} lowers the validation NLL by {out['nll_before'] - fitted:.3f} "
                         f"(more than chance, {critical / (2 * n):.3f}, on {n} particles)")
        return out
    out.update(nll_after=out["nll_before"], ece_after=out["ece_before"])
    out["reason"] = (f"the fitted T = {t:.3g} lowers the validation NLL by only "
                     f"{out['nll_before'] - fitted:.3f}, no more than chance ({critical / (2 * n):.3f} "
                     f"on {n} particles)")
    return out


__all__ = ["ATTRIBUTE", "CHI2_1_95", "MIN_CALIBRATION_PARTICLES", "apply_temperature", "calibrated_softmax",
           "calibration_report", "confidence_ece", "decide_temperature", "expected_calibration_error",
           "fit_temperature", "nll", "set_temperature", "softmax", "temperature_of"]
