r"""The files ``tuneforge new-plugin`` writes, one :class:`KindTemplate` per component kind.

A kind is ONE entry of :data:`TEMPLATES`: its module (``src/<module>/<kind>.py``,
with a documented config dataclass, a ``__post_init__`` validating a bounded
field and a real minimal implementation), its tests (``tests/test_<kind>.py``,
using :mod:`tuneforge.testing`), extra files (sample data) with their
package-data globs, and a README paragraph.  The common files (pyproject.toml,
README, ``__init__.py``, the entry-point module ``plugin.py``) are assembled
from the selected kinds in :mod:`tuneforge.commands.new_plugin`.

Placeholders, replaced literally: ``{{dist}}`` (distribution name, e.g.
``acme-tools``), ``{{module}}`` (import name, ``acme_tools``), ``{{prefix}}``
(component name prefix: the import name without a leading ``tuneforge_``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KindTemplate:
    """Everything one component kind adds to a scaffolded plugin package."""

    #: the name given to ``--kinds``
    kind: str
    #: the component is named ``<prefix>_<suffix>`` (e.g. ``acme_bitfit``)
    suffix: str
    #: the config group users select it in (``adapter=acme_bitfit``)
    group: str
    #: the registration hook its module implements (re-exported by ``plugin.py``)
    hook: str
    #: source of ``src/<module>/<kind>.py``
    module: str
    #: source of ``tests/test_<kind>.py``
    test: str
    #: the README section describing it
    readme: str
    #: extra files: path relative to the package directory ``src/<module>/`` -> text
    files: dict = field(default_factory=dict)
    #: globs for ``[tool.setuptools.package-data]`` (relative to the package directory)
    package_data: tuple = ()


# --------------------------------------------------------------------------- model source

MODEL = KindTemplate(
    kind="model", suffix="local", group="model", hook="tuneforge_model_sources",
    readme=r"""### Model source `model={{prefix}}_local` (`src/{{module}}/model.py`)

A causal language model from a local Hugging Face folder (`config.json`,
weights, tokenizer files), no download.  What every model source must give
tuneforge, and this one does:

- `load(config) -> (model, tokenizer)`: a `transformers` causal LM in train
  mode and its tokenizer with a `pad_token` (the end-of-sequence token when the
  folder has none) and a chat template (`model.chat_template` when the folder's
  tokenizer has none): chat data, the prompting baselines and generation render
  prompts with it.
- `load` runs once per process: under DDP every process loads its own copy,
  and `tuneforge eval`, `generate`, `chat` and `export` call it again (in their
  own process) to rebuild the base model the adapter's weights go on.  Keep it
  deterministic and free of side effects.

    tuneforge train model={{prefix}}_local model.path=/models/my-llama adapter=lora
""",
    module=r'''"""Model source ``{{prefix}}_local``: a causal LM and its tokenizer from a local Hugging Face folder.

tuneforge calls ``load`` once per process of a training run (every DDP process
loads its own copy) and again in ``tuneforge eval``, ``generate``, ``chat`` and
``export``, to rebuild the base model that the run's adapter weights go on: it
must give the same model every time and have no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tuneforge

#: ChatML, used when the folder's tokenizer has no chat template of its own
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")


@dataclass
class LocalModelConfig:
    """A model saved with ``save_pretrained`` in a local folder.

    path: the folder holding ``config.json``, the weights and the tokenizer files.
    chat_template: the Jinja chat template given to a tokenizer that has none (default ChatML);
        a tokenizer's own template is kept.
    dtype: the weights' dtype: float32, bfloat16 or float16.
    """

    path: str = "???"
    chat_template: str = CHATML
    dtype: str = "float32"

    def __post_init__(self):
        # values may still be omegaconf's "???" or an interpolation while Hydra checks types
        if self.dtype not in ("float32", "bfloat16", "float16") and not str(self.dtype).startswith(("???", "${")):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        path = str(self.path)
        if path and not path.startswith(("???", "${")) and not (Path(path).expanduser() / "config.json").is_file():
            raise ValueError(f"path {path!r} is not a model folder (no config.json in it)")


