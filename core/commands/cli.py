"""The ``tuneforge`` command line.

    tuneforge train [--debug] [key=value ...]   fine-tune (Hydra overrides; -m for sweeps)
    tuneforge plan [--memory SIZE] [key=value ...]  memory per device before a run (docs/memory.md)
    tuneforge plugins                           installed plugins and what each contributes
    tuneforge data show [key=value ...]         the data as a run trains on it, trained tokens marked
    tuneforge --help | --version

This module imports nothing heavy at import time, so ``--help`` is instant.
"""

from __future__ import annotations

import os
import sys

USAGE = """\
usage: tuneforge <command> [options] [key=value ...]

Fine-tune pretrained language models with plugins for datasets, adapters,
losses and evaluators, composed by Hydra and run by Lightning.

commands:
  train      fine-tune; arguments are Hydra overrides, e.g.
               tuneforge train model=tiny data=jsonl data.path=train.jsonl adapter=lora adapter.r=8
             'tuneforge train --help [group=choice]' lists config groups, their choices and the fields
             (type, default, doc) of the selected choices;
             '--cfg job' prints the composed config; '-m' sweeps over values;
             'evidence.seeds=3' trains 3 seeds (<run_dir>/seed-<seed>) and folds them (seeds.json).
  plan       the memory a run needs per device, estimated from the model's config before anything loads,
             against the device's memory, and the cheapest changes that make it fit; train's overrides:
               tuneforge plan model=smollm2 adapter=lora [--memory 24GiB]   (docs/memory.md)
  plugins    list installed plugins, their versions and the components they contribute; a broken plugin
             is listed with its one-line reason, an entry point in a wrong group as 'not loaded'
  eval       run the evaluators on a finished run (base vs tuned) or on a bare model:
               tuneforge eval run_dir=runs/x [evaluators=[exact_match,rouge] data.val_path=...]
               tuneforge eval model=hf model.path=... data.path=... [out=<dir>]
  generate   answer one prompt with a run's tuned model, streaming to stdout:
               tuneforge generate run_dir=runs/x prompt="..." [max_new_tokens=256 temperature=0 top_p=1 system=... threads=N]
               (system: default the training system prompt when every training example had the same one)
  chat       chat with a run's tuned model on stdin (keeps the history; /exit or EOF quits):
               tuneforge chat run_dir=runs/x [system=... temperature=0 threads=N]
  export     merge the run's LoRA/IA3 adapter into the base weights and save a Hugging Face model folder:
               tuneforge export run_dir=runs/x out=merged/
  serve      an OpenAI-compatible HTTP server (chat/completions, completions, models) for one or more runs
             of one base, each run's adapter by name plus 'base' (docs/serving.md):
               tuneforge serve run_dir=runs/a [run_dir=runs/b] [host=127.0.0.1 port=8000 api_key=...]
             'tuneforge <generate|chat|export|serve> --help' lists their keys.

  compare    runs side by side (e.g. a data.max_examples sweep, seeds): every column, verdicts, mean and
             spread over seeds; comparison.md and data_efficiency.png in a new compare-<date>_<time>/ (or out=)
               tuneforge compare runs/multirun/<date>
  status     how runs ended (completed, failed with its error, interrupted, running):
               tuneforge status runs/<run> | runs/multirun/<date>
  data       your data as a run trains on it: stats, the first examples with their file:line, token counts
             and the trained tokens marked [[...]], and the quality warnings; train's overrides:
               tuneforge data show model=tiny data=jsonl data.path=train.jsonl [--n 3] [--val]
  config     what can be configured: 'tuneforge config groups' (choices and the plugin providing each),
             'tuneforge config show adapter=lora' (a choice's fields with type, default and doc)
  new-plugin write a ready plugin package to start from:
               tuneforge new-plugin NAME [--dir PATH]
                 [--kinds model,dataset,adapter,loss,evaluator,callback,baseline,logger,optimizer,reward]

options:
  -h, --help     show this help
  --version      show the version
  --debug        show full tracebacks instead of one-line errors (HYDRA_FULL_ERROR=1 does the same)

environment:
  TUNEFORGE_DISABLE_PLUGINS=a,b    never import these plugins (entry-point names)
  TUNEFORGE_PLUGINS_AUTOLOAD=0     load only tuneforge's own plugins (plus plugins.enable=[...])
"""

#: command -> "module:function"; each function takes the remaining argv list.
#: Modules are imported only when their command runs.
COMMANDS = {
    "train": "tuneforge.commands.train:train_command",
    "plan": "tuneforge.commands.plan:plan_command",
    "plugins": "tuneforge.commands.cli:plugins_command",
    "eval": "tuneforge.commands.eval:eval_command",
    "generate": "tuneforge.commands.generate:generate_command",
    "chat": "tuneforge.commands.chat:chat_command",
    "export": "tuneforge.commands.export:export_command",
    "serve": "tuneforge.commands.serve:serve_command",
    "compare": "tuneforge.commands.compare:compare_command",
    "status": "tuneforge.commands.status:status_command",
    "config": "tuneforge.commands.config:config_command",
    "data": "tuneforge.commands.data:data_command",
    "new-plugin": "tuneforge.commands.new_plugin:new_plugin_command",
}


