"""Training-step overhead of tuneforge versus a plain PyTorch + PEFT loop on the same data.

    .venv/bin/python tests/benchmarks/bench_vs_plain.py                  # tiny model
    .venv/bin/python tests/benchmarks/bench_vs_plain.py model=smollm2 steps=12

Both sides train the same LoRA model (same seed, same batches in the same
order, AdamW, next-token cross entropy); the first ``warmup`` steps are not
timed.  It prints seconds per optimizer step for each and the ratio
tuneforge / plain.  Not collected by pytest: numbers, not assertions.
"""

from __future__ import annotations

import sys
import time

import torch


def _args(argv):
    values = {"model": "tiny", "steps": "20", "warmup": "3", "threads": "2"}
    values.update(a.split("=", 1) for a in argv)
    return values


def _setup(overrides):
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins

    plugins = load_plugins(overrides)
    run = run_components(compose(overrides), plugins)  # the plugins get their typed configs, as in a run
    cfg = run.config
    torch.manual_seed(cfg.seed)
    model, tokenizer = run.model.spec.load(run.model.config)
    model = run.adapter.spec.apply(model, run.adapter.config)
    splits = run.data.spec.load(run.data.config, tokenizer)
    loss_fn = run.loss.spec.build(run.loss.config, None)
    return plugins, cfg, model, tokenizer, splits, loss_fn


def time_tuneforge(overrides, steps, warmup, run_dir):
    import lightning.pytorch as pl

    from tuneforge.training.data_module import FineTuneDataModule
    from tuneforge.training.module import FineTuneModule
    from tuneforge.training.trainer import build_trainer

    _, cfg, model, tokenizer, splits, loss_fn = _setup(overrides)
    stamps = []

    class Stamp(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            stamps.append(time.perf_counter())

    trainer = build_trainer(cfg, run_dir, [Stamp()])
    trainer.fit(FineTuneModule(model, loss_fn, cfg.optim),
                datamodule=FineTuneDataModule(splits, tokenizer.pad_token_id, cfg.loader, cfg.seed))
    return (stamps[-1] - stamps[warmup - 1]) / (steps - warmup)


def time_plain(overrides, steps, warmup):
    from torch.utils.data import DataLoader

    from tuneforge.data import pad_batch

    _, cfg, model, tokenizer, splits, _ = _setup(overrides)
    loader = DataLoader(splits.train, batch_size=cfg.loader.batch_size, shuffle=True,
                        collate_fn=lambda b: pad_batch(b, tokenizer.pad_token_id),
                        generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    model.train()
    done, stamps = 0, []
    while done < steps:
        for batch in loader:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                     batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            stamps.append(time.perf_counter())
            done += 1
            if done == steps:
                break
    return (stamps[-1] - stamps[warmup - 1]) / (steps - warmup)


def main(argv) -> None:
    import tempfile

    args = _args(argv)
    steps, warmup = int(args["steps"]), int(args["warmup"])
    torch.set_num_threads(int(args["threads"]))
    overrides = [f"model={args['model']}", f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
                 "trainer.gradient_clip_val=null", "trainer.accelerator=cpu", "trainer.devices=1",
                 "loader.shuffle=true"]  # evaluators and callbacks are composed but not run here
    if args["model"] == "smollm2":
        overrides = ["+experiment=legal_citations", *overrides[1:]]
    plain = time_plain(overrides, steps, warmup)
    with tempfile.TemporaryDirectory() as run_dir:
        ours = time_tuneforge(overrides, steps, warmup, run_dir)
    print(f"model={args['model']} steps={steps} (first {warmup} not timed) threads={args['threads']}")
    print(f"plain PyTorch+PEFT loop : {plain:.4f} s/step")
    print(f"tuneforge (Lightning)   : {ours:.4f} s/step")
    print(f"ratio tuneforge / plain : {ours / plain:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