def load_local(config: LocalModelConfig):
    """``(model, tokenizer)``: the model in train mode, the tokenizer with a pad token and a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(Path(config.path).expanduser())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = config.chat_template
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=getattr(torch, config.dtype))
    model.train()
    return model, tokenizer


@tuneforge.hookimpl
def tuneforge_model_sources():
    return [tuneforge.ModelSourceSpec("{{prefix}}_local", LocalModelConfig, "a causal LM from a local folder",
                                      load=load_local)]
''',
    test=r'''"""Tests of the ``{{prefix}}_local`` model source: what ``load`` gives, the guards, a tiny fit and the reload."""

import pytest
import torch

from tuneforge.testing import tiny_model

from {{module}} import plugin
from {{module}}.model import CHATML, LocalModelConfig, load_local


@pytest.fixture
def folder(tmp_path):
    """The tiny model saved as a local folder, its tokenizer without chat template (as many base models)."""
    model, tokenizer = tiny_model()
    tokenizer.chat_template = None
    model.save_pretrained(str(tmp_path / "tiny"))
    tokenizer.save_pretrained(str(tmp_path / "tiny"))
    return tmp_path / "tiny"


def test_load_gives_a_training_model_and_a_tokenizer_with_pad_token_and_chat_template(folder):
    model, tokenizer = load_local(LocalModelConfig(path=str(folder)))
    assert model.training and tokenizer.pad_token is not None and tokenizer.chat_template == CHATML
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    again, _ = load_local(LocalModelConfig(path=str(folder)))  # eval/generate/export load it again: same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_the_config_refuses_a_folder_without_a_model_and_an_unknown_dtype(tmp_path):
    with pytest.raises(ValueError, match="is not a model folder"):
        LocalModelConfig(path=str(tmp_path))
    with pytest.raises(ValueError, match="dtype must be float32, bfloat16 or float16"):
        LocalModelConfig(path="???", dtype="int8")


def test_a_tiny_fit_trains_it_and_the_run_reloads_it(tuneforge_fit, folder):
    result = tuneforge_fit(plugins=[plugin], overrides=["model={{prefix}}_local", f"model.path={folder}",
                                                        "trainer.max_steps=2", "baselines=[]"])
    assert result.metrics["steps"] == 2 and result.config.model.name == "{{prefix}}_local"
    model, tokenizer = result.load_model()  # what tuneforge eval/generate/export do: load, then the adapter
    assert not model.training and tokenizer.chat_template
''')

# --------------------------------------------------------------------------- dataset

_SAMPLE_TSV = "instruction\toutput\n" + "".join(f"{q}\t{a}\n" for q, a in [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Kenya?", "Nairobi"),
    ("Add 2 and 3.", "5"),
    ("Add 4 and 4.", "8"),
    ("Add 10 and 7.", "17"),
    ("Subtract 3 from 9.", "6"),
    ("Multiply 6 by 7.", "42"),
    ("Multiply 3 by 3.", "9"),
    ("Translate 'cat' to German.", "Katze"),
    ("Translate 'dog' to German.", "Hund"),
    ("Translate 'house' to German.", "Haus"),
    ("Translate 'water' to French.", "eau"),
    ("Translate 'bread' to French.", "pain"),
    ("Name a primary colour.", "red"),
    ("What colour is the sky on a clear day?", "blue"),
    ("How many legs does a spider have?", "eight"),
    ("How many days are in a week?", "seven"),
    ("Spell 'tab' backwards.", "bat"),
    (r"Join 'a' and 'b' with a tab.", r"a\tb"),
    (r"Write 'yes' and 'no' on two lines.", r"yes\nno"),
])

DATASET = KindTemplate(
    kind="dataset", suffix="tsv", group="data", hook="tuneforge_datasets",
    files={"data/sample.tsv": _SAMPLE_TSV}, package_data=("data/*.tsv",),
    readme=r"""### Dataset `data={{prefix}}_tsv` (`src/{{module}}/dataset.py`)

Instruction/answer pairs from a tab-separated file with a header row
(`instruction`, `output`; `input` and `system` columns are read when present).
Inside a value, `\t`, `\n` and `\\` stand for a tab, a newline and a
backslash.  Rows go through tuneforge's shared pipeline
(`tuneforge.data.prepare_splits`): chat template, prompt masking (only the
answer carries loss), held-out split, cache and counts.  A sample file ships
in `src/{{module}}/data/sample.tsv`:

    tuneforge train model=tiny data={{prefix}}_tsv data.path=my.tsv data.val_fraction=0.2
""",
    module=r'''"""Dataset ``{{prefix}}_tsv``: instruction/answer pairs from a tab-separated file.

The file has a header row naming its columns: ``instruction`` and ``output``
(other names: ``data.instruction_column``, ``data.output_column``), and
optionally ``input`` and ``system``.  Inside a value ``\t``, ``\n`` and
``\\`` stand for a tab, a newline and a backslash.  Each row becomes an
alpaca record that remembers ``file:line``; tuneforge's shared pipeline
(:func:`tuneforge.data.prepare_splits`) renders it with the model's chat
template, masks the prompt (only the answer carries loss), holds out the
validation share, caches and counts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import tuneforge
from tuneforge.data import DataConfig, Record, prepare_splits

#: the sample shipped with the plugin (package data), used when ``data.path`` is empty
SAMPLE = Path(__file__).parent / "data" / "sample.tsv"
_ESCAPES = {"t": "\t", "n": "\n", "\\": "\\"}


@dataclass
class TsvDataConfig(DataConfig):
    """Instruction/answer pairs from a TSV file with a header row.

    path: the ``.tsv`` file (empty: the sample shipped with the plugin).
    instruction_column: header of the column holding the prompt.
    output_column: header of the column holding the answer.
    min_rows: refuse a file with fewer data rows than this (at least 1).
    """

    path: str = ""
    instruction_column: str = "instruction"
    output_column: str = "output"
    min_rows: int = 2

    #: fields naming data files: tuneforge records them as absolute paths and checks their content on resume
    DATA_FILES: ClassVar[tuple] = (*DataConfig.DATA_FILES, "path")

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        # values may still be omegaconf's "???" or an interpolation while Hydra checks types
        if isinstance(self.min_rows, int) and self.min_rows < 1:
            raise ValueError(f"min_rows must be at least 1, got {self.min_rows}")


def unescape(value: str) -> str:
    """``\\t``, ``\\n``, ``\\\\`` -> tab, newline, backslash; any other backslash stays as written."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] in _ESCAPES:
            out.append(_ESCAPES[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def read_tsv(path, instruction_column: str = "instruction", output_column: str = "output") -> list:
    """The rows of a TSV file as alpaca records (``tuneforge.data.Record``), each with its ``file:line``.

    A missing file, a missing column or a row with the wrong number of cells
    raises ``tuneforge.DataError`` naming the file and line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise tuneforge.DataError(f"data.path={path}: no such file")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise tuneforge.DataError(f"{path}: empty file; expected a header row ({instruction_column}, {output_column})")
    header = [cell.strip() for cell in rows[0]]
    for column in (instruction_column, output_column):
        if column not in header:
            raise tuneforge.DataError(f"{path}:1: no column '{column}' in the header {header}")
    records = []
    for line, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(cells) != len(header):
            raise tuneforge.DataError(f"{path}:{line}: {len(cells)} cells, but the header has {len(header)} "
                                      "(a tab inside a value is written \\t)")
        row = dict(zip(header, (unescape(cell) for cell in cells)))
        record = {"instruction": row[instruction_column], "output": row[output_column]}
        record.update({key: row[key] for key in ("input", "system") if row.get(key)})
        records.append(Record(record, f"{path}:{line}"))
    return records


