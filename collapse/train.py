"""The training loop every modality shares: DeepSpeed engine, epochs, eval, best checkpoint, resume.

The loop knows nothing about the modality: a task gives it `loss` (given the teacher's
outputs and the coefficients, L_SD), `teacher_outputs` and `test_loss`. Data is a tensor held
in memory, batched by index, so an epoch's order and each step's noise come from seeds alone;
a resumed run therefore replays exactly the steps an uninterrupted run would have taken.
"""
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from collapse import progress, storage, tensorboard_names
from collapse.distributed import ensure_distributed, import_deepspeed
from collapse.device import StepNoise, dtype_of, generator, to_device
from collapse.models import outputs
from collapse.tasks.base import distills, loss_form

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Tests only: seconds to sleep after each step (an outside requeue lands mid-run however fast the machine).
STEP_DELAY_ENV = "COLLAPSE_TEST_STEP_DELAY_S"
# Tests only: a path; each step from STEP_GATE_FROM_ENV's (default 0) on waits until it exists (a test holds a stage)
STEP_GATE_ENV = "COLLAPSE_TEST_STEP_GATE"
STEP_GATE_FROM_ENV = "COLLAPSE_TEST_STEP_GATE_FROM"


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainState:
    """What a checkpoint carries besides weights and optimizer state."""
    epoch: int = 0
    batch: int = 0          # next batch index within `epoch`
    step: int = 0
    best_loss: float = math.inf
    best_epoch: int = -1
    best_step: int = -1
    history: list = field(default_factory=list)
    run_from_step: int = 0  # the step this run (this process) started at: > 0 after a resume


def uses_bf16(train_cfg) -> bool:
    """train.bf16: null (auto) is bf16 on GPU and fp32 on CPU; true forces bf16 on CPU too."""
    return torch.cuda.is_available() if train_cfg.bf16 is None else train_cfg.bf16


def deepspeed_config(train_cfg) -> dict:
    with open(CONFIG_DIR / "deepspeed" / f"zero{train_cfg.zero_stage}.json") as f:
        ds = json.load(f)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if train_cfg.batch_size % world:
        raise ValueError(f"train.batch_size {train_cfg.batch_size} does not split evenly over {world} ranks")
    ds.update(train_micro_batch_size_per_gpu=train_cfg.batch_size // world,
              gradient_accumulation_steps=1, train_batch_size=train_cfg.batch_size)
    # DeepSpeed's mixed precision: bf16 parameters and gradients, fp32 master weights in the optimizer
    ds["bf16"] = {"enabled": uses_bf16(train_cfg)}
    return ds


def lr_factor(step: int, total_steps: int, train_cfg) -> float:
    """The learning rate of `step` as a share of train.lr: a linear warm-up over train.warmup_steps,
    then constant, or cosine with train.lr_waves waves over the rest (transformers'
    get_cosine_schedule_with_warmup: 0.5 waves fall from lr to 0 at the last step)."""
    warmup = train_cfg.warmup_steps
    if step < warmup:
        return step / warmup
    if train_cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * train_cfg.lr_waves * progress)))


def make_engine(model: torch.nn.Module, train_cfg, total_steps: int = 0):
    deepspeed = import_deepspeed()
    ensure_distributed()
    # fused: one kernel for all parameters instead of ~10 per tensor, 2.8 -> 1.1 ms a step on one core
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                                  fused=True)
    schedule = None   # a constant rate needs none (and checkpoints from before schedules carry none)
    if train_cfg.lr_schedule != "constant" or train_cfg.warmup_steps:
        # DeepSpeed steps it after each optimizer step and keeps its state in the checkpoint
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, train_cfg))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                      config=deepspeed_config(train_cfg))
    if engine.dp_world_size == 1 and train_cfg.zero_stage == 0:   # ZeRO 1-3 reduce inside their optimizer
        # All-reducing over a group of one is the identity, but DeepSpeed still flattens and
        # copies every gradient for it: ~10% of a small model's step.
        engine.enable_backward_allreduce = False
    return engine


