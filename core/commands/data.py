"""``tuneforge data show [--n N] [--val] [--no-color] <overrides>``: your data as training sees it.

The overrides are ``train``'s; the config is composed and validated as for ``train`` (one-line errors,
exit 2), the model source's tokenizer is loaded (its ``load_tokenizer`` when it has one: no weights are
read; ``model=tiny`` builds it in memory, offline) and the dataset is loaded with it exactly as a run
loads it (same reader, format detection, chat template, split, shuffle, truncation and cache).  Then
the data stats, the first N training examples (and held-out ones with ``--val``) with their
``file:line``, token counts and text, the trained tokens marked ``[[...]]`` (in color on a terminal),
and the data quality report's warnings and problems are printed.  Nothing is trained or written (but
the data cache, as by a run).
"""

from __future__ import annotations

import os
import sys

from tuneforge.errors import ConfigError, did_you_mean

USAGE = """\
usage: tuneforge data show [--n N] [--val] [--no-color] [key=value ...]

Load the dataset a run with these overrides would train on (the same config, tokenizer, chat
template, split and truncation) and print its stats, the first N training examples with their
file:line, token counts (total / trained) and text with the trained tokens marked [[...]] (in
color on a terminal), and the data quality warnings.  Nothing is trained.
  tuneforge data show model=tiny data=jsonl data.path=train.jsonl --n 5

  --n N        examples to show per split (default 3)
  --val        show the first N held-out examples too
  --no-color   mark trained tokens with [[...]] even on a terminal (so does NO_COLOR=1)

The overrides are train's (tuneforge train --help); see docs/data.md, "Seeing what is trained".
"""

SUBCOMMANDS = ("show",)
#: the ANSI sequences around trained text on a terminal (bold green, then reset)
COLOR_MARKS = ("\x1b[1;32m", "\x1b[0m")


def data_command(args: list) -> None:
    """``tuneforge data show ...``."""
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if args[0] not in SUBCOMMANDS:
        raise ConfigError(f"unknown data subcommand '{args[0]}'{did_you_mean(args[0], SUBCOMMANDS)}; "
                          f"valid: {', '.join(SUBCOMMANDS)} (tuneforge data show key=value ...)")
    if {"-h", "--help"} & set(args[1:]):
        print(USAGE, end="")
        return
    count, val, color, overrides = show_options(args[1:])
    if color is None:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(show(overrides, count=count, val=val, color=color), end="")


def show_options(args: list) -> tuple:
    """``(N, --val, color: False for --no-color else None, the overrides)`` of ``data show``'s arguments."""
    count, val, color, overrides, index = 3, False, None, [], 0
    while index < len(args):
        arg = args[index]
        if arg == "--n" or arg.startswith("--n="):
            value = arg.split("=", 1)[1] if "=" in arg else (args[index + 1] if index + 1 < len(args) else "")
            index += 1 if "=" in arg else 2
            if not value.isdigit():
                raise ConfigError(f"--n needs a number of examples (0 or more), got {value!r}")
            count = int(value)
            continue
        if arg == "--val":
            val = True
        elif arg == "--no-color":
            color = False
        elif arg.startswith("-"):
            raise ConfigError(f"tuneforge data show: unknown option '{arg}'; valid: --n N, --val, --no-color, "
                              "--help")
        else:
            overrides.append(arg)
        index += 1
    return count, val, color, overrides


