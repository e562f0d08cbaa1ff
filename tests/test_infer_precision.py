"""infer.precision: the smoke VAE, DDPM and T5, trained briefly here, sample and evaluate in bf16 autocast
and in fp32 on the CPU, and their metrics agree within the tolerances stated below; the metric networks
(Inception, GPT-2) stay fp32 inside a bf16 block; a set precision enters the synth and eval keys, auto
does not; an eval stage records the precision it ran in.

Measured here (2 CPU cores, the smoke models): L_M(Test) differs by < 0.01% (VAE, T5) and 0.03% (DDPM),
FID by 0.03% and KID by 0.1% (32 samples), perplexity by 0.2%, ROUGE not at all.
"""
import math

import pytest
import torch

from collapse import infer, kinds, run, storage, tasks, train
from collapse.config import to_dict
from collapse.grid import load_sweep
from collapse.metrics.fid import InceptionFeatures
from collapse.plan import build

# bf16 against fp32: relative tolerances, and ROUGE points
LOSS_RTOL = 1e-3          # L_M(Test): the loss is computed in fp32 from bf16 outputs
METRIC_RTOL = 0.01        # FID, KID, perplexity: the samples they score differ a little
ROUGE_POINTS = 1.0        # ROUGE-1/2/L (%): one changed token of 32 summaries moves it less than this
GRIDS = {"vae": ("vae_coeffs", []), "ddpm": ("ddpm_lambda", []),
         "t5": ("t5_lambda", ["train.steps=150", "eval.curve_articles=0"])}   # pretraining is a stage of its own


def smoke_config(task: str, *extra: str):
    grid, more = GRIDS[task]
    return load_sweep([f"grid={grid}", "profile=smoke", "cluster=local", *more, *extra]).points[0].config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """task -> (cfg, the smoke teacher trained here, a folder for its eval's cache)."""
    torch.set_num_threads(1)
    out = {}
    for name in GRIDS:
        cfg, folder = smoke_config(name), tmp_path_factory.mktemp(name)
        task = tasks.get(cfg.task)
        train.train(task, cfg, task.real_data(cfg, "train"), task.real_data(cfg, "test"), folder, log=lambda m: None)
        model = storage.load_weights(folder / "best.safetensors", task.build_model(cfg)).eval().requires_grad_(False)
        out[name] = (cfg, model, folder)
    return out


def both(name, trained):
    """{precision: (metrics, samples)} of the trained smoke model of task `name`, on the CPU."""
    cfg, model, folder = trained[name]
    task, results = tasks.get(cfg.task), {}
    for precision in ("fp32", "bf16"):
        with infer.inference_precision(precision, torch.device("cpu")) as ran:
            assert ran == precision
            metrics = task.evaluate(model, task.real_data(cfg, "test"), cfg, cache=folder / "cache")
            samples = task.synthesize(model, cfg, 0, 16, torch.Generator().manual_seed(0))
        results[precision] = (metrics, samples)
    return results


def close(a: float, b: float, rtol: float) -> bool:
    return math.isclose(a, b, rel_tol=rtol)


def test_vae_bf16_matches_fp32(trained):
    r = both("vae", trained)
    (m32, s32), (m16, s16) = r["fp32"], r["bf16"]
    assert m16["test_loss"] != m32["test_loss"]   # autocast ran: not the same arithmetic
    for name in ("test_loss", "test_recon"):
        assert close(m16[name], m32[name], LOSS_RTOL), (name, m16[name], m32[name])
    assert close(m16["test_kl"], m32["test_kl"], METRIC_RTOL), (m16["test_kl"], m32["test_kl"])
    assert (s16.int() - s32.int()).abs().float().mean() < 2.0   # grey levels of 255, same prior draws