def load_tsv(config: TsvDataConfig, tokenizer):
    """Read ``config.path`` (or the shipped sample) and prepare the tokenized splits."""
    path = Path(config.path) if config.path else SAMPLE
    records = read_tsv(path, config.instruction_column, config.output_column)
    if len(records) < config.min_rows:
        raise tuneforge.DataError(f"{path}: {len(records)} data rows; data.min_rows is {config.min_rows}")
    return prepare_splits(records, tokenizer, config, origin=str(path))


@tuneforge.hookimpl
def tuneforge_datasets():
    return [tuneforge.DatasetSpec("{{prefix}}_tsv", TsvDataConfig, "instruction/answer pairs from a TSV file",
                                  load=load_tsv)]
''',
    test=r'''"""Tests of the ``{{prefix}}_tsv`` dataset: reading, errors, label masking, a tiny fit."""

import pytest

import tuneforge
from tuneforge.testing import assert_labels, tiny_tokenizer

from {{module}} import plugin
from {{module}}.dataset import SAMPLE, TsvDataConfig, load_tsv, read_tsv


def test_rows_become_records_that_remember_their_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("instruction\toutput\tsystem\nSay hi.\thi\tBe brief.\nJoin a and b.\ta\\tb\t\n")
    records = read_tsv(path)
    assert [r.data for r in records] == [{"instruction": "Say hi.", "output": "hi", "system": "Be brief."},
                                         {"instruction": "Join a and b.", "output": "a\tb"}]
    assert [r.source for r in records] == [f"{path}:2", f"{path}:3"]


def test_bad_rows_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("instruction\toutput\nok\tfine\ntoo\tmany\tcells\n")
    with pytest.raises(tuneforge.DataError, match=r"bad.tsv:3: 3 cells, but the header has 2"):
        read_tsv(path)
    with pytest.raises(tuneforge.DataError, match=r"bad.tsv:1: no column 'answer'"):
        read_tsv(path, output_column="answer")


def test_min_rows_must_be_positive():
    with pytest.raises(ValueError, match="min_rows must be at least 1"):
        TsvDataConfig(min_rows=0)


def test_only_the_answer_and_its_end_of_turn_carry_loss():
    tokenizer = tiny_tokenizer()
    splits = load_tsv(TsvDataConfig(cache=False), tokenizer)
    assert len(splits.train) + len(splits.val) == len(read_tsv(SAMPLE))
    for example in splits.train:
        # the tiny model's ChatML template closes the assistant turn with <|im_end|> and a newline
        assert_labels(example, tokenizer, trained=[example["record"]["output"] + "<|im_end|>\n"])


def test_a_tiny_fit_trains_on_the_dataset(tuneforge_fit):
    result = tuneforge_fit(plugins=[plugin], overrides=["data={{prefix}}_tsv", "data.cache=false"])
    data = result.metrics["data"]
    assert data["train_records"] + data["val_records"] == len(read_tsv(SAMPLE))
    assert result.metrics["steps"] == 5
    assert result.config.data.name == "{{prefix}}_tsv"
''')

# --------------------------------------------------------------------------- adapter

ADAPTER = KindTemplate(
    kind="adapter", suffix="bitfit", group="adapter", hook="tuneforge_adapters",
    readme=r"""### Adapter `adapter={{prefix}}_bitfit` (`src/{{module}}/adapter.py`)

BitFit-like: every weight is frozen except the bias terms and (by default)
the weights of the normalisation layers; Llama-style models have no biases,
so there only the norms train.  The trained model is saved as full
safetensors weights (tuneforge's default `save`).

    tuneforge train model=tiny adapter={{prefix}}_bitfit adapter.include_norms=true optim.lr=1e-2
""",
    module=r'''"""Adapter ``{{prefix}}_bitfit``: train only the bias terms and the normalisation layers (BitFit-like).

BitFit (Ben Zaken et al., 2022) fine-tunes only the biases of a transformer.
Llama-style models have no biases, so the weights of the normalisation layers
(RMSNorm, LayerNorm) are trained as well unless ``adapter.include_norms=false``.
"""

from __future__ import annotations

from dataclasses import dataclass

import tuneforge


@dataclass
class BitFitConfig:
    """Train only the bias terms and, optionally, the normalisation layers.

    include_norms: also train the weights of normalisation layers (LayerNorm, RMSNorm).
    max_trainable_fraction: refuse to train more than this share of all parameters
        (0 < fraction <= 1), a guard against a model whose "biases" are most of it.
    """

    include_norms: bool = True
    max_trainable_fraction: float = 0.05

    def __post_init__(self):
        # values may still be omegaconf's "???" or an interpolation while Hydra checks types
        if isinstance(self.max_trainable_fraction, (int, float)) and not 0 < self.max_trainable_fraction <= 1:
            raise ValueError(f"max_trainable_fraction must be > 0 and <= 1, got {self.max_trainable_fraction}")


def is_norm(module) -> bool:
    """True for normalisation layers (``LayerNorm``, ``LlamaRMSNorm`` ...), by class name."""
    return "norm" in type(module).__name__.lower()


def trainable_names(model, include_norms: bool = True) -> list:
    """Names of the parameters BitFit trains in ``model``."""
    names = []
    for module_name, module in model.named_modules():
        for parameter_name, _ in module.named_parameters(recurse=False):
            if parameter_name == "bias" or (include_norms and is_norm(module) and parameter_name == "weight"):
                names.append(f"{module_name}.{parameter_name}" if module_name else parameter_name)
    return names


def apply_bitfit(model, config: BitFitConfig):
    """Freeze everything but the biases (and norms); raises ``tuneforge.ModelError`` when nothing is left to train."""
    names = set(trainable_names(model, config.include_norms))
    if not names:
        hint = "" if config.include_norms else "; set adapter.include_norms=true to train the normalisation layers"
        raise tuneforge.ModelError(f"adapter={{prefix}}_bitfit: the model has no bias terms{hint}")
    total = trained = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
        total += parameter.numel()
        trained += parameter.numel() if name in names else 0
    if trained / max(total, 1) > config.max_trainable_fraction:
        raise tuneforge.ModelError(
            f"adapter={{prefix}}_bitfit would train {trained} of {total} parameters ({trained / total:.2%}), more than "
            f"adapter.max_trainable_fraction={config.max_trainable_fraction}")
    return model