def full_state_dict(engine) -> dict:
    """The model's whole state dict in fp32, on the CPU. Under bf16 these are the optimizer's fp32
    master weights, not the bf16 copies the forward uses. Collective under ZeRO: every rank calls it."""
    if engine.bfloat16_enabled():
        return _master_weights(engine)
    if engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def _master_weights(engine) -> dict:
    from deepspeed.utils import safe_get_full_fp32_param   # heavy: deepspeed imported once, by import_deepspeed
    master = {}
    if engine.zero_optimization_stage() == 0:   # FP16_UnfusedOptimizer: fp32 copies beside the bf16 groups
        master = {id(p): m for group, fp32 in zip(engine.optimizer.fp16_groups, engine.optimizer.fp32_groups)
                  for p, m in zip(group, fp32)}
    state = {}
    for name, p in engine.module.named_parameters():
        state[name] = (master[id(p)] if id(p) in master else safe_get_full_fp32_param(p)).detach().float().cpu()
    for name, b in engine.module.named_buffers():
        state[name] = b.detach().float().cpu() if b.is_floating_point() else b.detach().cpu()
    return state


def step_generator(seed: int, step: int, device: torch.device | None = None) -> torch.Generator:
    """The noise of one step, a pure function of (seed, step) on each kind of device."""
    return generator(seed * 1_000_003 + step, device or torch.device("cpu"))


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))


@torch.no_grad()
def teacher_targets(task, teacher, data, cfg, chunk: int = 4096) -> tuple | None:
    """The teacher's outputs for every training item, when they do not depend on the step's noise."""
    if not task.TEACHER_OUTPUTS_DETERMINISTIC:
        return None
    device = next(teacher.parameters()).device
    chunks = (task.batch(data, torch.arange(i, min(i + chunk, len(data)))) for i in range(0, len(data), chunk))
    return outputs.concat([task.teacher_outputs(teacher, to_device(b, device), None, cfg) for b in chunks])


@dataclass
class Run:
    """What a training run is given: `teacher` (with non-zero `cfg.distill` coefficients the loss is L_SD,
    eq. 1 of the paper), `log`, and `init`, the weights it starts from (a pretraining stage's; else seeded)."""
    task: object
    cfg: object
    train_data: object
    test_data: object
    out_dir: Path
    teacher: torch.nn.Module | None = None
    log: Callable[[str], None] = print
    init: Path | None = None


def train(task, cfg, train_data, test_data, out_dir: Path, *, teacher: torch.nn.Module | None = None,
          log: Callable[[str], None] = print, init: Path | None = None) -> TrainState:
    """Train `task`'s model on `train_data`; keep the best weights by `task.test_loss` on `test_data`.

    teacher, log, init: as Run's. Writes out_dir/best.safetensors and returns the final TrainState."""
    run = Run(task, cfg, train_data, test_data, out_dir, teacher, log, init)
    if cfg.train.threads:   # else OMP_NUM_THREADS, which the executor sets to this stage's share of the cores
        torch.set_num_threads(cfg.train.threads)
    loop = Loop(run)
    loop.engine.train()
    while loop.state.step < loop.total_steps:
        loss, epoch_ended = loop.step()
        evaluated = loop.maybe_evaluate(loss, epoch_ended)
        loop.maybe_checkpoint(epoch_ended, evaluated)
    loop.finish()
    return loop.state


