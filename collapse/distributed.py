"""How a training process joins its process group, before DeepSpeed builds its engine: from torchrun's
environment (RANK, WORLD_SIZE, MASTER_ADDR, ...), from a multi-task SLURM job step's (read through
submitit's JobEnvironment), or as a group of one on a free local port. The training loop
(collapse/train.py) only calls ensure_distributed; run.py asks global_rank which process records.
"""
import os
import socket

import torch

from collapse.device import this_device


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
