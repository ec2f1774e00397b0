"""Starting the other processes of a multi-process run on this node, before anything is evaluated.

With ``strategy=ddp`` or ``fsdp`` and ``trainer.devices=N`` on a plain process (no torchrun, srun,
... : Lightning's ``LightningEnvironment``), Lightning's launcher would start the N-1 other
processes only inside ``trainer.fit`` by re-running ``sys.argv``: the base evaluation could not be
shared out, and under ``tuneforge train -m ...`` each child would start a sweep of its own.
tuneforge starts them itself, at the start of the run, with
:attr:`tuneforge.RunContext.child_command` -- for ``tuneforge train`` that is
``python -m tuneforge train <this job's overrides> hydra.run.dir=<this job's run dir>``: a
single run with exactly the composed config of this job (of a sweep job too), never a sweep.  Each
child's environment comes from the run context (:meth:`tuneforge.RunContext.child_environment`):
Lightning's launch variables, so Lightning sees the processes as started externally and starts
none, and the mark that makes their contexts' :attr:`~tuneforge.RunContext.early_process_group`
true, so the default process group is initialized before the base evaluation
(:func:`tuneforge.evaluation.sharding.init_process_group`).
"""

from __future__ import annotations

import logging
import subprocess
from typing import Optional

log = logging.getLogger("tuneforge")

#: strategies whose processes are started by re-running the command (Lightning's subprocess launcher)
SUBPROCESS_STRATEGIES = ("ddp", "fsdp")


class LocalProcesses:
    """The processes this one started (:func:`start_local_processes`) and the environment it changed."""

    def __init__(self, procs: list, saved_env: dict, group_started: bool = False):
        self.procs, self.saved_env, self.group_started = procs, saved_env, group_started

    def finish(self, ok: bool, timeout: float = 600.0) -> None:
        """Wait for the children (``ok``) or stop them; then destroy the process group this run made and
        restore the environment, so that the next job of a sweep in this process starts afresh."""
        for proc in self.procs:
            if not ok and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=timeout if ok else 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        import torch.distributed as dist

        if self.group_started and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        from tuneforge.context import set_environment

        set_environment(self.saved_env)


def needs_local_launch(cfg, context) -> bool:
    """True for the process the user started of a multi-process run that Lightning would launch itself
    (:attr:`tuneforge.RunContext.starts_local_processes` under a ``ddp``/``fsdp`` strategy)."""
    return context.starts_local_processes and str(cfg.strategy.name) in SUBPROCESS_STRATEGIES


def start_local_processes(cfg, context) -> Optional[LocalProcesses]:
    """Start local ranks 1..N-1 of this node with ``context.child_command`` (see the module docstring);
    None when this process does not start any (:func:`needs_local_launch`).  This process gets local
    rank 0's launch variables (:meth:`tuneforge.RunContext.launch_variables`) until
    :meth:`LocalProcesses.finish`."""
    if not needs_local_launch(cfg, context):
        return None
    from lightning.fabric.plugins.environments import LightningEnvironment

    from tuneforge.context import device_request, set_environment

    per_node = device_request(cfg.trainer.devices)[0] or context.world_size // max(int(cfg.trainer.num_nodes), 1)
    env = LightningEnvironment()
    address, port = env.main_address, env.main_port
    saved = set_environment(context.launch_variables(address, port))
    procs = []
    for local_rank in range(1, per_node):
        procs.append(subprocess.Popen(list(context.child_command),
                                      env=context.child_environment(local_rank, address, port)))
    log.info("started %d more process(es): %s", len(procs), " ".join(context.child_command))
    from lightning.fabric.strategies.launchers.subprocess_script import _launch_process_observer

    _launch_process_observer(procs)  # a child that fails stops the others and this process
    return LocalProcesses(procs, saved)


#: how the run is started again on every node, by the cluster environment that started it
_RELAUNCH = {"TorchElasticEnvironment": "torchrun --nnodes={nodes} --nproc_per_node={per_node} <the same rendezvous "
                                        "flags> -m tuneforge train <the arguments above>",
             "SLURMEnvironment": "srun --nodes={nodes} --ntasks-per-node={per_node} tuneforge train <the arguments "
                                 "above>, in a job of {nodes} nodes (or resubmit the job's sbatch script)"}


def relaunch_note(context, num_nodes) -> str:
    """What to add to the printed resume command of a run that a cluster launcher started on several nodes
    (a line, starting with a newline): that command is run on every node, under the same launcher; alone on
    one machine it would wait for the other nodes until ``trainer.collective_timeout_s``.  ``""`` for a run
    on one node, where the printed command starts the processes itself (``trainer.devices=N``)."""
    from tuneforge.context import CLUSTER_ENVIRONMENTS

    nodes = int(num_nodes)
    if context.cluster_environment not in CLUSTER_ENVIRONMENTS or nodes <= 1:
        return ""
    per_node = max(context.world_size // nodes, 1)
    how = _RELAUNCH.get(context.cluster_environment, "{per_node} process(es) on each of {nodes} nodes, started as "
                                                     "before").format(nodes=nodes, per_node=per_node)
    return (f"\nThis run spans {nodes} nodes: launch that command as before, on every node ({how}); run alone on "
            "one machine it would wait for the other nodes")
