"""A sweep's stage graph as a handful of SLURM job arrays with dependencies.

Stages are grouped by (level, kind); a stage's level is 0 when none of its inputs is being submitted
with it, else 1 + the highest level among those inputs. Each group is ONE sbatch (a job array, or a
plain job for a group of one) whose --dependency names the groups holding its inputs:

* `aftercorr:A` when the group lines up element-wise with one group A (task i reads only task i of A:
  each student's eval waits for its own student, generation t+1 of a chain for generation t);
* else `afterok` on the tasks of the groups it reads (the whole array when it needs all of it);
* `afterok` on the jobs of earlier launches still queued or running for an input;
* nothing for inputs that are already done.

Inputs implied by other inputs (a student reads the teacher, but so does its synth) are dropped
first, so chains line up. The report stage (stages.ANY_OUTCOME) is the exception: it is `afterany` on
every job of the launch and on those it found queued, so it runs whatever failed.
"""
from dataclasses import dataclass, field

from collapse.slurm_index import SubmissionError, base_id
from collapse.stages import ANY_OUTCOME


@dataclass
class Group:
    """One sbatch: stages of one kind at one level, in array-task order."""
    level: int
    kind: str
    stages: list
    corr: int | None = None                      # index of the group this one lines up with (aftercorr)
    after: dict = field(default_factory=dict)    # group index -> element indices needed (afterok)
    external: list = field(default_factory=list)  # job ids of earlier launches (afterok)
    any_outcome: bool = False                    # runs whatever its inputs' outcome (afterany): stages.ANY_OUTCOME
    job_id: str | None = None                    # the array's (or the job's) id, once submitted

    def task(self, i: int) -> str:
        return self.job_id if len(self.stages) == 1 else f"{self.job_id}_{i}"

    def dependency(self, groups: list, canary: str | None = None) -> str | None:
        """The --dependency of this group; with the launch's `canary` job, level 0 and the report wait for it."""
        own = self._dependency(groups)
        if canary and (self.level == 0 or self.any_outcome):
            return ",".join(filter(None, [own, f"afterok:{canary}"]))
        return own

    def _dependency(self, groups: list) -> str | None:
        if self.any_outcome:   # the report: after every other job, whatever their outcome
            ended = [g.job_id for g in groups if g is not self] + sorted(set(self.external))
            return "afterany:" + ":".join(ended) if ended else None
        parts = []
        if self.corr is not None:
            parts.append(f"aftercorr:{groups[self.corr].job_id}")
        ok = []
        for gi, needed in sorted(self.after.items()):
            g = groups[gi]
            ok += [g.job_id] if len(needed) == len(g.stages) else [g.task(i) for i in sorted(needed)]
        ok += sorted(set(self.external))
        if ok:
            parts.append("afterok:" + ":".join(ok))
        return ",".join(parts) or None


def make_groups(stages: list, external: dict | None = None) -> list[Group]:
    """Group `stages` (the ones to submit) into sbatch groups with their dependencies.

    external: key -> job id of stages queued or running from an earlier launch. Inputs neither in
    `stages` nor in `external` are taken as done.
    """
    external = external or {}
    by_key = {s.key: s for s in stages}
    deps_in = {s.key: list(dict.fromkeys(d for d in s.deps.values() if d in by_key)) for s in stages}

    level: dict[str, int] = {}
    ancestors: dict[str, set] = {}

    def visit(key, path=()):
        if key in level:
            return
        if key in path:
            raise SubmissionError(f"the stage graph has a cycle through {by_key[key].name}")
        for d in deps_in[key]:
            visit(d, path + (key,))
        level[key] = 1 + max((level[d] for d in deps_in[key]), default=-1)
        ancestors[key] = set().union(*({d} | ancestors[d] for d in deps_in[key])) if deps_in[key] else set()

    for s in stages:
        visit(s.key)
    # an input that another input already depends on adds nothing to the dependency
    reduced = {k: [d for d in ds if not any(d in ancestors[o] for o in ds if o != d)] for k, ds in deps_in.items()}

    kind_order = list(dict.fromkeys(s.kind for s in stages))
    buckets: dict[tuple, list] = {}
    for s in stages:
        buckets.setdefault((level[s.key], s.kind), []).append(s)
    groups: list[Group] = []
    where: dict[str, tuple] = {}    # key -> (group index, element index)
    for (lv, kind) in sorted(buckets, key=lambda lk: (lk[0], kind_order.index(lk[1]))):
        members = buckets[(lv, kind)]
        group = Group(lv, kind, members)
        inputs = [reduced[s.key] for s in members]
        homes = {where[ds[0]][0] for ds in inputs if len(ds) == 1}
        if (len(members) > 1 and all(len(ds) == 1 for ds in inputs) and len(homes) == 1
                and len({ds[0] for ds in inputs}) == len(members)
                and len(groups[next(iter(homes))].stages) == len(members)):
            group.corr = next(iter(homes))
            members.sort(key=lambda s: where[reduced[s.key][0]][1])
        else:
            for ds in inputs:
                for d in ds:
                    gi, ei = where[d]
                    group.after.setdefault(gi, set()).add(ei)
        for s in members:
            group.external += [external[d] for d in dict.fromkeys(s.deps.values()) if d in external]
        if kind in ANY_OUTCOME:
            group.any_outcome = True
            group.external = sorted({base_id(j) for j in external.values()}, key=int)
        for i, s in enumerate(members):
            where[s.key] = (len(groups), i)
        groups.append(group)
    return groups