@tuneforge.hookimpl
def tuneforge_adapters():
    return [tuneforge.AdapterSpec("{{prefix}}_bitfit", BitFitConfig, "train only biases and norms (BitFit-like)",
                                  apply=apply_bitfit)]
''',
    test=r'''"""Tests of the ``{{prefix}}_bitfit`` adapter: what trains, the guards, and a tiny fit."""

import pytest
import torch
from safetensors.torch import load_file

import tuneforge
from tuneforge.testing import tiny_model

from {{module}} import plugin
from {{module}}.adapter import BitFitConfig, apply_bitfit, trainable_names


def test_only_biases_and_norms_train():
    model, _ = tiny_model()
    apply_bitfit(model, BitFitConfig())
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and trained == trainable_names(model)
    assert all(name.endswith(("norm.weight", ".bias")) for name in trained)
    assert len(trained) < len(list(model.parameters()))


def test_a_model_without_biases_needs_the_norms():
    model, _ = tiny_model()
    with pytest.raises(tuneforge.ModelError, match="no bias terms; set adapter.include_norms=true"):
        apply_bitfit(model, BitFitConfig(include_norms=False))


def test_the_fraction_guard():
    with pytest.raises(ValueError, match="max_trainable_fraction must be > 0 and <= 1"):
        BitFitConfig(max_trainable_fraction=0)
    model, _ = tiny_model()
    with pytest.raises(tuneforge.ModelError, match="more than adapter.max_trainable_fraction"):
        apply_bitfit(model, BitFitConfig(max_trainable_fraction=1e-6))


def test_a_tiny_fit_moves_exactly_the_trained_weights(tuneforge_fit):
    result = tuneforge_fit(plugins=[plugin], overrides=["adapter={{prefix}}_bitfit", "optim.lr=1e-2"])
    base, _ = tiny_model()  # the same seed: the weights training started from
    expected = trainable_names(base)
    assert result.metrics["parameters"]["trainable"] == sum(p.numel() for n, p in base.named_parameters()
                                                            if n in expected)
    tuned = load_file(str(result.run_dir / "model" / "model.safetensors"))
    for name, parameter in base.named_parameters():
        if name not in tuned:  # tied or shared weights are saved once
            continue
        moved = not torch.equal(tuned[name], parameter.detach())
        assert moved == (name in expected), name
''')

# --------------------------------------------------------------------------- loss

LOSS = KindTemplate(
    kind="loss", suffix="smoothed_ce", group="loss", hook="tuneforge_losses",
    readme=r"""### Loss `loss={{prefix}}_smoothed_ce` (`src/{{module}}/loss.py`)

Next-token cross entropy with label smoothing, built from the
`tuneforge.losses` helpers and averaged per trained token (it reports
`num_tokens`, so gradient accumulation and several devices average over the
whole batch).

    tuneforge train model=tiny loss={{prefix}}_smoothed_ce loss.smoothing=0.1
""",
    module=r'''"""Loss ``{{prefix}}_smoothed_ce``: label-smoothed next-token cross entropy, per trained token.

Built from the public helpers in :mod:`tuneforge.losses`.  The loss is the
*mean* over the trained tokens of the micro-batch and reports their number
as ``num_tokens``: tuneforge then averages the gradient over every trained
token of the accumulation window (all micro-batches, all devices).
"""

from __future__ import annotations

from dataclasses import dataclass

import tuneforge
from tuneforge.losses import LossOutput, causal_lm_logits, shift_for_next_token, token_nll_sum


@dataclass
class SmoothedCEConfig:
    """Next-token cross entropy with label smoothing.

    smoothing: share of each target's probability spread uniformly over the
        vocabulary (0 <= smoothing < 1; 0 is plain cross entropy).
    """

    smoothing: float = 0.1

    def __post_init__(self):
        # values may still be omegaconf's "???" or an interpolation while Hydra checks types
        if isinstance(self.smoothing, (int, float)) and not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be >= 0 and < 1, got {self.smoothing}")


def build_smoothed_ce(config: SmoothedCEConfig, context):
    """``loss_fn(model, batch) -> LossOutput`` (``context`` is unused: no tokenizer or other model needed)."""

    def smoothed_ce(model, batch) -> LossOutput:
        logits = causal_lm_logits(model, batch["input_ids"], batch.get("attention_mask"))
        logits, labels = shift_for_next_token(logits, batch["labels"])
        total, count = token_nll_sum(logits, labels, label_smoothing=config.smoothing)
        return LossOutput(loss=total / max(count, 1), num_tokens=count)

    return smoothed_ce


@tuneforge.hookimpl
def tuneforge_losses():
    return [tuneforge.LossSpec("{{prefix}}_smoothed_ce", SmoothedCEConfig, "label-smoothed cross entropy",
                               build=build_smoothed_ce)]
''',
    test=r'''"""Tests of the ``{{prefix}}_smoothed_ce`` loss: its value, its bounds, and a tiny fit."""

import csv

import pytest
import torch
import torch.nn.functional as F

from tuneforge.data import pad_batch
from tuneforge.testing import run_loss, tiny_model, toy_examples

from {{module}} import plugin
from {{module}}.loss import SmoothedCEConfig, tuneforge_losses

SPEC = tuneforge_losses()[0]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_equals_torch_cross_entropy_per_trained_token(smoothing):
    model, tokenizer = tiny_model()
    batch = pad_batch(toy_examples(tokenizer), tokenizer.pad_token_id)
    output = run_loss(SPEC, batch, config={"smoothing": smoothing}, model=model, tokenizer=tokenizer)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1),
                               ignore_index=-100, label_smoothing=smoothing)
    torch.testing.assert_close(output.loss.detach(), expected, atol=1e-5, rtol=1e-5)
    assert output.num_tokens == int((labels != -100).sum())