class Loop:
    """The training loop between steps: the engine, the TrainState its checkpoints carry, and what each
    step reuses (the epoch's order, the teacher or its cached targets, rank 0's writers)."""

    def __init__(self, run: Run):
        self.run, self.tc = run, run.cfg.train
        self.checkpoints = storage.CheckpointDir(run.out_dir / "checkpoints")
        self.keep = {"best.safetensors": run.out_dir / "best.safetensors"}   # restored with the state it belongs to
        self.batches_per_epoch = math.ceil(len(run.train_data) / self.tc.batch_size)
        self.total_steps = self.tc.steps or self.tc.epochs * self.batches_per_epoch
        self.engine, self.state = resume(run, self.checkpoints, self.keep, self.total_steps)
        if self.state.step:
            run.log(f"resumed at epoch {self.state.epoch} batch {self.state.batch} step {self.state.step}")
        self.teacher = self.cached_targets = None   # set when distilling
        if run.teacher is not None and distills(run.task, run.cfg.distill):
            # the frozen teacher computes in the student's dtype: bf16 under mixed precision
            self.teacher = run.teacher.to(self.engine.device, dtype_of(self.engine.module))
            self.cached_targets = teacher_targets(run.task, self.teacher, run.train_data, run.cfg)
        # Data parallel: every rank draws the same global batch and trains on its own slice of it.
        self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        run.log(f"device {self.engine.device}, world {self.world}, batch {self.tc.batch_size} = {self.world} x "
                f"{self.engine.train_micro_batch_size_per_gpu()}, "
                f"{'bf16 (fp32 master weights)' if self.engine.bfloat16_enabled() else 'fp32'}")
        run.log(f"loss: {'L = L_M' if self.teacher is None else loss_form(run.task.DISTILL_TERMS, run.cfg.distill)}")
        self.curves = curve_writer(run.out_dir) if self.rank == 0 else None
        self.shown = progress_writer(run.out_dir, run.cfg, self.state, self.total_steps) if self.rank == 0 else None
        self.started = time.time()
        self.state.run_from_step = self.state.step
        self.step_delay = float(os.environ.get(STEP_DELAY_ENV, 0))
        self.step_gate, self.gate_from = os.environ.get(STEP_GATE_ENV), int(os.environ.get(STEP_GATE_FROM_ENV, 0))
        self.order = epoch_order(self.tc.seed, self.state.epoch, len(run.train_data))

    def step(self) -> tuple[torch.Tensor, bool]:
        """One optimizer step on the next batch: its loss (this rank's share) and whether it ended an epoch."""
        run, state, b = self.run, self.state, self.tc.batch_size
        while self.step_gate and state.step >= self.gate_from and not os.path.exists(self.step_gate):
            time.sleep(0.05)
        global_index = self.order[state.batch * b:(state.batch + 1) * b]
        index = global_index[self.rank::self.world]
        batch = to_device(run.task.batch(run.train_data, index), self.engine.device)
        targets = self.teacher_outputs(batch, index, len(global_index))
        loss, _ = run.task.loss(self.engine, batch, self.step_noise(len(global_index)), run.cfg, targets)
        if not torch.isfinite(loss):
            raise DivergedError(f"loss is {loss.item()} at step {state.step} (epoch {state.epoch})")
        if len(index) * self.world != len(global_index):   # an epoch's uneven last batch
            loss = loss * (len(index) * self.world / len(global_index))   # ranks' mean = the global batch's
        self.engine.backward(loss)
        self.engine.step()
        if self.step_delay:
            time.sleep(self.step_delay)
        state.step += 1
        state.batch += 1
        epoch_ended = state.batch == self.batches_per_epoch
        if epoch_ended:
            state.epoch, state.batch = state.epoch + 1, 0
            self.order = epoch_order(self.tc.seed, state.epoch, len(run.train_data))
        if self.shown is not None:
            self.shown.update(state.step, epoch=state.epoch)
        return loss, epoch_ended

    def step_noise(self, global_size: int) -> StepNoise:
        """This step's draws from a fresh generator: the teacher and the student draw the same t and noise."""
        generator = step_generator(self.tc.seed, self.state.step, self.engine.device)
        return StepNoise(generator, global_size, self.rank, self.world)

    def teacher_outputs(self, batch, index: torch.Tensor, global_size: int) -> tuple | None:
        """The teacher's outputs for this rank's items (None when not distilling): cached, or on this step's noise."""
        if self.cached_targets is not None:
            return outputs.select(self.cached_targets, index)
        if self.teacher is None:
            return None
        with torch.no_grad():
            return self.run.task.teacher_outputs(self.teacher, batch, self.step_noise(global_size), self.run.cfg)

    def maybe_evaluate(self, loss: torch.Tensor, epoch_ended: bool) -> bool:
        """Evaluate every train.eval_every_steps steps if set, else every train.eval_every epochs; after the last."""
        tc, step = self.tc, self.state.step
        due = step == self.total_steps or (step % tc.eval_every_steps == 0 if tc.eval_every_steps
                                           else epoch_ended and self.state.epoch % tc.eval_every == 0)
        if due:
            self.engine.eval()
            self.evaluate(loss.item())
            self.engine.train()
        return due

    def evaluate(self, train_loss: float) -> None:
        """L_M(Test) now, into the history, the curves and the progress file; the best weights so far (fp32)
        go to out_dir/best.safetensors."""
        run, state = self.run, self.state
        test_loss = run.task.test_loss(self.engine.module, run.test_data, run.cfg)
        if not math.isfinite(test_loss):
            raise DivergedError(f"test loss is {test_loss} after epoch {state.epoch} (step {state.step})")
        # a task may add metrics to each evaluation (T5: ROUGE of a few validation articles, for ROUGE-vs-step curves)
        extra = run.task.curve_metrics(self.engine.module, run.test_data, run.cfg)
        state.history.append({"epoch": state.epoch, "step": state.step, "train_loss": train_loss,
                              "test_loss": test_loss, "lr": self.engine.get_lr()[0],
                              "seconds": round(time.time() - self.started, 2), **extra})
        if test_loss < state.best_loss:
            state.best_loss, state.best_epoch, state.best_step = test_loss, state.epoch, state.step
            weights = full_state_dict(self.engine)   # collective under ZeRO: every rank calls it
            if torch.distributed.get_rank() == 0:
                storage.save_tensors(run.out_dir / "best.safetensors", weights)
        where = (f"step {state.step}/{self.total_steps} (epoch {state.epoch})" if self.tc.steps
                 else f"epoch {state.epoch}/{self.tc.epochs} step {state.step}")
        run.log(f"{where} train {train_loss:.3f} test {test_loss:.3f} best {state.best_loss:.3f}@{state.best_epoch}")
        if self.curves is not None:   # a resumed run's new event file: only the evaluations after its checkpoint
            self.curves.add_scalar("loss/test", test_loss, state.step)
            self.curves.add_scalar("loss/train", train_loss, state.step)
            self.curves.flush()   # evaluations are rare: a killed run keeps every point it logged
        if self.shown is not None:
            self.shown.update(state.step, value=test_loss)

    def maybe_checkpoint(self, epoch_ended: bool, evaluated: bool) -> None:
        """A checkpoint after each evaluation (with the best weights it kept), at each epoch's end and every
        train.checkpoint_every steps."""
        state = self.state
        if not (evaluated or epoch_ended or state.step % self.tc.checkpoint_every == 0):
            return
        self.checkpoints.save(self.engine, vars(state), state.step, self.keep)
        if not (evaluated or epoch_ended):   # step budgets evaluate rarely: a line of progress between evaluations
            per_step = (time.time() - self.started) / (state.step - state.run_from_step)
            self.run.log(f"step {state.step}/{self.total_steps}: checkpoint saved; {per_step:.2f} s a step, "
                         f"~{(self.total_steps - state.step) * per_step / 60:.0f} min to go")

    def finish(self) -> None:
        """The run's hyperparameters beside its curves; the progress file's last update."""
        if self.curves is not None:
            tensorboard_names.add_hparams(self.curves, self.run.out_dir, self.state.best_loss, self.state.best_step)
            self.curves.close()
        if self.shown is not None:
            self.shown.update(self.state.step, force=True)   # the end, whatever the stage does next