def _fail(message: str) -> "NoReturn":  # noqa: F821
    """Print each line of ``message`` (one problem a line) as ``tuneforge: error: ...`` and exit 2."""
    for line in str(message).splitlines() or [""]:
        print(f"tuneforge: error: {line}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None) -> None:
    """Run the command of ``argv`` (default: the command line).  Without ``argv`` this is the
    ``tuneforge`` program itself (or ``python -m tuneforge``): only then may a command tune the
    process's garbage collector (:func:`leave_without_final_collection`); code that calls
    ``main([...])`` (tests, notebooks) keeps its collector as it was."""
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is passed on explicitly (to commands that take ``debug``), never exported to the environment;
    # a user's own HYDRA_FULL_ERROR=1 means the same
    debug = "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    argv = [arg for arg in argv if arg != "--debug"]
    if argv and argv[0] in COMMANDS:
        command, args = argv[0], argv[1:]
    elif not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    elif argv[0] == "--version":
        from tuneforge import __version__

        print(f"tuneforge {__version__}")
        return
    else:
        from tuneforge.errors import did_you_mean

        _fail(f"unknown command '{argv[0]}'{did_you_mean(argv[0], COMMANDS)}; valid: {', '.join(COMMANDS)}")
    import importlib
    import inspect

    from tuneforge.errors import TuneforgeError

    quiet_optional_kernel_notice()
    module_name, function_name = COMMANDS[command].split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    parameters = inspect.signature(handler).parameters
    options = {name: value for name, value in (("debug", debug), ("program", program)) if name in parameters}

    try:
        if command in COMPOSE_API_COMMANDS or (command == "train" and {"-h", "--help"} & set(args)):
            from tuneforge.host.config_files import config_dir_as_searchpath

            args = config_dir_as_searchpath(args)  # Hydra's --config-dir, for commands that compose without hydra.main
        handler(args, **options)
    except TuneforgeError as exc:
        if debug:
            raise
        _fail(str(exc))
    except OSError as exc:  # the last resort: a file-system error no command explained (a read-only folder)
        if debug:
            raise
        _fail(describe_os_error(exc, command))
    except KeyboardInterrupt:
        if debug or command == "train":  # train stops on SIGINT itself (a checkpoint, the resume command)
            raise
        print(f"tuneforge: {command} interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if program:
            leave_without_final_collection()


#: the commands that compose the config with Hydra's compose API: ``--config-dir`` becomes ``hydra.searchpath``
COMPOSE_API_COMMANDS = ("data", "plan", "eval", "config")


#: function names (in the traceback, innermost first) -> what was being done when an OSError was raised
OS_OPERATIONS = (
    (("mkdir", "makedirs"), "cannot create the folder"),
    (("rename", "replace", "move", "copytree", "copy", "copy2", "copyfile"), "cannot move or copy"),
    (("unlink", "remove", "rmtree", "rmdir"), "cannot remove"),
    (("write_text", "write_bytes", "write", "dump", "savefig", "save", "save_file", "save_pretrained"),
     "cannot write"),
    (("read_text", "read_bytes", "load", "load_file", "iterdir", "scandir", "listdir", "stat"), "cannot read"),
)


def describe_os_error(exc: OSError, command: str = "") -> str:
    """One line for an ``OSError`` that reached the command line: ``<what failed>: <path> (<reason>); <hint>``.

    What failed comes from the functions it passed through (creating a folder, writing, reading) or else
    from its error number; the hint says what to change (a writable folder, free space, a folder in place
    of a file).  An error without a path (a network error) is its type and first line."""
    import errno

    from tuneforge.errors import first_line, is_disk_full

    number = exc.errno
    reason = exc.strerror or first_line(exc)
    path = exc.filename
    if path is None:
        text = first_line(exc)
        return f"{type(exc).__name__}: {text}" + ("" if text.endswith(")") else "; rerun with --debug for the "
                                                                                   "traceback")
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    shown = os.path.abspath(str(path))
    if exc.filename2 is not None:
        shown += f" -> {os.path.abspath(os.fsdecode(exc.filename2))}"
    operation = _failed_operation(exc)
    if is_disk_full(exc):
        return (f"no space left on the device while writing {shown} ({reason}); free space on it, or write "
                f"elsewhere{_where_to_write(command)}")
    if number in (errno.EACCES, errno.EPERM) and operation == "cannot read":
        return f"{operation}: {shown} ({reason}); make it readable, or give another path"
    if number in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"{operation or 'cannot write'}: {shown} ({reason}); give a directory you can write to"
                f"{_where_to_write(command)}")
    if number == errno.EEXIST:
        return (f"{operation or 'cannot create'}: {shown} ({reason}): a file of that name is in the way; give "
                "a folder, or a path that does not exist yet")
    if number == errno.ENOTDIR:
        return f"{operation or 'cannot open'}: {shown} ({reason}): a part of the path is a file, not a folder"
    if number == errno.EISDIR:
        return f"{operation or 'cannot open'}: {shown} ({reason}): give a file, not a folder"
    if number == errno.ENOENT:
        return f"{operation or 'cannot open'}: {shown} ({reason}); check the path"
    return f"{operation or 'file system error'}: {shown} ({reason})"


def _failed_operation(exc: BaseException) -> str:
    """What :data:`OS_OPERATIONS` says the innermost function of ``exc``'s traceback that it names was
    doing; "" when none is named."""
    import traceback

    names = [frame.name for frame in traceback.extract_tb(exc.__traceback__)][::-1]
    for name in names:
        for functions, operation in OS_OPERATIONS:
            if name in functions:
                return operation
    return ""


def _where_to_write(command: str) -> str:
    """Where a command's output folder is chosen, for the hint of a write that failed."""
    if command == "train":
        return (" (run_dir=<folder>, or run from a writable working directory: runs go to ./runs by default; "
                "hydra.run.dir= sets Hydra's job folder)")
    if command in ("export", "eval", "compare"):
        return " (out=<folder>)"
    return ""


#: the logger and the start of the one message :func:`quiet_optional_kernel_notice` silences
KERNEL_NOTICE = ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community")


def _not_the_kernel_notice(record) -> bool:
    return not str(record.msg).startswith(KERNEL_NOTICE[1])


def quiet_optional_kernel_notice() -> None:
    """Silence the one warning bitsandbytes (imported by peft) logs on every import on a CPU with
    AVX512-BF16 when the optional ``kernels`` package is missing, "Failed to load CPU gemm_4bit_forward
    from kernels-community": its CPU 4-bit layers then use its own slower path, and runs that quantize
    nothing never reach them.  A filter on that logger drops this message only, so bitsandbytes' other
    warnings and errors still show; set here, before any command imports peft, and once however often
    ``main`` runs."""
    import logging

    logging.getLogger(KERNEL_NOTICE[0]).addFilter(_not_the_kernel_notice)  # adding it again is a no-op


def leave_without_final_collection() -> None:
    """End the ``tuneforge`` program without the garbage collector's final passes over every object.

    When the interpreter exits it clears each module and runs the cyclic collector over all objects
    still alive: with torch, Lightning (and the torchmetrics, scipy and matplotlib it imports) and
    transformers loaded, that takes about a second and finds nothing to free (``docs/performance.md``,
    "Start-up").  The command's own garbage is collected here first, as the interpreter would (its
    finalizers run: files closed, temporary folders removed); then the survivors, the loaded modules
    and what they hold, are frozen (``gc.freeze``), out of the collector's reach.  Reference counting
    still frees what it frees at exit, ``atexit`` handlers still run, and the operating system
    reclaims the rest.  Python never promises ``__del__`` for objects alive at exit (its data model
    reference, ``object.__del__``)."""
    import gc

    gc.collect()
    gc.freeze()


def plugins_command(args: list) -> None:
    """``tuneforge plugins``: every installed plugin with its distribution and contributions.  It always
    lists: a broken plugin (failing import, registration hook or config class) is shown as ``broken``
    with its one-line reason, and entry points in a near-miss group as ``not loaded: wrong group``."""
    from tuneforge.host.compose import plugin_selection
    from tuneforge.host.plugin_manager import ENTRY_POINT_GROUP, create_plugin_manager
    from tuneforge.host.schema import register_configs

    plugins = create_plugin_manager(plugin_selection(args), tolerate_broken=True)
    register_configs(plugins, broken=plugins.broken)  # a config class Hydra refuses breaks its plugin too
    loaded = {name: info for name, info in plugins.infos.items() if name not in plugins.broken}
    width = max(len("plugin"), *(len(name) for name in [*loaded, *plugins.broken]))
    print(f"{'plugin':<{width}}  {'distribution':<20}  contributes")
    for name, info in loaded.items():
        dist = f"{info.distribution} {info.version}".strip()
        contributes = "; ".join(f"{group}: {', '.join(names)}"
                                for group, names in plugins.contributions(name).items())
        print(f"{name:<{width}}  {dist:<20}  {contributes or '(lifecycle hooks only)'}")
    for name, reason in plugins.broken.items():
        print(f"{name:<{width}}  broken: {reason}")
    for group, name, value, dist in plugins.misplaced:
        print(f"{name:<{width}}  not loaded: wrong group: entry point '{name} = {value}' of distribution "
              f"'{dist}' is in group '{group}'; tuneforge loads the group '{ENTRY_POINT_GROUP}'")
    if plugins.blocked:
        print(f"blocked (not imported): {', '.join(plugins.blocked)}")