def test_smoothing_is_bounded():
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="smoothing must be >= 0 and < 1"):
            SmoothedCEConfig(smoothing=bad)


def test_a_tiny_fit_lowers_the_training_loss(tuneforge_fit):
    result = tuneforge_fit(plugins=[plugin], overrides=[
        "loss={{prefix}}_smoothed_ce", "loss.smoothing=0.05", "optim.lr=1e-2", "trainer.max_steps=12"])
    with open(result.run_dir / "metrics.csv") as handle:
        losses = [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
''')

# --------------------------------------------------------------------------- evaluator

EVALUATOR = KindTemplate(
    kind="evaluator", suffix="exact", group="evaluators", hook="tuneforge_evaluators",
    readme=r"""### Evaluator `evaluators=[{{prefix}}_exact]` (`src/{{module}}/evaluator.py`)

The share of held-out answers the model reproduces, compared after
lowercasing, collapsing whitespace and (by default) dropping punctuation.
It generates through `tuneforge.evaluation.generate_predictions`, so it
shares generations with the built-in generation evaluators.  Reported as
`{{prefix}}_exact/accuracy` for the base and the tuned model.

    tuneforge train model=tiny 'evaluators=[{{prefix}}_exact]' evaluators.{{prefix}}_exact.max_new_tokens=16
""",
    module=r'''"""Evaluator ``{{prefix}}_exact``: normalised exact match of generated answers.

Each held-out example's prompt (its messages without the final answer) is
answered greedily through :func:`tuneforge.evaluation.generate_predictions`
with the evaluation pass the host hands over (``evaluation=``: the training
chat template, generations shared with other generation evaluators, rows
written to ``predictions.jsonl``); the answer counts when it equals the
reference after :func:`normalise`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import tuneforge
from tuneforge.evaluation import generate_predictions


@dataclass
class ExactConfig:
    """Share of held-out answers reproduced, compared after normalising case, spaces and punctuation.

    max_new_tokens: greedy decoding stops at end-of-turn or after this many tokens (1 to 1024).
    ignore_punctuation: drop punctuation before comparing.
    """

    max_new_tokens: int = 32
    ignore_punctuation: bool = True

    def __post_init__(self):
        # values may still be omegaconf's "???" or an interpolation while Hydra checks types
        if isinstance(self.max_new_tokens, int) and not 1 <= self.max_new_tokens <= 1024:
            raise ValueError(f"max_new_tokens must be between 1 and 1024, got {self.max_new_tokens}")


def normalise(text: str, ignore_punctuation: bool = True) -> str:
    """Lowercase, collapse whitespace and (optionally) drop punctuation."""
    text = text.lower()
    if ignore_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def score(rows, ignore_punctuation: bool = True) -> dict:
    """``{"accuracy": share}`` over prediction rows (each with ``output`` and ``reference``)."""
    rows = list(rows)
    hits = sum(normalise(r["output"], ignore_punctuation) == normalise(r["reference"], ignore_punctuation)
               for r in rows)
    return {"accuracy": hits / len(rows) if rows else 0.0}


def evaluate_exact(model, tokenizer, examples, config: ExactConfig, *, evaluation=None) -> dict:
    """``evaluation``: the host's evaluation pass (chat template, shared generations, predictions.jsonl)."""
    rows = generate_predictions(model, tokenizer, examples, max_new_tokens=config.max_new_tokens,
                                evaluation=evaluation)
    return score(rows, config.ignore_punctuation)


@tuneforge.hookimpl
def tuneforge_evaluators():
    return [tuneforge.EvaluatorSpec("{{prefix}}_exact", ExactConfig, "normalised exact match of generated answers",
                                    evaluate=evaluate_exact)]
''',
    test=r'''"""Tests of the ``{{prefix}}_exact`` evaluator: scoring known predictions, bounds, a tiny fit."""

import pytest

from tuneforge.testing import run_evaluator

from {{module}} import plugin
from {{module}}.evaluator import ExactConfig, normalise, tuneforge_evaluators

SPEC = tuneforge_evaluators()[0]
PREDICTIONS = [("What is the capital of France?", "Paris", "paris."),
               ("Add 2 and 3.", "5", "6"),
               ("Name a primary colour.", "red", "  Red ")]


def test_normalise():
    assert normalise("  Hello,   World! ") == "hello world"
    assert normalise("a.b", ignore_punctuation=False) == "a.b"


def test_scores_given_predictions():
    assert run_evaluator(SPEC, predictions=PREDICTIONS) == {"accuracy": pytest.approx(2 / 3)}
    strict = run_evaluator(SPEC, predictions=PREDICTIONS, config={"ignore_punctuation": False})
    assert strict == {"accuracy": pytest.approx(1 / 3)}  # "paris." no longer matches


def test_max_new_tokens_is_bounded():
    with pytest.raises(ValueError, match="max_new_tokens must be between 1 and 1024"):
        ExactConfig(max_new_tokens=0)


def test_a_tiny_fit_reports_the_metric_before_and_after(tuneforge_fit):
    result = tuneforge_fit(plugins=[plugin], overrides=[
        "evaluators=[{{prefix}}_exact]", "evaluators.{{prefix}}_exact.max_new_tokens=4"])
    for state in ("base", "tuned"):
        assert 0.0 <= result.metrics[state]["{{prefix}}_exact/accuracy"] <= 1.0
    rows = (result.run_dir / "predictions.jsonl").read_text().splitlines()
    assert rows  # the generations were recorded next to the prompts
''')

# --------------------------------------------------------------------------- callback

CALLBACK = KindTemplate(
    kind="callback", suffix="step_counter", group="callbacks", hook="tuneforge_callbacks",
    readme=r"""### Callback `callbacks=[{{prefix}}_step_counter]` (`src/{{module}}/callback.py`)

A Lightning callback that counts optimizer steps and micro-batches, records
the logged training loss (`train/loss`, a per-token mean) every
`every_n_steps` steps, and writes them to `<run_dir>/{{module}}/steps.json`
when training ends (its own subfolder of the run directory; only the main
process writes: `context.is_main` of the run context `build` receives).

    tuneforge train model=tiny 'callbacks=[{{prefix}}_step_counter]' callbacks.{{prefix}}_step_counter.every_n_steps=2
""",
    module=r'''"""Callback ``{{prefix}}_step_counter``: count steps, record the training loss, write ``<run_dir>/{{module}}/steps.json``.

A plugin writes only inside its own subfolder of the run directory
(``<run_dir>/<plugin name>/``), and only in the main process.  Both come
from the run context, the second argument of ``build``
(:class:`tuneforge.RunContext`: ``run_dir``, ``is_main``).  The loss
recorded is the logged ``train/loss``
(``trainer.callback_metrics``): the per-token mean of the step's last
micro-batch, the same value as in ``metrics.csv``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tuneforge

from {{module}} import PLUGIN_NAME


@dataclass
class StepCounterConfig:
    """Count optimizer steps and micro-batches; write them to ``<run_dir>/{{module}}/steps.json``.

    every_n_steps: record the logged ``train/loss`` every N optimizer steps (at least 1).
    """

    every_n_steps: int = 1

    def __post_init__(self):
        # values may still be omegaconf's "???" or an interpolation while Hydra checks types
        if isinstance(self.every_n_steps, int) and self.every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {self.every_n_steps}")


def output_path(run_dir) -> Path:
    """Where the counts go: this plugin's own subfolder of the run directory."""
    return Path(run_dir) / PLUGIN_NAME / "steps.json"


def build_step_counter(config: StepCounterConfig, context):
    """The Lightning callback; ``context`` is this process's :class:`tuneforge.RunContext`."""
    import lightning.pytorch as pl

    class StepCounter(pl.Callback):
        def __init__(self):
            self.micro_batches = 0
            self.losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.micro_batches += 1
            step = trainer.global_step  # optimizer steps done so far
            if step and step % config.every_n_steps == 0 and (not self.losses or self.losses[-1]["step"] != step):
                self.losses.append({"step": step, "train/loss": float(trainer.callback_metrics["train/loss"])})

        def on_train_end(self, trainer, pl_module):
            if not context.is_main:
                return
            path = output_path(context.run_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"optimizer_steps": trainer.global_step, "micro_batches": self.micro_batches,
                                        "losses": self.losses}, indent=2) + "\n")

    return StepCounter()


