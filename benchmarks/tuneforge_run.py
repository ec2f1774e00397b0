"""System (d): tuneforge through its real training path.

    python benchmarks/tuneforge_run.py <workdir> <result.json> [variant]    (started by benchmarks/run.py)

The run is composed from overrides exactly like ``tuneforge train`` composes it
(``tuneforge.host.compose.load_plugins`` + ``compose``) and trained by
``tuneforge.training.run.run_train`` -> ``tuneforge.training.run.train`` into a fresh run
directory: model source, LoRA adapter, the ``jsonl`` dataset (tokenizing ``ordered.jsonl``),
the data quality check, the Lightning trainer, checkpoint at the end, model/report writing.
The only addition is the ``bench_probe`` callback (``tuneforge_probe.py``), registered as an
in-process plugin; the evaluators are off (``evaluators=[]``) since they are not training.

``ordered.jsonl`` holds the records of the saved batches in training order, and the run reads
them with ``data.shuffle=false`` and ``loader.shuffle=false``: so tuneforge's own loader
builds the saved batches (the probe's digests prove it).  ``variant`` (a name of the spec's
``tuneforge.variants``, e.g. ``packing``) adds that variant's overrides: a variant that packs or
groups by length batches the same examples its own way, for one epoch; any other trains on the
saved batches with its overrides (e.g. another ``trainer.precision``).
"""

from __future__ import annotations

import csv
import sys

from common import child_args, load_spec, write_result


def metric_losses(run_dir) -> list:
    """The per-step ``train/loss`` the run logged into its ``metrics.csv``."""
    with open(run_dir / "metrics.csv") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def main(argv) -> None:
    workdir, result_path, variant = child_args(argv, optional="variant")
    spec = load_spec(workdir)
    overrides = list(spec["tuneforge"]["overrides"])
    if variant:
        overrides += spec["tuneforge"]["variants"][variant]["overrides"]
    run_dir = workdir / f"run-{result_path.stem}"
    overrides.append(f"run_dir={run_dir}")

    import tuneforge_probe
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.training.run import run_train

    plugins = load_plugins(overrides, extra_plugins=[tuneforge_probe])
    cfg = compose(overrides)  # composed once; run_train validates it, as `tuneforge train` does
    metrics = run_train(cfg, plugins)
    probe = tuneforge_probe.PROBES[-1]
    losses = metric_losses(run_dir)
    if len(losses) != len(probe.step_end):
        raise SystemExit(f"benchmark: {run_dir}/metrics.csv has {len(losses)} train/loss rows for "
                         f"{len(probe.step_end)} steps; trainer.log_every_n_steps must be 1")
    write_result(result_path, "tuneforge" if not variant else f"tuneforge[{variant}]", losses=losses,
                 step_end=probe.step_end, digests=probe.digests, init_checksum=probe.init_checksum,
                 tokens=probe.tokens, extra={"run_dir": str(run_dir), "tuneforge_steps": metrics.get("steps"),
                                             "positions": probe.positions, "trained": probe.trained,
                                             "precision": metrics.get("precision")})


if __name__ == "__main__":
    main(sys.argv[1:])