def test_ddpm_bf16_matches_fp32(trained):
    r = both("ddpm", trained)
    (m32, s32), (m16, s16) = r["fp32"], r["bf16"]
    assert m16["test_loss"] != m32["test_loss"]
    assert close(m16["test_loss"], m32["test_loss"], LOSS_RTOL), (m16["test_loss"], m32["test_loss"])
    for name in ("fid", "kid"):
        assert close(m16[name], m32[name], METRIC_RTOL), (name, m16[name], m32[name])
    assert (s16.int() - s32.int()).abs().float().mean() < 4.0   # DDIM from the same noise: nearly the same images


def test_t5_bf16_matches_fp32(trained):
    r = both("t5", trained)
    (m32, s32), (m16, s16) = r["fp32"], r["bf16"]
    assert m16["test_loss"] != m32["test_loss"]
    assert close(m16["test_loss"], m32["test_loss"], LOSS_RTOL), (m16["test_loss"], m32["test_loss"])
    assert close(m16["ppl_mean"], m32["ppl_mean"], METRIC_RTOL), (m16["ppl_mean"], m32["ppl_mean"])
    for name in ("rouge1", "rouge2", "rougeL"):
        assert abs(m16[name] - m32[name]) <= ROUGE_POINTS, (name, m16[name], m32[name])
    same = (s16.target == s32.target).float().mean()
    assert same > 0.8, f"only {same:.0%} of the greedy summaries' tokens agree"


def test_metric_networks_stay_fp32_inside_bf16(trained):
    """Inception's features and GPT-2's perplexities are the very same numbers inside a bf16 block."""
    images = tasks.get("ddpm").real_data(trained["ddpm"][0], "test")[:4]
    extractor = InceptionFeatures(None)
    plain = extractor(images)
    with infer.inference_precision("bf16", torch.device("cpu")):
        assert torch.is_autocast_cpu_enabled()
        inside = extractor(images)
    assert (plain == inside).all()


def test_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert infer.resolved("auto", torch.device("cpu")) == "fp32"
    assert infer.resolved("auto", torch.device("cuda", 0)) == "bf16"
    assert infer.resolved("tf32", "cpu") == "tf32"
    with infer.inference_precision("tf32", "cpu"):
        assert torch.backends.cuda.matmul.allow_tf32 and not torch.is_autocast_cpu_enabled()
    with infer.inference_precision("fp32", "cpu"):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32   # restored: torch's default


def test_a_set_precision_enters_the_synth_and_eval_keys_and_auto_does_not():
    def keys(*extra):
        return {s.name: s.key for s in build(load_sweep(["grid=vae_coeffs", "profile=smoke", "cluster=local",
                                                          *extra])).stages.values()}
    auto, default = keys("infer.precision=auto"), keys()
    assert auto == default
    for precision in ("fp32", "tf32", "bf16"):
        changed = {name.split("[")[0] for name, key in keys(f"infer.precision={precision}").items()
                   if key != auto[name]}
        assert changed == {"synth", "student", "eval:teacher", "eval:student", "report"}, (precision, changed)


def test_a_wrong_precision_is_one_line_naming_the_key():
    with pytest.raises(Exception, match=r"key 'infer.precision': value 'fp16' is not allowed; expected one of: "
                                        r"auto, fp32, tf32, bf16"):
        smoke_config("vae", "infer.precision=fp16")


def test_an_eval_stage_records_the_precision_it_ran_in(trained):
    cfg, _, folder = trained["vae"]
    weights = folder / "best.safetensors"
    record = {"name": "teacher", "config": to_dict(cfg),
              "artifacts": {"weights": {"path": weights.name, "sha256": storage.sha256(weights)}}}
    task = tasks.get(cfg.task)
    for asked, ran in (("auto", "fp32"), ("bf16", "bf16")):
        cfg.infer.precision = asked
        ctx = run.StageContext(task, cfg, {kinds.Eval.MODEL: record}, folder, folder / asked, lambda m: None)
        metrics, _ = kinds.get("eval").run(ctx)
        assert metrics["precision"] == ran
    cfg.infer.precision = "auto"
