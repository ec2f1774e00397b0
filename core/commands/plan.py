"""``tuneforge plan [--memory SIZE] <overrides>``: a run's memory per device before anything loads.

The overrides are ``train``'s; the config is composed and validated as for ``train`` (one-line errors,
exit 2), the model is sized from its architecture alone (no weights are read) and the estimate is
printed against the device's memory (:mod:`tuneforge.planning`).  Exit 0 once the plan is printed
(whether the run fits is its answer; with ``--check``, 1 when it does not fit), 2 for a bad argument or
config.
"""

from __future__ import annotations

from tuneforge.errors import ConfigError

HELP = """\
usage: tuneforge plan [--memory SIZE] [--check] [key=value ...]

The memory a run needs per device (weights, trainable weights, gradients, optimizer state,
activations, runtime), estimated from the model's config before anything loads, against the
device's memory: the GPU's (torch.cuda) for trainer.accelerator=gpu, else this machine's RAM.
When it does not fit, the cheapest changes that make it fit are printed as overrides.

  --memory SIZE   plan for a device with SIZE of memory instead of this machine's (24GiB, 80GB, 512MiB;
                  GB means GiB), e.g. a GPU you do not have here:
                    tuneforge plan model=hf model.path=examples/configs/llama-3-8b trainer.accelerator=gpu --memory 24GiB
  --check         exit with status 1 when the run does not fit (for scripts); without it the status is 0
                  whenever the plan is printed

The overrides are train's (tuneforge train --help).  Exit status: 0 planned (with --check: 0 fits,
1 does not fit), 2 bad input.
See docs/memory.md for how the estimate is made and how it compares with measured peaks.
"""


def plan_command(args: list, debug: bool = False) -> None:
    """``tuneforge plan <args>``."""
    if {"-h", "--help"} & set(args):
        print(HELP, end="")
        return
    check = "--check" in args
    memory, overrides = memory_argument([arg for arg in args if arg != "--check"])
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.planning.plan import format_plan, plan_run

    plugins = load_plugins(overrides)
    run = run_components(compose(overrides), plugins)

    def replan(extra: list):
        return run_components(compose([*overrides, *extra]), plugins)

    plan = plan_run(run, memory, replan=replan)
    print(format_plan(plan))
    if check and not plan.fits:
        raise SystemExit(1)


def memory_argument(args: list) -> tuple:
    """``(bytes or None, the other arguments)`` of ``--memory SIZE`` / ``--memory=SIZE`` among ``args``."""
    from tuneforge.planning.sizes import parse_memory

    memory, rest, index = None, [], 0
    while index < len(args):
        arg = args[index]
        if arg == "--memory":
            if index + 1 >= len(args):
                raise ConfigError("--memory needs a size, e.g. --memory 24GiB")
            memory, index = parse_memory(args[index + 1], "--memory"), index + 2
            continue
        if arg.startswith("--memory="):
            memory = parse_memory(arg.split("=", 1)[1], "--memory")
        elif arg.startswith("-"):
            raise ConfigError(f"tuneforge plan: unknown option '{arg}'; valid: --memory SIZE, --check, --help")
        else:
            rest.append(arg)
        index += 1
    return memory, rest