def progress_writer(out_dir: Path, cfg, state: TrainState, total_steps: int) -> progress.Writer:
    """out_dir/progress.json for sweeps/status.py: step, epoch, the latest test loss, this run's rate."""
    shown = progress.Writer(out_dir / progress.FILE, "step", total_steps, state.step)
    latest = state.history[-1]["test_loss"] if state.history else None
    shown.update(state.step, force=True, epoch=state.epoch, epochs=None if cfg.train.steps else cfg.train.epochs,
                 metric="test_loss", value=latest)
    return shown


def curve_writer(out_dir: Path):
    """A TensorBoard writer for this stage's loss curves, in out_dir/tensorboard."""
    from torch.utils.tensorboard import SummaryWriter   # heavy: tensorboard only for rank 0 of a training stage
    tensorboard_names.link(out_dir)   # <root>/tensorboard/<grid>/<stage name> -> out_dir/tensorboard
    return SummaryWriter(str(out_dir / "tensorboard"))


def initial_model(task, cfg, init: Path | None):
    """The task's model, seeded by train.seed, with the weights at `init` when given."""
    torch.manual_seed(cfg.train.seed)
    model = task.build_model(cfg)
    return storage.load_weights(init, model) if init is not None else model


def resume(run: Run, checkpoints, keep: dict, total_steps: int):
    """A new engine, restored from the latest checkpoint when there is a good one.

    A torn, altered or unloadable checkpoint is discarded with a warning naming the file, and
    training starts over from the seed (never a crash on every rerun, never training on garbage).
    """
    engine = make_engine(initial_model(run.task, run.cfg, run.init), run.cfg.train, total_steps)
    if not checkpoints.exists():
        return engine, TrainState()
    try:
        return engine, TrainState(**checkpoints.restore(engine, keep))
    except (storage.CorruptFileError, TypeError) as e:
        run.log(f"WARNING: discarding the checkpoints in {checkpoints.root} and training from the start: {e}")
    checkpoints.discard()
    for path in keep.values():
        Path(path).unlink(missing_ok=True)   # they belonged to the discarded run
    return make_engine(initial_model(run.task, run.cfg, run.init), run.cfg.train, total_steps), TrainState()
