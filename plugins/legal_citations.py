"""The ``legal_citations`` dataset: seeded case facts -> legal citations (the default demo's task).

Each example gives the facts of a United States federal decision, one per
line, and asks for its citation::

    Case: Okafor v. Lindqvist Shipping Co.
    Reporter: Federal Reporter, Third Series
    Volume: 123
    First page: 456
    Court: Ninth Circuit
    Year: 1999

    -> Okafor v. Lindqvist Shipping Co., 123 F.3d 456 (9th Cir. 1999)

It is a format task: the model must abbreviate the reporter (``F.3d``,
``F. Supp. 2d``, ``U.S.``) and the court (``9th Cir.``, ``2d Cir.``,
``S.D.N.Y.``; none for the Supreme Court) and arrange the parts the way
citations are written.  A small instruct model knows what a citation is but
not this exact form, so its zero-shot exact match is near zero; a LoRA
fine-tune on 100 examples gets it right.

Everything is generated from ``seed`` with Python's ``random`` (no download):

* the held-out examples are drawn first, from their own random stream, so
  they stay the same whatever ``n_train`` or ``max_examples`` is (a
  data-efficiency sweep compares like with like);
* training examples never share a case name with a held-out example (nor
  with each other), so held-out accuracy is not memorisation;
* training examples cycle through every court in a shuffled order, so any
  prefix (``max_examples=25``) covers the courts as evenly as it can.

``python -m tuneforge.plugins.legal_citations OUT_DIR`` writes the same
examples as ``train.jsonl`` and ``val.jsonl`` for ``data=jsonl``.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import tuneforge
from tuneforge.data import (DataSplits, Record, detect_format, first_record, interleave, read_jsonl,
                            resolve_chat_template, tokenize_records)
from tuneforge.errors import DataError
from tuneforge.validation import at_least, check, existing_path

INSTRUCTION = "Write the legal citation for this court decision."

SURNAMES = (
    "Abernathy", "Acosta", "Adeyemi", "Albrecht", "Alvarez", "Amundsen", "Baptiste", "Barlow", "Becker",
    "Bianchi", "Blackwood", "Brennan", "Calloway", "Carvalho", "Castellano", "Chandler", "Chen", "Cortez",
    "Dalton", "Delacroix", "Dimitrov", "Donovan", "Dubois", "Eastman", "Eriksen", "Esposito", "Fairbanks",
    "Ferreira", "Fitzgerald", "Fontaine", "Galloway", "Garrison", "Goldberg", "Greenberg", "Guerrero",
    "Halvorsen", "Hargrove", "Hashimoto", "Hawthorne", "Holloway", "Ibrahim", "Iversen", "Jablonski",
    "Jankowski", "Kaminski", "Kavanagh", "Kowalczyk", "Lancaster", "Lindqvist", "Lombardi", "Maddox",
    "Marchetti", "McAllister", "Mendoza", "Moreau", "Nakamura", "Novak", "Nwosu", "Okafor", "Olsen",
    "Oyelaran", "Pacheco", "Pemberton", "Petrov", "Quintero", "Radcliffe", "Ramirez", "Rasmussen",
    "Rosenthal", "Sandoval", "Schneider", "Sorensen", "Stanhope", "Tanaka", "Thornton", "Underwood",
    "Valdez", "Vasquez", "Whitfield", "Yamamoto", "Zielinski", "Zimmerman",
)
BUSINESSES = ("Shipping", "Logistics", "Foods", "Energy", "Textiles", "Software", "Mining", "Marine",
              "Holdings", "Motors", "Realty", "Chemicals", "Insurance", "Airlines", "Steel", "Media")
BUSINESS_SUFFIXES = ("Inc.", "LLC", "Co.", "Corp.")

# (full name in the facts, abbreviation, first year, last year, court kind, volume range)
REPORTERS = (
    ("United States Reports", "U.S.", 1900, 2020, "supreme", (150, 599)),
    ("Federal Reporter, Second Series", "F.2d", 1925, 1993, "circuit", (1, 999)),
    ("Federal Reporter, Third Series", "F.3d", 1993, 2021, "circuit", (1, 999)),
    ("Federal Reporter, Fourth Series", "F.4th", 2021, 2024, "circuit", (1, 120)),
    ("Federal Supplement", "F. Supp.", 1933, 1998, "district", (1, 999)),
    ("Federal Supplement, Second Series", "F. Supp. 2d", 1998, 2014, "district", (1, 999)),
    ("Federal Supplement, Third Series", "F. Supp. 3d", 2014, 2024, "district", (1, 700)),
)
# (name in the facts, abbreviation in the citation, kind, first year it sat)
COURTS = (
    ("Supreme Court of the United States", "", "supreme", 1789),
    ("First Circuit", "1st Cir.", "circuit", 1891),
    ("Second Circuit", "2d Cir.", "circuit", 1891),
    ("Third Circuit", "3d Cir.", "circuit", 1891),
    ("Fourth Circuit", "4th Cir.", "circuit", 1891),
    ("Fifth Circuit", "5th Cir.", "circuit", 1891),
    ("Sixth Circuit", "6th Cir.", "circuit", 1891),
    ("Seventh Circuit", "7th Cir.", "circuit", 1891),
    ("Eighth Circuit", "8th Cir.", "circuit", 1891),
    ("Ninth Circuit", "9th Cir.", "circuit", 1891),
    ("Tenth Circuit", "10th Cir.", "circuit", 1929),
    ("Eleventh Circuit", "11th Cir.", "circuit", 1981),
    ("D.C. Circuit", "D.C. Cir.", "circuit", 1893),
    ("Federal Circuit", "Fed. Cir.", "circuit", 1982),
    ("Southern District of New York", "S.D.N.Y.", "district", 1814),
    ("Eastern District of New York", "E.D.N.Y.", "district", 1865),
    ("Northern District of California", "N.D. Cal.", "district", 1886),
    ("District of Massachusetts", "D. Mass.", "district", 1789),
    ("Eastern District of Pennsylvania", "E.D. Pa.", "district", 1818),
    ("Northern District of Illinois", "N.D. Ill.", "district", 1855),
)


@dataclass
class LegalCitationsConfig:
    """Generated case facts -> citation examples (see the module docstring).

    n_train: training examples generated.
    n_val: held-out examples (never sharing a case name with training ones).
    seed: everything is drawn from it; the same seed gives the same files.
    max_examples: use only the first N training examples (data-efficiency sweeps).
    instruction: the request put before the facts.
    rehearsal_path: a ``.jsonl`` of general instructions answered by the base
        model itself (alpaca or chat records); its first ``n_rehearsal``
        records are mixed into the training examples (rehearsal against
        forgetting; see docs/demo.md).  None: no rehearsal.
    n_rehearsal: how many rehearsal records to mix in (0: none).
    max_length: token limit per example (the examples are about 130 tokens).
    chat_template: Jinja template used instead of the tokenizer's own.
    """

    n_train: int = 100
    n_val: int = 30
    seed: int = 0
    max_examples: Optional[int] = None
    instruction: str = INSTRUCTION
    rehearsal_path: Optional[str] = None
    n_rehearsal: int = 0
    max_length: int = 256
    chat_template: Optional[str] = None

    #: data files (absolute in config.yaml; their content hashes identify the run's data)
    DATA_FILES: ClassVar[tuple] = ("rehearsal_path", "chat_template")

    def __post_init__(self) -> None:
        check(self, n_train=at_least(1), n_val=at_least(0), max_examples=at_least(1),
              rehearsal_path=existing_path("file"), n_rehearsal=at_least(0), max_length=at_least(1))


def _party(rng: random.Random) -> str:
    if rng.random() < 0.35:
        return f"{rng.choice(SURNAMES)} {rng.choice(BUSINESSES)} {rng.choice(BUSINESS_SUFFIXES)}"
    if rng.random() < 0.08:
        return "United States"
    return rng.choice(SURNAMES)


def _case_name(rng: random.Random) -> str:
    while True:
        first, second = _party(rng), _party(rng)
        if first != second:
            return f"{first} v. {second}"


def make_case(rng: random.Random, court: tuple) -> dict:
    """One decision of ``court``: parties, reporter, volume, page and year, drawn from ``rng``."""
    court_name, court_abbr, kind, court_start = court
    reporters = [r for r in REPORTERS if r[4] == kind and r[3] >= court_start]
    reporter_name, reporter_abbr, start, end, _kind, (vol_lo, vol_hi) = rng.choice(reporters)
    year = rng.randint(max(start, court_start), end)
    case = _case_name(rng)
    volume, page = rng.randint(vol_lo, vol_hi), rng.randint(1, 1600)
    facts = (f"Case: {case}\nReporter: {reporter_name}\nVolume: {volume}\nFirst page: {page}\n"
             f"Court: {court_name}\nYear: {year}")
    parenthetical = f"({court_abbr} {year})" if court_abbr else f"({year})"
    return {"case": case, "facts": facts, "citation": f"{case}, {volume} {reporter_abbr} {page} {parenthetical}"}


def generate(n_train: int, n_val: int, seed: int = 0,
             instruction: str = INSTRUCTION) -> tuple[list[dict], list[dict]]:
    """``(train, val)`` alpaca records (``instruction``/``input``/``output``), deterministic in ``seed``."""
    if n_train < 1 or n_val < 0:
        raise DataError(f"legal_citations needs n_train >= 1 and n_val >= 0, got {n_train} and {n_val}")
    val_rng, train_rng = random.Random(f"legal-citations-val-{seed}"), random.Random(f"legal-citations-{seed}")
    seen: set = set()

    def draw(rng: random.Random, court: tuple) -> dict:
        for _ in range(1000):
            case = make_case(rng, court)
            if case["case"] not in seen:
                seen.add(case["case"])
                return {"instruction": instruction, "input": case["facts"], "output": case["citation"]}
        raise DataError("legal_citations: ran out of distinct case names; lower n_train or n_val")

    val = [draw(val_rng, val_rng.choice(COURTS)) for _ in range(n_val)]
    train, cycle = [], []
    for _ in range(n_train):
        if not cycle:
            cycle = list(COURTS)
            train_rng.shuffle(cycle)
        train.append(draw(train_rng, cycle.pop()))
    return train, val


def load_legal_citations(config: LegalCitationsConfig, tokenizer) -> DataSplits:
    train_records, val_records = generate(config.n_train, config.n_val, config.seed, config.instruction)
    if config.max_examples is not None:
        train_records = train_records[: config.max_examples]
    where = f"legal_citations(seed={config.seed})"
    train_sources = [Record(r, f"{where}:train[{i}]") for i, r in enumerate(train_records)]
    rehearsal = _rehearsal_records(config)
    train_sources = interleave(train_sources, rehearsal)  # spread evenly (the loader shuffles too)
    options = dict(fmt="auto", max_length=config.max_length, truncation="truncate",
                   chat_template=config.chat_template)
    train, train_counts = tokenize_records(train_sources, tokenizer, **options)
    val, val_counts = tokenize_records([Record(r, f"{where}:val[{i}]") for i, r in enumerate(val_records)],
                                       tokenizer, **options)
    stats = {"train_records": len(train_sources), "val_records": len(val_records),
             "train_examples": len(train), "val_examples": len(val),
             "task_examples": len(train_records), "rehearsal_examples": len(rehearsal),
             "truncated": train_counts["truncated"] + val_counts["truncated"],
             "dropped": train_counts["dropped"] + val_counts["dropped"]}
    chat_template = resolve_chat_template(tokenizer, config.chat_template) if config.chat_template else None
    return DataSplits(train=train, val=val, stats=stats, chat_template=chat_template)


def example_kinds(config: LegalCitationsConfig) -> set:
    """The generated examples are alpaca records; rehearsal records have the format of their file."""
    kinds = {"alpaca"}
    if config.n_rehearsal and config.rehearsal_path:
        record = first_record(config.rehearsal_path, "jsonl")
        if record is not None:
            kinds.add(detect_format(record))
    return kinds


def _rehearsal_records(config: LegalCitationsConfig) -> list:
    if not config.n_rehearsal:
        return []
    if not config.rehearsal_path:
        raise DataError(f"data.n_rehearsal={config.n_rehearsal} needs data.rehearsal_path (a .jsonl file)")
    records = read_jsonl(config.rehearsal_path)
    if len(records) < config.n_rehearsal:
        raise DataError(f"{config.rehearsal_path}: data.n_rehearsal={config.n_rehearsal} but the file holds "
                        f"only {len(records)} records")
    return records[: config.n_rehearsal]


def write_jsonl(directory, n_train: int = 100, n_val: int = 30, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``val.jsonl`` into ``directory``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, records in zip(("train", "val"), generate(n_train, n_val, seed)):
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


@tuneforge.hookimpl
def tuneforge_datasets():
    return [tuneforge.DatasetSpec("legal_citations", LegalCitationsConfig,
                                  "generated case facts -> legal citations (the demo task)",
                                  load=load_legal_citations, example_kinds=example_kinds)]


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tuneforge.plugins.legal_citations",
                                     description="Write the generated legal-citation examples as jsonl.")
    parser.add_argument("out_dir")
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-val", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_jsonl(args.out_dir, args.n_train, args.n_val, args.seed):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