@tuneforge.hookimpl
def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("{{prefix}}_step_counter", StepCounterConfig,
                                   "count steps and record the training loss into the run directory",
                                   build=build_step_counter)]
''',
    test=r'''"""Tests of the ``{{prefix}}_step_counter`` callback: the counts and the file it writes."""

import csv
import json

import pytest

from {{module}} import plugin
from {{module}}.callback import StepCounterConfig, output_path


def test_every_n_steps_is_bounded():
    with pytest.raises(ValueError, match="every_n_steps must be at least 1"):
        StepCounterConfig(every_n_steps=0)


def test_counts_steps_and_records_the_logged_loss(tuneforge_fit):
    result = tuneforge_fit(plugins=[plugin], overrides=[
        "callbacks=[{{prefix}}_step_counter]", "callbacks.{{prefix}}_step_counter.every_n_steps=2",
        "trainer.max_steps=4", "trainer.accumulate_grad_batches=2"])
    path = output_path(result.run_dir)
    assert path.parent == result.run_dir / "{{module}}"  # the plugin's own subfolder
    counts = json.loads(path.read_text())
    assert counts["optimizer_steps"] == 4 and counts["micro_batches"] == 8
    assert [row["step"] for row in counts["losses"]] == [2, 4]
    with open(result.run_dir / "metrics.csv") as handle:
        logged = [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]
    for row in counts["losses"]:
        assert any(abs(row["train/loss"] - value) < 1e-5 for value in logged)
''')

# --------------------------------------------------------------------------- baseline

BASELINE = KindTemplate(
    kind="baseline", suffix="system_prompt", group="baselines", hook="tuneforge_baselines",
    readme=r"""### Baseline `baselines=[{{prefix}}_system_prompt]` (`src/{{module}}/baseline.py`)

A prompting baseline: the base model (before training) with a system prompt
read from a file put before every held-out question.  tuneforge scores it
with the selected evaluators as one more column next to the base and tuned
model (`metrics.json` `baselines`, the report, the verdict), labelled
`system prompt (<file name>)`.

    tuneforge train model=tiny 'baselines=[{{prefix}}_system_prompt]' baselines.{{prefix}}_system_prompt.path=p.txt
""",
    module=r'''"""Baseline ``{{prefix}}_system_prompt``: the base model with a system prompt read from a file.

A prompting baseline answers "would a better prompt do as well as
fine-tuning?".  ``rewrite`` gets the base model, its tokenizer, the training
and the held-out examples and returns the held-out examples, in order, with
turns added *before* their own ones (which must stay unchanged: the host
checks it).  Here the added turn is one system message, the file's text;
the example's own system message is dropped (``replace_system``) or kept
after it.  The host re-tokenizes the result and scores it with the selected
evaluators as the column ``{{prefix}}_system_prompt``, labelled by ``describe``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tuneforge
from tuneforge.validation import between, check, existing_path


@dataclass
class SystemPromptConfig:
    """The base model with a system prompt read from a file before every held-out question.

    path: the text file holding the system prompt (required; UTF-8, surrounding whitespace dropped).
    replace_system: drop each example's own system message; false: keep it after this one.
    max_chars: refuse a prompt file longer than this many characters (1 to 100000).
    """

    path: str = "???"
    replace_system: bool = True
    max_chars: int = 4000

    def __post_init__(self):
        # check() skips omegaconf's "???" and interpolation strings while Hydra checks types
        check(self, path=existing_path("file"), max_chars=between(1, 100_000))


def read_prompt(config: SystemPromptConfig) -> str:
    """The system prompt: the file's text, stripped; an empty or too long file is a ``tuneforge.ConfigError``."""
    text = Path(config.path).expanduser().read_text(encoding="utf-8").strip()
    if not text:
        raise tuneforge.ConfigError(f"baselines.{{prefix}}_system_prompt.path: {config.path} is empty")
    if len(text) > config.max_chars:
        raise tuneforge.ConfigError(f"baselines.{{prefix}}_system_prompt.path: {config.path} has {len(text)} "
                                    f"characters, more than max_chars={config.max_chars}")
    return text


