"""The training loop every modality shares: DeepSpeed engine, epochs, eval, best checkpoint, resume.

The loop knows nothing about the modality: a task gives it `loss` (given the teacher's
outputs and the coefficients, L_SD), `teacher_outputs` and `test_loss`. Data is a tensor held
in memory, batched by index, so an epoch's order and each step's noise come from seeds alone;
a resumed run therefore replays exactly the steps an uninterrupted run would have taken.
"""
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from collapse import progress, storage, tensorboard_names
from collapse.device import StepNoise, dtype_of, generator, this_device, to_device
from collapse.tasks.base import distills, loss_form

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Tests only: seconds to sleep after each step, so that an outside requeue lands mid-run however
# fast the machine trains.
STEP_DELAY_ENV = "COLLAPSE_TEST_STEP_DELAY_S"


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


def import_deepspeed():
    """DeepSpeed picks its accelerator at import; without a GPU it must be told 'cpu'."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed   # heavy: deepspeed's accelerator must be chosen before its import
    return deepspeed


def slurm_rendezvous() -> dict | None:
    """RANK, WORLD_SIZE, ... of this task of a multi-task SLURM job step (None outside one).

    Read through submitit's JobEnvironment (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS,
    SLURM_JOB_NODELIST): rank 0's node is the master, the port a function of the job id, so
    every task of the job computes the same address without talking to the others.
    """
    # SLURM_STEP_NUM_TASKS: set by srun for the tasks of a step, not in a batch script or salloc shell,
    # where one process (the local executor's, say) must not wait for ranks that will never come
    if "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) <= 1:
        return None
    from submitit.slurm.slurm import SlurmJobEnvironment   # slow import: submitit only inside a SLURM job
    env = SlurmJobEnvironment()
    return {"RANK": str(env.global_rank), "LOCAL_RANK": str(env.local_rank), "WORLD_SIZE": str(env.num_tasks),
            "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(20000 + int(env.raw_job_id) % 20000)}


def global_rank() -> int:
    """This process's rank: 0 unless it is one of several tasks (torchrun or a multi-task SLURM step)."""
    rendezvous = slurm_rendezvous() or {}
    return int(os.environ.get("RANK", rendezvous.get("RANK", "0")))


