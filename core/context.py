"""Who and where this process is: :class:`RunContext`, built once per run and passed explicitly.

The ranks come from Lightning's cluster environments
(``lightning.fabric.plugins.environments``), tried in the order Lightning's
``Trainer`` tries them, so tuneforge and the trainer always agree:

1. ``TorchElasticEnvironment`` - ``torchrun`` (``TORCHELASTIC_RUN_ID`` is set);
   ranks from ``RANK``, ``LOCAL_RANK``, ``GROUP_RANK``, ``WORLD_SIZE``.
2. ``SLURMEnvironment`` - a task started by ``srun``: ``SLURM_NTASKS`` is set
   and the job is not interactive.  Ranks from ``SLURM_PROCID``,
   ``SLURM_LOCALID``, ``SLURM_NODEID``, world size ``SLURM_NTASKS``.  As in
   Lightning, a job named ``bash`` or ``interactive`` (``SLURM_JOB_NAME``,
   e.g. ``salloc`` + ``srun --pty bash``) does *not* count as SLURM: inside
   such a shell tuneforge, like Lightning, treats the process as a plain one
   and Lightning starts the other processes itself.
3. ``LSFEnvironment`` - ``jsrun`` on LSF (``LSB_JOBID``, ``JSM_NAMESPACE_*``).
4. ``MPIEnvironment`` - ``mpirun`` with ``mpi4py`` installed and more than one
   MPI process.
5. otherwise ``LightningEnvironment``: a process started by hand, or one of
   the processes Lightning's own DDP launcher starts.  Its local rank is
   ``LOCAL_RANK`` and its node rank ``NODE_RANK`` (both 0 when unset, as in the
   process the user started); the world size is ``WORLD_SIZE`` when the
   launcher set it, else what ``trainer.devices`` x ``trainer.num_nodes``
   will start.  A plain single-process run is rank 0 of 1.

No other module of tuneforge reads or writes rank or process-group
environment variables: everything that needs to know whether it is the main
process, which device it evaluates on, or whether tuneforge started the
processes of its node (:attr:`RunContext.starts_local_processes`,
:attr:`RunContext.early_process_group`) receives the :class:`RunContext`; the
processes tuneforge starts get their environment from it
(:meth:`RunContext.child_environment`).

The job id of the launch (``SLURM_JOB_ID``, torchrun's ``--rdzv-id``,
``LSB_JOBID``) is read here too: :func:`shared_run_dir` derives the one run
directory all processes of a multi-process launch agree on from it, and a
SLURM task's context carries it (:attr:`RunContext.slurm_job_id`) for the
requeue on ``SIGUSR1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

from tuneforge.errors import ConfigError

#: Lightning's cluster environments that start the processes themselves, in the order
#: ``lightning.pytorch``'s accelerator connector tries them (the fallback is LightningEnvironment)
CLUSTER_ENVIRONMENTS = ("TorchElasticEnvironment", "SLURMEnvironment", "LSFEnvironment", "MPIEnvironment")
LIGHTNING_ENVIRONMENT = "LightningEnvironment"

#: set in the processes tuneforge starts itself (:meth:`RunContext.child_environment`): all of them run the
#: whole run flow, so the process group can be made before the base evaluation; Lightning's own launcher
#: starts its children only inside ``fit``, where an early group would not match the main process's calls
EARLY_GROUP_VARIABLE = "TUNEFORGE_EARLY_PROCESS_GROUP"

#: launcher name, and how to start ``devices`` processes per node on ``nodes`` nodes with it
LAUNCH_HINTS = {
    "TorchElasticEnvironment": ("torchrun",
                                "'torchrun --nproc_per_node={devices} --nnodes={nodes} -m tuneforge train ...'"),
    "SLURMEnvironment": ("SLURM", "'srun --nodes={nodes} --ntasks-per-node={devices} tuneforge train ...'"),
    "LSFEnvironment": ("LSF", "jsrun, {devices} task(s) per node on {nodes} node(s)"),
    "MPIEnvironment": ("MPI", "mpirun, {devices} process(es) per node on {nodes} node(s)"),
}


class ProcessRanks(NamedTuple):
    """The ranks of this process as the detected cluster environment reports them."""

    global_rank: int
    local_rank: int
    node_rank: int
    world_size: int
    cluster_environment: str  #: class name of the Lightning cluster environment, e.g. "SLURMEnvironment"


@dataclass(frozen=True)
class RunContext:
    """Who and where this process is in a run; one per process, passed to what needs it.

    Under DDP every process runs the whole run flow (build, evaluation,
    fit) with its own context; only the main process (``is_main``, global
    rank 0) writes the run directory and prints.  Build it with
    :meth:`detect`.
    """

    #: the run directory (written only by the main process)
    run_dir: Path
    #: this process's rank among all processes of the run (0 is the main one)
    global_rank: int = 0
    #: this process's rank on its node (selects its GPU)
    local_rank: int = 0
    #: the index of this process's node
    node_rank: int = 0
    #: the number of processes of the run
    world_size: int = 1
    #: torch device string this process evaluates on: ``cuda:<index>`` or ``cpu``
    device: str = "cpu"
    #: ``--debug``: show full tracebacks instead of one-line errors
    debug: bool = False
    #: the resolved run config (a read-only ``omegaconf.DictConfig``), or None
    config: Any = field(default=None, repr=False, compare=False)
    #: the Lightning cluster environment the ranks came from
    cluster_environment: str = LIGHTNING_ENVIRONMENT
    #: the SLURM job to requeue on SIGUSR1 (``"123"``, ``"120_3"`` for an array task) when the
    #: processes were started by ``srun`` (``SLURMEnvironment``); else None
    slurm_job_id: Optional[str] = None
    #: the command that starts the other processes of this run on this node (ddp/fsdp without a
    #: cluster launcher; :mod:`tuneforge.training.launch`), e.g. ``python -m tuneforge train <this job's
    #: overrides> hydra.run.dir=<run dir>``; None: Lightning's launcher starts them inside ``fit``
    child_command: Optional[tuple] = field(default=None, compare=False)
    #: a launcher set this process's local rank (``LOCAL_RANK``: Lightning's or tuneforge's launcher,
    #: torchrun); False in a process the user started by hand
    local_rank_from_launcher: bool = False
    #: tuneforge started this process with the other processes of its node
    #: (:mod:`tuneforge.training.launch`), so their process group is made before the base evaluation
    early_process_group: bool = False

    @property
    def is_main(self) -> bool:
        """True in exactly one process of a run: global rank 0, which writes the run directory."""
        return self.global_rank == 0

    @property
    def starts_local_processes(self) -> bool:
        """True for the process the user started of a multi-process run that no launcher started
        (``LightningEnvironment``, no local rank from a launcher) and that knows how to start the others
        (:attr:`child_command`): under ``ddp``/``fsdp`` it starts local ranks 1..N-1 itself
        (:mod:`tuneforge.training.launch`), where Lightning's launcher would start them inside ``fit``."""
        return (self.world_size > 1 and self.local_rank == 0 and self.child_command is not None
                and self.cluster_environment == LIGHTNING_ENVIRONMENT and not self.local_rank_from_launcher)

    @property
    def process_group_before_fit(self) -> bool:
        """Whether a ``ddp``/``fsdp`` run may make its process group before ``fit`` (so that the base
        evaluation is shared out): when a cluster launcher started the processes, or tuneforge did (the
        process that starts them, :attr:`starts_local_processes`, and those it started,
        :attr:`early_process_group`); not for the children of Lightning's own launcher, which start
        inside the main process's ``fit``."""
        if self.cluster_environment != LIGHTNING_ENVIRONMENT:
            return True
        return self.early_process_group or self.starts_local_processes

    def launch_variables(self, main_address: str, main_port: int, local_rank: int = 0) -> dict:
        """The variables of Lightning's launch protocol (``LightningEnvironment``) for local rank
        ``local_rank`` of this node, in a run whose processes tuneforge starts: ``MASTER_ADDR`` and
        ``MASTER_PORT`` (the main process's), ``NODE_RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``.  With
        them Lightning sees the processes as started externally and starts none."""
        return {"MASTER_ADDR": str(main_address), "MASTER_PORT": str(main_port), "NODE_RANK": str(self.node_rank),
                "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(self.world_size)}

    def child_environment(self, local_rank: int, main_address: str, main_port: int) -> dict:
        """The environment of the process of local rank ``local_rank`` that this process starts: this
        one's environment, the launch variables of that rank (:meth:`launch_variables`) and the flag
        that gives its context :attr:`early_process_group`."""
        return dict(os.environ, **self.launch_variables(main_address, main_port, local_rank),
                    **{EARLY_GROUP_VARIABLE: "1"})

    def set_main_address(self) -> str:
        """Set ``MASTER_ADDR``/``MASTER_PORT`` from the Lightning cluster environment the ranks came from
        (:attr:`cluster_environment`); returns ``"address:port"``."""
        from lightning.fabric.plugins import environments

        env = getattr(environments, self.cluster_environment)()
        os.environ["MASTER_ADDR"] = str(env.main_address)
        os.environ["MASTER_PORT"] = str(env.main_port)
        return f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"

    @classmethod
    def detect(cls, run_dir, config=None, *, debug: bool = False, accelerator: Optional[str] = None,
               devices: Any = None, num_nodes: Optional[int] = None) -> "RunContext":
        """The context of this process, from Lightning's cluster environment (see the module docstring).

        ``accelerator``, ``devices`` and ``num_nodes`` default to
        ``config.trainer``'s; they decide the evaluation device (``cuda:<local
        rank>``, or the ``local rank``-th of an explicit GPU list, when the
        trainer would use GPUs; else ``cpu``) and, without a cluster
        environment, the world size.  Raises :class:`~tuneforge.ConfigError`
        when the cluster environment's variables are inconsistent.
        """
        trainer = _select(config, "trainer") or {}
        accelerator = str(accelerator if accelerator is not None else trainer.get("accelerator", "auto"))
        devices = devices if devices is not None else trainer.get("devices", "auto")
        num_nodes = int(num_nodes if num_nodes is not None else trainer.get("num_nodes", 1) or 1)
        ranks = detect_ranks(accelerator, devices, num_nodes)
        return cls(run_dir=Path(run_dir), global_rank=ranks.global_rank, local_rank=ranks.local_rank,
                   node_rank=ranks.node_rank, world_size=ranks.world_size,
                   device=evaluation_device(accelerator, devices, ranks.local_rank), debug=bool(debug),
                   config=_read_only(config), cluster_environment=ranks.cluster_environment,
                   slurm_job_id=slurm_job_id() if ranks.cluster_environment == "SLURMEnvironment" else None,
                   local_rank_from_launcher="LOCAL_RANK" in os.environ,
                   early_process_group=os.environ.get(EARLY_GROUP_VARIABLE) == "1")

    def check_process_count(self, devices: Any, num_nodes: Any) -> None:
        """Stop (one line) when a cluster launcher started another number of processes than
        ``trainer.devices`` x ``trainer.num_nodes``, naming the launcher flags that match.

        Checked only when a cluster environment (torchrun, SLURM, LSF, MPI)
        started the processes and both values are explicit (an integer, or a
        list of device ids, and an integer): with ``devices=auto`` Lightning
        decides itself.
        """
        if self.cluster_environment not in LAUNCH_HINTS:
            return
        per_node, _ = device_request(devices)
        if per_node is None or isinstance(num_nodes, bool) or not isinstance(num_nodes, int):
            return
        expected = per_node * num_nodes
        if expected == self.world_size:
            return
        launcher, hint = LAUNCH_HINTS[self.cluster_environment]
        raise ConfigError(
            f"{launcher} started {self.world_size} process(es) but trainer.devices={devices} x "
            f"trainer.num_nodes={num_nodes} needs {expected}; launch with "
            f"{hint.format(devices=per_node, nodes=num_nodes)}, or set trainer.devices and trainer.num_nodes "
            f"so that devices x num_nodes = {self.world_size}")

    def describe(self) -> str:
        """E.g. ``"rank 1 of 2 (node 0, local rank 1, SLURMEnvironment), evaluating on cpu"``."""
        return (f"rank {self.global_rank} of {self.world_size} (node {self.node_rank}, local rank {self.local_rank}, "
                f"{self.cluster_environment}), evaluating on {self.device}")


def detect_ranks(accelerator: str = "auto", devices: Any = "auto", num_nodes: int = 1) -> ProcessRanks:
    """This process's ranks from the first Lightning cluster environment whose ``detect()`` is true.

    ``accelerator``/``devices``/``num_nodes`` (the trainer's) only matter
    without a cluster environment, where they give the number of processes
    Lightning's launcher will start.
    """
    from lightning.fabric.plugins import environments

    for name in CLUSTER_ENVIRONMENTS:
        env_type = getattr(environments, name)
        if not env_type.detect():
            continue
        try:
            env = env_type()
            return ProcessRanks(int(env.global_rank()), int(env.local_rank()), int(env.node_rank()),
                                int(env.world_size()), name)
        except KeyError as exc:
            raise ConfigError(f"{name} detected but the environment variable {exc} is not set; start the "
                              f"processes with the cluster's launcher (srun, torchrun, jsrun, mpirun)") from exc
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{name}: {first}") from exc
    env = environments.LightningEnvironment()
    local_rank, node_rank = int(env.local_rank()), int(env.node_rank())
    nodes = max(int(num_nodes), 1)
    launched = os.environ.get("WORLD_SIZE")  # set by Lightning's launcher in the processes it starts
    world_size = int(launched) if launched else _device_count(accelerator, devices) * nodes
    per_node = max(world_size // nodes, 1)
    return ProcessRanks(node_rank * per_node + local_rank, local_rank, node_rank, world_size, LIGHTNING_ENVIRONMENT)


def slurm_job_id() -> Optional[str]:
    """The SLURM job of this process, as ``scontrol requeue`` names it: ``SLURM_JOB_ID``, or
    ``<SLURM_ARRAY_JOB_ID>_<SLURM_ARRAY_TASK_ID>`` for an array task; None outside a SLURM job."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID") or None


def launch_id() -> Optional[str]:
    """An id that every process of this launch shares and that a relaunch of the same job keeps:
    ``slurm-<job>`` (inside a SLURM job, also for torchrun started by it), else ``torchrun-<rdzv id>``
    (torchrun's ``--rdzv-id``; its placeholder ``none`` does not count), else ``lsf-<LSB_JOBID>``."""
    job = slurm_job_id()
    if job:
        return f"slurm-{job}"
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if rdzv and rdzv.lower() != "none":
        return f"torchrun-{rdzv}"
    lsf = os.environ.get("LSB_JOBID")
    return f"lsf-{lsf}" if lsf else None


def shared_run_dir(ranks: ProcessRanks, num_nodes: int, root: str = "runs") -> Optional[str]:
    """The run directory of a launch whose processes cannot agree on a timestamped one, or None.

    Hydra's default ``runs/<date_time>`` is computed in each process.  That is
    safe only when one process computes it and starts the others (a plain run,
    or Lightning's own launcher with ``trainer.devices=N`` on one machine,
    which passes ``hydra.run.dir=<its directory>`` to the processes it
    starts).  When a cluster launcher (torchrun, srun, jsrun, mpirun) starts
    several processes, or the run spans several nodes, each would pick the
    second its clock shows; then every process uses ``<root>/<launch id>``
    (:func:`launch_id`: the SLURM job, torchrun's ``--rdzv-id``, the LSF job),
    which a requeued job keeps, so ``resume=auto`` continues it.  Without such
    an id this raises a one-line :class:`~tuneforge.ConfigError` asking for
    ``run_dir=``.  Call it only when no run directory was given.
    """
    external = ranks.cluster_environment in LAUNCH_HINTS and ranks.world_size > 1
    multi_node = int(num_nodes or 1) > 1 or ranks.node_rank > 0
    if not (external or multi_node):
        return None
    job = launch_id()
    if job:
        return f"{root}/{job}"
    launcher = LAUNCH_HINTS.get(ranks.cluster_environment, ("Lightning's launcher",))[0]
    nodes = f" on {max(int(num_nodes or 1), ranks.node_rank + 1)} nodes" if multi_node else ""
    hint = " (or give torchrun --rdzv-id=<job id>)" if ranks.cluster_environment == "TorchElasticEnvironment" else ""
    raise ConfigError(f"{ranks.world_size} processes started by {launcher}{nodes} need one run directory that all "
                      f"of them agree on, and this launch has no job id to name it after: set run_dir=<dir> on "
                      f"storage every node sees{hint}")


def evaluation_device(accelerator: str, devices: Any, local_rank: int) -> str:
    """The torch device this process evaluates on: the GPU Lightning gives it, or ``cpu``.

    With a GPU accelerator (``auto``, ``gpu``, ``cuda``) and CUDA available,
    local rank ``r`` uses ``cuda:<devices[r]>`` for an explicit list of
    device ids and ``cuda:<r>`` otherwise, as Lightning assigns them.
    """
    if str(accelerator) not in ("auto", "gpu", "cuda"):
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    _, ids = device_request(devices)
    index = ids[local_rank] if ids and local_rank < len(ids) else local_rank
    visible = torch.cuda.device_count()
    if index >= visible:
        raise ConfigError(f"this process (local rank {local_rank}) would use cuda:{index} but {visible} GPU(s) "
                          f"are visible; start at most {visible} process(es) per node, or list "
                          f"trainer.devices=[...] from the visible GPUs")
    return f"cuda:{index}"


def device_request(devices: Any) -> tuple[Optional[int], Optional[list]]:
    """``(count per node, explicit ids)`` that ``trainer.devices`` asks for, as Lightning reads it.

    ``2`` or ``"2"`` -> ``(2, None)``; ``[0, 3]`` or ``"0,3"`` -> ``(2, [0, 3])``;
    ``"auto"`` or ``-1`` (Lightning decides) -> ``(None, None)``.
    """
    if isinstance(devices, bool):
        return None, None
    if isinstance(devices, int):
        return (None, None) if devices < 0 else (devices, None)
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            ids = [int(part) for part in text.split(",") if part.strip().lstrip("-").isdigit()]
            return len(ids), ids
        return (int(text), None) if text.isdigit() else (None, None)
    try:
        ids = [int(item) for item in devices]
    except (TypeError, ValueError):
        return None, None
    return len(ids), ids


def _device_count(accelerator: str, devices: Any) -> int:
    """Processes per node that Lightning's launcher starts for ``devices`` (``auto``: every visible GPU, or 1)."""
    count, _ = device_request(devices)
    if count is not None:
        return max(count, 1)
    if str(accelerator) in ("auto", "gpu", "cuda"):
        import torch

        if torch.cuda.is_available():
            return max(torch.cuda.device_count(), 1)
    return 1


def _select(config, key: str):
    if config is None:
        return None
    try:
        return config.get(key)
    except AttributeError:
        return None


def _read_only(config):
    """A resolved, read-only copy of ``config`` (None stays None)."""
    if config is None:
        return None
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(config):
        config = OmegaConf.create(config)
    copy = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    OmegaConf.set_readonly(copy, True)
    return copy


#: environment variables a launcher sets in the processes it starts (Lightning's DDP launcher,
#: torchrun, srun, jsrun, mpirun); with none of them set this process is the main one of its run
LAUNCHER_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK", "WORLD_SIZE", "SLURM_NTASKS", "LSB_JOBID",
                      "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


def processes_on_this_node(context: "RunContext") -> Optional[int]:
    """How many processes the launcher started on this node (torchrun's ``LOCAL_WORLD_SIZE``; SLURM's
    ``SLURM_STEP_TASKS_PER_NODE``/``SLURM_TASKS_PER_NODE``, e.g. ``2(x3),1``, for this node; MPI's local
    size), or None when the launcher does not say."""
    if context.cluster_environment == "TorchElasticEnvironment":
        names = ("LOCAL_WORLD_SIZE",)
    elif context.cluster_environment == "SLURMEnvironment":
        names = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    else:
        names = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")
    for name in names:
        counts = []
        for part in os.environ.get(name, "").split(","):
            count, _, times = part.strip().partition("(x")
            if not count.isdigit() or (times and not times.rstrip(")").isdigit()):
                counts = []
                break
            counts += [int(count)] * (int(times.rstrip(")")) if times else 1)
        if counts:
            return counts[context.node_rank] if context.node_rank < len(counts) else counts[-1]
    return None


def started_by_a_launcher() -> bool:
    """True when a launcher's variables are set (cheap: no Lightning import); False means a plain
    single process, which is the main one of its run."""
    import os

    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def set_environment(variables: dict) -> dict:
    """Set ``variables`` in this process's environment (a value of None removes the variable, e.g. the
    launch variables of a run whose processes tuneforge started); returns the values they had before, which
    this function sets back."""
    before = {name: os.environ.get(name) for name in variables}
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    return before