def show(overrides: list, count: int = 3, val: bool = False, color: bool = False) -> str:
    """The text ``tuneforge data show`` prints for these overrides."""
    from tuneforge.data import quality
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.training.model_io import load_run_data

    plugins = load_plugins(overrides)
    run = run_components(compose(overrides), plugins)
    tokenizer = run_tokenizer(run)
    splits = load_run_data(run, tokenizer)  # as a run loads it
    settings = run.settings.quality
    report = quality.assess(splits, settings.max_labels, settings.identical_pair_share)
    lines = [*stats_lines(run, splits, tokenizer, report, color)]
    for name, examples in (("train", splits.train), ("val", splits.val if val else [])):
        for number, example in enumerate(examples[:count], start=1):
            lines += ["", *example_lines(example, tokenizer, f"{name} {number} of {len(examples)}", color)]
    lines.append("")
    if report.get("labels"):
        others = f", and {report['label_others']} targets that occur once" if report.get("label_others") else ""
        lines.append("label balance (training targets): "
                     + ", ".join(f"{label!r} {count}" for label, count in report["labels"].items()) + others)
    lines += [f"data quality: {warning}" for warning in report["warnings"]] or ["data quality: no warnings"]
    lines += [f"data quality: {problem} (training stops here)" for problem in quality.problems(report, settings)]
    return "\n".join(lines) + "\n"


def run_tokenizer(run):
    """The tokenizer of the run's model source: its ``load_tokenizer``, else the tokenizer ``load`` gives
    (the model it loads is left unused)."""
    from tuneforge.host import plugin_returns
    from tuneforge.host.guard import spec_call
    from tuneforge.training.model_io import load_source_model

    spec = run.model.spec
    if spec.load_tokenizer is not None:
        return spec_call(spec, "load_tokenizer", spec.load_tokenizer, run.model.config,
                         returns=plugin_returns.tokenizer())
    return load_source_model(spec, run.model.config, run.loss.spec.model_head)[1]


def stats_lines(run, splits, tokenizer, report: dict, color: bool) -> list:
    """The header: the dataset's counts, the tokens per example, how examples are rendered, the marks."""
    from tuneforge.data import has_chat_template

    stats = splits.stats
    formats = ", ".join(f"{name} {n}" for name, n in (stats.get("formats") or {}).items())
    counts = (f"data={run.data.name}: {stats.get('train_examples', len(splits.train))} train / "
              f"{stats.get('val_examples', len(splits.val))} held-out examples from "
              f"{stats.get('train_records', '?')} / {stats.get('val_records', '?')} records")
    lines = [counts + (f"; formats: {formats}" if formats else ""),
             f"over data.max_length: {stats.get('truncated', 0)} truncated, {stats.get('dropped', 0)} dropped; "
             f"over data.max_record_chars: {stats.get('oversized', 0)} left out; cache: {stats.get('cache', 'off')}"]
    for split in ("train", "val"):
        tokens = report["tokens"][split]
        if tokens["total"]:
            lines.append(f"tokens per {split} example: min {tokens['min']}, median {tokens['median']:g}, "
                         f"max {tokens['max']} ({tokens['total']} in all)")
    if formats and set(stats["formats"]) <= {"completion", "input_output"}:
        rendering = "no chat template (raw text)"
    elif splits.chat_template:
        rendering = "the chat template data.chat_template gives"
    elif has_chat_template(tokenizer):
        rendering = "the tokenizer's own chat template"
    else:
        rendering = "the Alpaca prompt (the tokenizer has no chat template)"
    marks = "in bold green" if color else "between [[ and ]]"
    lines.append(f"rendered with {rendering}; trained tokens (labels, not -100) {marks}")
    return lines


def example_lines(example: dict, tokenizer, title: str, color: bool) -> list:
    """One example: its place, format and token counts, then its text with the trained tokens marked
    (both sides of a preference pair)."""
    from tuneforge.data import marked_text, token_counts
    from tuneforge.data.trained_text import TRAINED_MARKS

    marks = COLOR_MARKS if color else TRAINED_MARKS
    head = f"--- {title}: {example.get('source', '?')} ({example.get('format', '?')})"
    if "kto_label" in example:
        head += ", desirable" if example["kto_label"] and example["kto_label"][0] else ", undesirable"
    sides = ["chosen_", "rejected_"] if "chosen_input_ids" in example else [""]
    lines = []
    for prefix in sides:
        total, trained = token_counts(example, prefix)
        side = prefix[:-1]
        start = (f"{head}, {side}" if side else head) if not lines else f"--- {side}"
        lines.append(f"{start}: {total} tokens, {trained} trained")
        lines.append(marked_text(example, tokenizer, prefix, marks))
    return lines