def ensure_distributed() -> None:
    """Join the process group from the environment (torchrun, a multi-task SLURM job), or form a group of one."""
    deepspeed = import_deepspeed()
    if "RANK" not in os.environ:
        rendezvous = slurm_rendezvous()
        if rendezvous is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            rendezvous = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                          "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        os.environ.update(rendezvous)
    if torch.cuda.is_available():
        torch.cuda.set_device(this_device())   # each task of a multi-GPU job: the GPU of its local rank
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "gloo":
            # DeepSpeed's CPU shared-memory all-reduce op is JIT-compiled at the first init (a minute of
            # both cores on a fresh machine, a ninja check in every stage process after); gloo's does the work.
            import deepspeed.ops   # heavy: deepspeed's ops table only to turn its shm op off
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=backend, verbose=False)


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
def teacher_targets(task, teacher, data, cfg, chunk: int = 4096) -> dict | None:
    """The teacher's outputs for every training item, when they do not depend on the step's noise."""
    if not task.TEACHER_OUTPUTS_DETERMINISTIC:
        return None
    device = next(teacher.parameters()).device
    parts = [task.teacher_outputs(teacher, to_device(task.batch(data, torch.arange(i, min(i + chunk, len(data)))),
                                                     device), None, cfg)
             for i in range(0, len(data), chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def train(task, cfg, train_data, test_data, out_dir: Path, teacher=None, log=print,
          init: Path | None = None) -> TrainState:
    """Train `task`'s model on `train_data`; keep the best weights by `task.test_loss` on `test_data`.

    With a `teacher` and non-zero `cfg.distill` coefficients the loss is L_SD (eq. 1 of the paper).
    `init`: weights the model starts from (a pretraining stage's), else its seeded initialisation.
    Writes out_dir/best.safetensors and returns the final TrainState.
    """
    tc = cfg.train
    if tc.threads:   # else OMP_NUM_THREADS, which the executor sets to this stage's share of the cores
        torch.set_num_threads(tc.threads)
    checkpoints = storage.CheckpointDir(out_dir / "checkpoints")
    keep = {"best.safetensors": out_dir / "best.safetensors"}   # restored with the state it belongs to
    n, b = len(train_data), tc.batch_size
    batches_per_epoch = math.ceil(n / b)
    total_steps = tc.steps or tc.epochs * batches_per_epoch
    engine, state = resume(task, cfg, checkpoints, keep, total_steps, log, init)
    if state.step:
        log(f"resumed at epoch {state.epoch} batch {state.batch} step {state.step}")
    distilling = teacher is not None and distills(task, cfg.distill)
    device = engine.device
    if distilling:   # the frozen teacher computes in the student's dtype: bf16 under mixed precision
        teacher = teacher.to(device, dtype_of(engine.module))
    cached_targets = teacher_targets(task, teacher, train_data, cfg) if distilling else None
    # Data parallel: every rank draws the same global batch and trains on its own slice of it.
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    log(f"device {device}, world {world}, batch {b} = {world} x {engine.train_micro_batch_size_per_gpu()}, "
        f"{'bf16 (fp32 master weights)' if engine.bfloat16_enabled() else 'fp32'}")
    log(f"loss: {loss_form(task.DISTILL_TERMS, cfg.distill) if distilling else 'L = L_M'}")
    curves = curve_writer(out_dir) if rank == 0 else None
    shown = progress_writer(out_dir, cfg, state, total_steps) if rank == 0 else None
    started, first_step = time.time(), state.step
    state.run_from_step = state.step
    step_delay = float(os.environ.get(STEP_DELAY_ENV, 0))
    order = epoch_order(tc.seed, state.epoch, n)
    engine.train()
    while state.step < total_steps:
        global_index = order[state.batch * b:(state.batch + 1) * b]
        index = global_index[rank::world]
        batch = to_device(task.batch(train_data, index), device)
        def step_noise():   # the teacher and the student draw the same t and noise from fresh copies
            return StepNoise(step_generator(tc.seed, state.step, device), len(global_index), rank, world)
        targets = None
        if cached_targets is not None:
            targets = {k: v[index.to(v.device)] for k, v in cached_targets.items()}
        elif distilling:
            with torch.no_grad():
                targets = task.teacher_outputs(teacher, batch, step_noise(), cfg)
        loss, _ = task.loss(engine, batch, step_noise(), cfg, targets)
        if not torch.isfinite(loss):
            raise DivergedError(f"loss is {loss.item()} at step {state.step} (epoch {state.epoch})")
        if len(index) * world != len(global_index):   # an epoch's uneven last batch
            loss = loss * (len(index) * world / len(global_index))   # ranks' mean = the global batch's
        engine.backward(loss)
        engine.step()
        if step_delay:
            time.sleep(step_delay)
        state.step += 1
        state.batch += 1
        epoch_ended = state.batch == batches_per_epoch
        if epoch_ended:
            state.epoch, state.batch = state.epoch + 1, 0
            order = epoch_order(tc.seed, state.epoch, n)
        if shown is not None:
            shown.update(state.step, epoch=state.epoch)
        if evaluation_due(tc, state, epoch_ended, total_steps):
            engine.eval()
            evaluate(task, engine, test_data, cfg, state, loss.item(), started, out_dir, total_steps, log)
            if curves is not None:
                add_curves(curves, state.history[-1])
            if shown is not None:
                shown.update(state.step, value=state.history[-1]["test_loss"])
            engine.train()
            checkpoints.save(engine, vars(state), state.step, keep)
        elif epoch_ended or state.step % tc.checkpoint_every == 0:
            checkpoints.save(engine, vars(state), state.step, keep)
            if not epoch_ended:   # step budgets evaluate rarely: a line of progress between evaluations
                per_step = (time.time() - started) / (state.step - first_step)
                log(f"step {state.step}/{total_steps}: checkpoint saved; {per_step:.2f} s a step, "
                    f"~{(total_steps - state.step) * per_step / 60:.0f} min to go")
    if curves is not None:
        tensorboard_names.add_hparams(curves, out_dir, state.best_loss, state.best_step)
        curves.close()
    if shown is not None:
        shown.update(state.step, force=True)   # the end, whatever the stage does next
    return state


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


def add_curves(writer, entry: dict) -> None:
    """One evaluation's train and test loss at its step. A resumed run opens a new event file and adds
    only the evaluations after its checkpoint (a step evaluated again after a kill between evaluation
    and checkpoint appears twice, with the same value)."""
    writer.add_scalar("loss/test", entry["test_loss"], entry["step"])
    writer.add_scalar("loss/train", entry["train_loss"], entry["step"])
    writer.flush()   # evaluations are rare: a killed run keeps every point it logged


def evaluation_due(tc, state: TrainState, epoch_ended: bool, total_steps: int) -> bool:
    """After every train.eval_every_steps steps when set, else after every train.eval_every epochs;
    always after the last step."""
    if state.step == total_steps:
        return True
    if tc.eval_every_steps:
        return state.step % tc.eval_every_steps == 0
    return epoch_ended and state.epoch % tc.eval_every == 0


def evaluate(task, engine, test_data, cfg, state: TrainState, train_loss: float, started: float, out_dir: Path,
             total_steps: int, log) -> None:
    """L_M(Test) now; the best weights so far (fp32) go to out_dir/best.safetensors."""
    test_loss = task.test_loss(engine.module, test_data, cfg)
    if not math.isfinite(test_loss):
        raise DivergedError(f"test loss is {test_loss} after epoch {state.epoch} (step {state.step})")
    # a task may add metrics to each evaluation (T5: ROUGE of a few validation articles, for ROUGE-vs-step curves)
    extra = task.curve_metrics(engine.module, test_data, cfg)
    state.history.append({"epoch": state.epoch, "step": state.step, "train_loss": train_loss,
                          "test_loss": test_loss, "lr": engine.get_lr()[0], "seconds": round(time.time() - started, 2),
                          **extra})
    if test_loss < state.best_loss:
        state.best_loss, state.best_epoch, state.best_step = test_loss, state.epoch, state.step
        weights = full_state_dict(engine)   # collective under ZeRO: every rank calls it
        if torch.distributed.get_rank() == 0:
            storage.save_tensors(out_dir / "best.safetensors", weights)
    where = (f"step {state.step}/{total_steps} (epoch {state.epoch})" if cfg.train.steps
             else f"epoch {state.epoch}/{cfg.train.epochs} step {state.step}")
    log(f"{where} train {train_loss:.3f} test {test_loss:.3f} best {state.best_loss:.3f}@{state.best_epoch}")


def initial_model(task, cfg, init: Path | None):
    """The task's model, seeded by train.seed, with the weights at `init` when given."""
    torch.manual_seed(cfg.train.seed)
    model = task.build_model(cfg)
    return storage.load_weights(init, model) if init is not None else model


def resume(task, cfg, checkpoints, keep: dict, total_steps: int, log=print, init: Path | None = None):
    """A new engine, restored from the latest checkpoint when there is a good one.

    A torn, altered or unloadable checkpoint is discarded with a warning naming the file, and
    training starts over from the seed (never a crash on every rerun, never training on garbage).
    """
    engine = make_engine(initial_model(task, cfg, init), cfg.train, total_steps)
    if not checkpoints.exists():
        return engine, TrainState()
    try:
        return engine, TrainState(**checkpoints.restore(engine, keep))
    except (storage.CorruptFileError, TypeError) as e:
        log(f"WARNING: discarding the checkpoints in {checkpoints.root} and training from the start: {e}")
    checkpoints.discard()
    for path in keep.values():
        Path(path).unlink(missing_ok=True)   # they belonged to the discarded run
    return make_engine(initial_model(task, cfg, init), cfg.train, total_steps), TrainState()
