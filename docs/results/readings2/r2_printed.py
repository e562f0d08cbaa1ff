"""Table 1's claims on the seed-0 parts printed in docs/results/vae_readings.md (five key rows), under R2
(reconstruction only) and as reported: the directions one seed can give."""
from collapse.report.scorecard import judge, paper_rows
from collapse.tasks.vae_claims import CLAIMS
R = {"(b) gaussian": (1.0, dict(best=(0.01300, 0.00643), l0=(0.01291, 0.00641), b0=(0.01329, 0.00627),
                               g0=(0.01398, 0.00553), M1=(0.01447, 0.00501))),
     "(c) kl 0.1": (0.1, dict(best=(0.06587, 0.05237), l0=(0.06688, 0.05262), b0=(0.06766, 0.05319),
                             g0=(0.06525, 0.05152), M1=(0.06766, 0.05307))),
     "(d) var": (1.0, dict(best=(0.07834, 0.02379), l0=(0.07857, 0.02394), b0=(0.07951, 0.02380),
                          g0=(0.07974, 0.02244), M1=(0.08059, 0.02339)))}
paper = paper_rows("vae", CLAIMS, "test_loss")
for name, (w, d) in R.items():
    for label, f in (("reported", lambda r, kl: r + w * kl), ("R2 recon only", lambda r, kl: r)):
        e = judge(CLAIMS, {None: {0: {k: f(*v) for k, v in d.items()}}}, {None: paper})
        way = {}
        for x in e:
            way.setdefault(x["claim"].name, []).append(x.get("inside"))
        print(f"{name:14s} {label:14s}", " ".join(f"{c}:{'n/a' if None in v else '+' if all(v) else '-'}" for c, v in way.items() if c.startswith("F")),
              "| kept within 0.25:", sum(all(v) for c, v in way.items() if c.startswith("kept") and None not in v), "of",
              sum(1 for c, v in way.items() if c.startswith("kept") and None not in v))
