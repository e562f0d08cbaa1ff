"""What runs inside a SLURM job: one stage, as a submitit Checkpointable.

Each task runs collapse.run.run_stage(root, key), the local executor's entry point, inside StageJob: on
preemption or timeout (USR2) submitit requeues it, and the rerun resumes from the stage's own checkpoint
(stages/<key>/checkpoints/); so does a job requeued from outside (scontrol requeue). The stage's output
goes to logs/<kind>-<key>.log, as with the local executor.
"""
import atexit
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import submitit

from collapse import lease
from collapse.run import run_stage
from collapse.stages import RAN_TO_THE_END


class StageFailed(RuntimeError):
    """Raised in a job whose stage recorded 'failed', so SLURM marks the job FAILED."""


class StageJob(submitit.helpers.Checkpointable):
    """One stage as a submitit job: run_stage(root, key), output appended to the stage's log.

    Checkpointable: on USR2 (preemption, or `time_min - signal_delay_s` elapsed) submitit calls
    checkpoint() and requeues the job. Nothing needs pickling: the training loop checkpoints to
    stages/<key>/checkpoints/ and a rerun resumes from there.
    """

    def __init__(self, root: str, key: str, name: str = "", log: str = ""):
        self.root, self.key, self.name, self.log = str(root), key, name, log

    def __call__(self) -> dict:
        env = os.environ
        rank = int(env.get("SLURM_PROCID", "0"))
        job = env.get("SLURM_ARRAY_JOB_ID") and f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}"
        job = job or env.get("SLURM_JOB_ID", "?")
        log = Path(self.root) / self.log if self.log and rank == 0 else None
        print(f"[{time.strftime('%H:%M:%S')}] job {job} on {os.uname().nodename}, "
              f"restart {env.get('SLURM_RESTART_COUNT', '0')}: stage {self.name} ({self.key})"
              + (f"; its output goes to {log}" if log else ""), flush=True)
        with _output_to(log):
            print(f"[{time.strftime('%H:%M:%S')}] SLURM job {job} on {os.uname().nodename}, "
                  f"restart {env.get('SLURM_RESTART_COUNT', '0')}", flush=True)
            record = run_stage(self.root, self.key)
            while record["status"] == "held":   # another runner (a local launch) has it: wait, then take what it left
                while lease.live_holder(self.root, self.key) is not None:
                    time.sleep(lease.heartbeat_s())
                record = run_stage(self.root, self.key)   # done meanwhile: returned as is; else run (resuming)
        _leave_process_group()
        ended = record["status"] in RAN_TO_THE_END
        _exit_fast_after_job(0 if ended else 1)
        if not ended:
            raise StageFailed(f"stage {self.name} ({self.key}) {record['status']}: {record.get('error')}; "
                              f"log: {Path(self.root) / record.get('log', '')}")
        return {"key": self.key, "status": record["status"]}

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _leave_process_group() -> None:
    """Destroy the training's process group: left to interpreter teardown, gloo may abort the task.

    Only inside a submitit job process, which exits next. In a process that merely calls a StageJob
    (a test) DeepSpeed keeps its cached groups, and a later engine would find them unregistered.
    """
    if "SUBMITIT_FOLDER" not in os.environ:
        return
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except Exception:   # never let cleanup turn a finished stage into a failed job
        pass


_exit_code: int | None = None


def _exit_fast_after_job(code: int) -> None:
    """Once submitit has written the job's result, exit without the interpreter's teardown.

    Tearing down torch and DeepSpeed takes 2-3 s, on every dependency level's critical path. By
    then the stage's files are closed and renamed into place and submitit's result is written
    (it happens before interpreter shutdown, where atexit handlers run). Only inside a submitit job
    process, never in a process that merely calls a StageJob (a test, a debugger).
    """
    global _exit_code
    if "SUBMITIT_FOLDER" not in os.environ:
        return
    if _exit_code is None:
        atexit.register(_exit_now)
    _exit_code = code


def _exit_now() -> None:
    if _exit_code is None:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_code)


@contextlib.contextmanager
def _output_to(path: Path | None):
    """Send this process's stdout and stderr (file descriptors 1 and 2) to `path`, appending."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab", buffering=0) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