def rewrite_system_prompt(model, tokenizer, train, held_out, config: SystemPromptConfig) -> list:
    """Every held-out example with the file's text as its (first) system message; its own turns unchanged."""
    text = read_prompt(config)
    rewritten = []
    for example in held_out:
        messages = list(example["messages"])
        head = 0
        while head < len(messages) and messages[head]["role"] == "system":
            head += 1
        kept = [] if config.replace_system else messages[:head]
        rewritten.append(dict(example, messages=[{"role": "system", "content": text}, *kept, *messages[head:]]))
    return rewritten


def describe(config: SystemPromptConfig) -> str:
    """The column's label in the report and the verdict."""
    return f"system prompt ({Path(config.path).name})"


@tuneforge.hookimpl
def tuneforge_baselines():
    return [tuneforge.BaselineSpec("{{prefix}}_system_prompt", SystemPromptConfig, "a system prompt read from a file",
                                   rewrite=rewrite_system_prompt, describe=describe)]
''',
    test=r'''"""Tests of the ``{{prefix}}_system_prompt`` baseline: the prompts, the checks, a column of a tiny fit."""

import json

import pytest

import tuneforge
from tuneforge.testing import tiny_tokenizer, toy_examples

from {{module}} import plugin
from {{module}}.baseline import SystemPromptConfig, rewrite_system_prompt


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("Answer in one word.\n")
    return path


def test_the_prompt_comes_first_and_the_examples_own_turns_stay(prompt_file):
    examples = toy_examples(tiny_tokenizer(), [{"system": "Be kind.", "instruction": "Say hi.", "output": "hi"},
                                               {"instruction": "Add 2 and 3.", "output": "5"}])
    for replace in (True, False):
        rewritten = rewrite_system_prompt(None, None, [], examples,
                                          SystemPromptConfig(path=str(prompt_file), replace_system=replace))
        assert len(rewritten) == len(examples)
        for before, after in zip(examples, rewritten):
            own = [m for m in before["messages"] if m["role"] != "system"]
            assert after["messages"][0] == {"role": "system", "content": "Answer in one word."}
            assert after["messages"][-len(own):] == own  # the question and the reference answer are unchanged
        kept = [m["content"] for m in rewritten[0]["messages"] if m["role"] == "system"]
        assert kept == (["Answer in one word."] if replace else ["Answer in one word.", "Be kind."])


def test_the_path_must_exist_and_the_file_fit(tmp_path, prompt_file):
    with pytest.raises(ValueError, match="no such file"):
        SystemPromptConfig(path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="max_chars"):
        SystemPromptConfig(path=str(prompt_file), max_chars=0)
    with pytest.raises(tuneforge.ConfigError, match="more than max_chars=5"):
        rewrite_system_prompt(None, None, [], [], SystemPromptConfig(path=str(prompt_file), max_chars=5))


def test_a_tiny_fit_scores_the_baseline_as_a_column(tuneforge_fit, prompt_file):
    result = tuneforge_fit(plugins=[plugin], overrides=[
        "baselines=[{{prefix}}_system_prompt]", f"baselines.{{prefix}}_system_prompt.path={prompt_file}",
        "evaluators=[perplexity,exact_match]", "evaluators.exact_match.max_new_tokens=2", "trainer.max_steps=2"])
    metrics = result.metrics
    assert list(metrics["baselines"]) == ["{{prefix}}_system_prompt"]
    assert set(metrics["baselines"]["{{prefix}}_system_prompt"]) == set(metrics["base"])  # the same evaluators
    assert metrics["baseline_info"]["{{prefix}}_system_prompt"]["label"] == "system prompt (prompt.txt)"
    rows = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    held = [row for row in rows if row["set"] == "val"]  # the generations: each column's prompt and answer
    assert held and all(row["{{prefix}}_system_prompt_prompt"].startswith("<|im_start|>system\nAnswer in one word.")
                        for row in held)
''')

# --------------------------------------------------------------------------- logger

LOGGER = KindTemplate(
    kind="logger", suffix="jsonl", group="loggers", hook="tuneforge_loggers",
    readme=r"""### Logger `loggers=[csv,{{prefix}}_jsonl]` (`src/{{module}}/logger.py`)

A Lightning logger that appends every logged metric row (per-step
`train/loss`, validation metrics, and at the end the `base/...` and
`tuned/...` evaluator results) as one JSON line to
`<run_dir>/{{module}}/metrics-<run id>.jsonl`, and the run's config (secrets
already redacted by tuneforge) to `<run_dir>/{{module}}/hparams-<run id>.json`.
The run id (a random hex string) is recorded in `metrics.json` (`trackers`)
and `trackers.json`; a run resumed from a checkpoint continues the same id
and appends to the same file.

    tuneforge train model=tiny 'loggers=[csv,{{prefix}}_jsonl]' loggers.{{prefix}}_jsonl.digits=6
""",
    module=r'''"""Logger ``{{prefix}}_jsonl``: metric rows as JSON lines in ``<run_dir>/{{module}}/``.

A logger plugin returns a ``lightning.pytorch.loggers.Logger`` from
``build(config, context)``; ``context`` is a :class:`tuneforge.LoggerContext`
(``run_dir``, ``run_name``, ``resume_run_id``, ``is_main``).  tuneforge
records the logger's ``version`` as its run id (``metrics.json`` ``trackers``,
``trackers.json``) and, when the run resumes from a checkpoint, hands it back
as ``context.resume_run_id``: the logger then continues the same id and
appends to the same file.  The hyperparameters tuneforge sends (once, when a
new run starts) are the resolved config with secrets already redacted;
write them as given.  Only global rank zero writes (``rank_zero_only``), and
only into this plugin's own subfolder of the run directory.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import tuneforge

from {{module}} import PLUGIN_NAME


@dataclass
class JsonlLoggerConfig:
    """Metric rows as JSON lines in ``<run_dir>/{{module}}/metrics-<run id>.jsonl``.

    digits: round each metric value to this many significant digits (1 to 17).
    log_hyperparameters: also write the run's (redacted) config to
        ``<run_dir>/{{module}}/hparams-<run id>.json``.
    """

    digits: int = 8
    log_hyperparameters: bool = True

    def __post_init__(self):
        # values may still be omegaconf's "???" or an interpolation while Hydra checks types
        if isinstance(self.digits, int) and not 1 <= self.digits <= 17:
            raise ValueError(f"digits must be between 1 and 17, got {self.digits}")


def folder(run_dir) -> Path:
    """Where this logger writes: the plugin's own subfolder of the run directory."""
    return Path(run_dir) / PLUGIN_NAME


