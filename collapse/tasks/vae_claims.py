"""Table 1's claims as checks (collapse/report/scorecard.py), as the Table 1 audit words them (F1-F6), and
each row's kept fraction (row - M1) / (best - M1) within +- 0.25 of the paper's. Statistics are in % of
M1 (F1, F2) or of the best row (the costs), one seed's rows at a time."""
import statistics

from collapse.report.scorecard import Claim, Claims, Part, kept, pct

ROWS = {"M1": (0, 0, 0), "best": (0.5, 1, 1),
        "l1": (1, 1, 1), "l075": (0.75, 1, 1), "l025": (0.25, 1, 1), "l0": (0, 1, 1),
        "b2": (0.5, 2, 1), "b15": (0.5, 1.5, 1), "b05": (0.5, 0.5, 1), "b0": (0.5, 0, 1),
        "g2": (0.5, 1, 2), "g15": (0.5, 1, 1.5), "g075": (0.5, 1, 0.75), "g05": (0.5, 1, 0.5),
        "g025": (0.5, 1, 0.25), "g0": (0.5, 1, 0)}
SHOWN = {"l1": "lambda 1", "l075": "lambda 0.75", "l025": "lambda 0.25", "l0": "lambda 0", "b2": "beta 2",
         "b15": "beta 1.5", "b05": "beta 0.5", "b0": "beta 0", "g2": "gamma 2", "g15": "gamma 1.5",
         "g075": "gamma 0.75", "g05": "gamma 0.5", "g025": "gamma 0.25", "g0": "gamma 0"}
FLAT = ("g025", "g05", "g075", "best", "g15", "g2")   # the gamma in [0.25, 2] rows (best: gamma 1)
KEPT_TOLERANCE = 0.25


def cost(v, row: str) -> float:
    """`row` against the best row, % of the best row: what setting one coefficient of it costs."""
    return pct(v[row], v["best"])


def flat(v) -> list[float]:
    """The gamma in [0.25, 2] rows a seed has; at least the best row and gamma 0.25."""
    got = [v[k] for k in FLAT if k in v]
    v["best"], v["g025"]   # noqa: B018 -- a KeyError names the row missing
    return got


def jump(v) -> float:
    return pct(v["g0"], statistics.fmean(flat(v)))


def spread(v) -> float:
    return pct(max(flat(v)), min(flat(v)))


CLAIMS = Claims(
    rows={name: dict(zip(("lam", "beta", "gamma"), map(float, c))) for name, c in ROWS.items()},
    claims=(
        Claim("F1", "the best row (lambda 0.5, beta 1, gamma 1) is below M1",
              (Part("best vs M1, % of M1", lambda v: pct(v["best"], v["M1"]), "<"),)),
        Claim("F2", "beta = 0 is worse than M1",
              (Part("beta 0 vs M1, % of M1", lambda v: pct(v["b0"], v["M1"]), ">"),)),
        Claim("F3", "setting beta, gamma, lambda to 0 costs beta > gamma > lambda, the beta and gamma costs > 0",
              (Part("cost of beta 0 - cost of gamma 0, % of best", lambda v: cost(v, "b0") - cost(v, "g0"), ">"),
               Part("cost of gamma 0 - cost of lambda 0, % of best", lambda v: cost(v, "g0") - cost(v, "l0"), ">"),
               Part("cost of gamma 0, % of best", lambda v: cost(v, "g0"), ">"))),
        Claim("F4", "gamma = 0 is worse than the mean of the gamma in [0.25, 2] rows, whose range is under half that jump",
              (Part("gamma 0 vs the mean of gamma in [0.25, 2], %", jump, ">"),
               Part("range of gamma in [0.25, 2] - half the jump, %", lambda v: spread(v) - jump(v) / 2, "<"))),
        Claim("F5", "lambda = 1 is worse than lambda = 0.5, and lambda = 0 keeps >= 0.85 of the best row's gain",
              (Part("lambda 1 vs best, % of best", lambda v: cost(v, "l1"), ">"),
               Part("kept fraction of lambda 0", lambda v: kept(v, "l0"), ">", bound=0.85))),
        Claim("F6", "beta = 0.5 is worse than beta = 1",
              (Part("beta 0.5 vs best, % of best", lambda v: cost(v, "b05"), ">"),)),
        *(Claim(f"kept {SHOWN[r]}", f"{SHOWN[r]} keeps the paper's share of the best row's gain, +- {KEPT_TOLERANCE}",
                (Part(f"kept fraction (row - M1) / (best - M1), {SHOWN[r]}", lambda v, r=r: kept(v, r), "near",
                      tolerance=KEPT_TOLERANCE),))
          for r in SHOWN),
    ))
