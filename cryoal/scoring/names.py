"""The scheme names, in the registry's order, importable without torch (the CLI's help text and
option checks read them; `registry.SCHEMES` is built in this order and checked against it)."""

SCORE_SCHEMES = ("expected", "entropy", "random", "max-entropy", "margin", "least-confidence", "bald")
BATCH_SCHEMES = ("coreset", "badge")  # choose a whole batch (diversity), not a score per sample
SCHEME_NAMES = SCORE_SCHEMES + BATCH_SCHEMES

__all__ = ["BATCH_SCHEMES", "SCHEME_NAMES", "SCORE_SCHEMES"]