def rounded(value: float, digits: int) -> float:
    """``value`` to ``digits`` significant digits (non-finite values pass through)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def build_jsonl(config: JsonlLoggerConfig, context: tuneforge.LoggerContext):
    """The Lightning logger; a resumed run (``context.resume_run_id``) keeps its id and file."""
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.utilities import rank_zero_only

    class JsonlLogger(Logger):
        def __init__(self, directory: Path, run_id: str):
            super().__init__()
            self._directory, self._run_id = directory, run_id
            if context.is_main:
                directory.mkdir(parents=True, exist_ok=True)

        @property
        def name(self) -> str:
            return "{{prefix}}_jsonl"

        @property
        def version(self) -> str:
            return self._run_id  # recorded by tuneforge as this logger's run id

        @property
        def log_dir(self) -> str:
            return str(self._directory)

        @property
        def metrics_path(self) -> Path:
            return self._directory / f"metrics-{self._run_id}.jsonl"

        @property
        def hparams_path(self) -> Path:
            return self._directory / f"hparams-{self._run_id}.json"

        @rank_zero_only
        def log_hyperparams(self, params, *args, **kwargs):
            if not config.log_hyperparameters:
                return
            params = dict(params.items()) if hasattr(params, "items") else vars(params)  # a dict or a Namespace
            self.hparams_path.write_text(json.dumps(params, indent=2, default=str) + "\n", encoding="utf-8")

        @rank_zero_only
        def log_metrics(self, metrics, step=None):
            row = {"step": step, **{key: rounded(value, config.digits) for key, value in metrics.items()}}
            with self.metrics_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    return JsonlLogger(folder(context.run_dir), context.resume_run_id or uuid.uuid4().hex)


@tuneforge.hookimpl
def tuneforge_loggers():
    return [tuneforge.LoggerSpec("{{prefix}}_jsonl", JsonlLoggerConfig,
                                 "metric rows as JSON lines in the run directory", build=build_jsonl)]
''',
    test=r'''"""Tests of the ``{{prefix}}_jsonl`` logger: the rows it writes, its run id, resuming, and a tiny fit."""

import json

import pytest

import tuneforge

from {{module}} import plugin
from {{module}}.logger import JsonlLoggerConfig, build_jsonl, folder, rounded


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_digits_is_bounded_and_rounds():
    with pytest.raises(ValueError, match="digits must be between 1 and 17"):
        JsonlLoggerConfig(digits=0)
    assert rounded(1.23456, 3) == 1.23 and rounded(0.00123456, 2) == 0.0012 and rounded(0.0, 3) == 0.0


def test_a_resumed_run_keeps_its_id_and_appends_to_the_same_file(tmp_path):
    first = build_jsonl(JsonlLoggerConfig(), tuneforge.LoggerContext(run_dir=tmp_path, run_name="run"))
    assert len(first.version) == 32 and first.log_dir == str(tmp_path / "{{module}}")
    first.log_metrics({"train/loss": 2.0}, step=1)
    other = build_jsonl(JsonlLoggerConfig(), tuneforge.LoggerContext(run_dir=tmp_path, run_name="run"))
    assert other.version != first.version  # a new run gets a new id
    resumed = build_jsonl(JsonlLoggerConfig(), tuneforge.LoggerContext(run_dir=tmp_path, run_name="run",
                                                                     resume_run_id=first.version))
    assert resumed.version == first.version and resumed.metrics_path == first.metrics_path
    resumed.log_metrics({"train/loss": 1.5}, step=2)
    assert rows(first.metrics_path) == [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.5}]


def test_a_tiny_fit_logs_every_step_the_results_and_the_run_id(tuneforge_fit):
    result = tuneforge_fit(plugins=[plugin], overrides=["loggers=[csv,{{prefix}}_jsonl]", "trainer.max_steps=3"])
    tracker = result.metrics["trackers"]["{{prefix}}_jsonl"]
    run_id = tracker["run_id"]
    assert tracker["log_dir"] == str(folder(result.run_dir))  # the plugin's own subfolder
    logged = rows(folder(result.run_dir) / f"metrics-{run_id}.jsonl")
    assert [row["step"] for row in logged if "train/loss" in row] == [0, 1, 2]
    assert any(key.startswith("tuned/") for key in logged[-1])  # the evaluator results come last
    hparams = json.loads((folder(result.run_dir) / f"hparams-{run_id}.json").read_text())
    assert hparams["model"]["name"] == "tiny" and "{{prefix}}_jsonl" in hparams["loggers"]
    assert json.loads((result.run_dir / "trackers.json").read_text())["{{prefix}}_jsonl"]["run_id"] == run_id
''')

#: every kind ``tuneforge new-plugin --kinds`` accepts, in the order they are written
TEMPLATES = {t.kind: t for t in (MODEL, DATASET, ADAPTER, LOSS, EVALUATOR, CALLBACK, BASELINE, LOGGER)}
