"""metrics.json: one typed model, one writer, one reader, a versioned schema generated into docs/."""

import json
import tempfile
from pathlib import Path

import pytest

from schema_check import SCHEMA_FILE, metrics_file_problems, produced_metrics_problems, schema_problems
from tuneforge.evaluation import SCHEMA_VERSION, MetricsFileError, metric_change, metric_interval, read_metrics
from tuneforge.evaluation.metrics_file import write_metrics
from tuneforge.evaluation.metrics_schema import metrics_json_schema, schema_text
from tuneforge.testing import run_tiny_fit

REGENERATE = "python -m tuneforge.evaluation.metrics_schema --write docs/metrics.schema.json"


def test_the_docs_hold_the_generated_schema():
    assert SCHEMA_FILE.read_text() == schema_text(), f"docs/metrics.schema.json is stale: regenerate with: {REGENERATE}"


def test_the_schema_documents_every_key_of_the_model():
    schema = metrics_json_schema()
    sections = [schema, *schema["$defs"].values()]
    undocumented = [(section["description"][:30], key) for section in sections
                    for key, value in section["properties"].items() if not value.get("description")]
    assert undocumented == []
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION == 1
    assert schema["additionalProperties"] is False  # a new top-level key needs the model (and this file) updated


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return run_tiny_fit(tmp_path_factory.mktemp("metrics-run"), overrides=["trainer.max_steps=2"])


def test_a_tiny_runs_metrics_json_validates_against_the_schema(tiny_run):
    path = tiny_run.run_dir / "metrics.json"
    assert metrics_file_problems(path) == []
    saved = json.loads(path.read_text())
    assert saved["schema_version"] == SCHEMA_VERSION
    assert saved["steps"] == 2 and saved["parameters"]["trainable"] > 0
    read = read_metrics(tiny_run.run_dir)  # a run directory or the file itself
    assert read == read_metrics(path) == saved
    assert read["tuned"] == pytest.approx(tiny_run.metrics["tuned"])
    assert tiny_run.metrics["schema_version"] == SCHEMA_VERSION  # the writer stamps the run's own dict too


def test_the_schema_check_finds_wrong_shapes(tiny_run):
    saved = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    schema = json.loads(SCHEMA_FILE.read_text())
    problems = schema_problems(dict(saved, unknown_section={}), schema)
    assert len(problems) == 1 and "'unknown_section' is not in the schema" in problems[0]
    problems = schema_problems(dict(saved, steps="two", base={"perplexity/loss": "low"}), schema)
    assert sorted(p.split(":")[0] for p in problems) == [".base.perplexity/loss", ".steps"]
    problems = schema_problems(dict(saved, parameters={"trainable": 1, "total": 2}), schema)
    assert problems == [".parameters: the required key 'fraction' is missing"]
    assert schema_problems(dict(saved, schema_version=2), schema) == [".schema_version: 2 is not 1"]


def test_the_session_check_names_each_file_that_does_not_validate():
    with tempfile.TemporaryDirectory() as folder:  # outside pytest's basetemp, which the session check reads
        _check_a_folder_with_a_bad_file(Path(folder))


def _check_a_folder_with_a_bad_file(tmp_path):
    good = {"schema_version": SCHEMA_VERSION, "base": {"exact_match": 0.5}, "tuned": {"exact_match": 0.75}}
    write_metrics(tmp_path, dict(good))
    (tmp_path / "bad").mkdir()
    write_metrics(tmp_path / "bad", dict(good, tuned={"exact_match": None}))
    (tmp_path / "old").mkdir()  # version 0 (no schema_version) and unreadable files are left alone
    (tmp_path / "old" / "metrics.json").write_text(json.dumps({"tuned": {"exact_match": None}}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{")
    problems = produced_metrics_problems(tmp_path)
    assert problems == [f"{tmp_path / 'bad' / 'metrics.json'}: .tuned.exact_match: NoneType null is not of type "
                        "number"]


def test_a_metrics_json_without_a_version_still_loads(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"base": {"exact_match": 0.25}, "tuned": {"exact_match": 0.75},
                                "change": {"exact_match": 0.5}, "steps": 3}))
    metrics = read_metrics(path)
    assert "schema_version" not in metrics  # version 0, upgraded in memory
    assert metric_change(metrics, "change", "exact_match") == {"value": 0.5}  # the oldest layout's top-level change
    assert "change" not in metrics and metrics["steps"] == 3
    assert metric_interval(metrics, "tuned", "exact_match") == {}
    assert schema_problems(metrics, metrics_json_schema()) == []


@pytest.mark.parametrize("content, expected", [
    ({"schema_version": 7, "tuned": {}}, "metrics.json schema_version 7 is not one this tuneforge knows "
                                         "(this tuneforge reads schema versions 0 to 1); a newer tuneforge wrote it"),
    ({"schema_version": "1"}, "schema_version '1' is not one this tuneforge knows"),
    ([1, 2], "not a metrics.json (a JSON list, not an object); this tuneforge reads schema versions 0 to 1"),
    ("{not json", "not a metrics.json (invalid JSON: "),
])
def test_an_unreadable_metrics_json_is_a_one_line_error_naming_the_file_and_version(tmp_path, content, expected):
    path = tmp_path / "metrics.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(MetricsFileError) as caught:
        read_metrics(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_eval_reads_the_evaluated_runs_metrics_through_the_reader(tmp_path):
    from tuneforge.commands.eval import _training_record

    write_metrics(tmp_path, {"steps": 4, "throughput": {"fit_time_s": 1.5}, "setup": {"machine": {"threads": 1}}})
    assert _training_record(tmp_path) == {"steps": 4, "training_s": 1.5, "machine": {"threads": 1}}
    assert _training_record(tmp_path / "missing") == {}
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(MetricsFileError, match="schema_version 2 is not one this tuneforge knows"):
        _training_record(tmp_path)


def test_the_writer_is_atomic_and_sorted(tmp_path):
    path = write_metrics(tmp_path, {"tuned": {"b": 1.0, "a": 2.0}})
    assert path == tmp_path / "metrics.json" and not list(tmp_path.glob("*.tmp"))
    text = path.read_text()
    assert text.index('"schema_version"') < text.index('"tuned"') and text.index('"a"') < text.index('"b"')
