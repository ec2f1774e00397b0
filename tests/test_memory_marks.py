"""metrics.json ``memory``: the run's peak resident memory and the phase and step that reached it."""

import sys

import pytest

from tuneforge import memory_marks
from tuneforge.evaluation.report_blocks import _memory_rows
from tuneforge.testing import run_tiny_fit

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def _touch(size: int) -> bytes:
    """``size`` bytes really resident (``bytes(n)`` and ``bytearray(n)`` may stay unmapped zero pages)."""
    return b"\x01" * size


@linux_only
def test_the_resident_figures_come_from_the_kernel():
    resident, peak, source = memory_marks.read_resident()
    assert 0 < resident <= peak and source.startswith("VmRSS/VmHWM")
    held = _touch(64 * 2 ** 20)
    now, _, _ = memory_marks.read_resident()
    assert now >= resident + 60 * 2 ** 20
    del held


@linux_only
def test_the_step_that_reached_the_peak_is_named_and_the_peak_is_never_reset():
    resident, peak, _ = memory_marks.read_resident()
    with memory_marks.recording() as marks:
        memory_marks.enter_phase("loading")
        memory_marks.mark("small step")
        memory_marks.enter_phase("evaluating")
        held = _touch(peak - resident + 256 * 2 ** 20)  # above any earlier peak of this process
        memory_marks.mark("large step")
        del held
        memory_marks.mark("after it")
    record = marks.record()
    assert record["peak_reached"] == "evaluating: large step"
    assert [(m["phase"], m["after"]) for m in record["marks"]] == [
        ("loading", "small step"), ("loading", "end of loading"), ("evaluating", "large step"),
        ("evaluating", "after it")]
    assert record["peak_rss_bytes"] >= peak + 250 * 2 ** 20
    assert record["marks"][-1]["rss_bytes"] < record["peak_rss_bytes"] - 200 * 2 ** 20  # freed, peak kept
    # /usr/bin/time still sees it (the kernel's per-thread counters are synced lazily: a few pages' slack)
    assert memory_marks.read_resident()[1] >= record["peak_rss_bytes"] - 4 * 2 ** 20
    assert "gpu_peak_bytes" not in record  # no CUDA in use


@linux_only
def test_a_run_after_a_larger_one_in_the_same_process_says_it_cannot_tell_its_own_peak():
    resident, peak, _ = memory_marks.read_resident()
    held = _touch(peak - resident + 128 * 2 ** 20)  # a first run's peak
    del held
    with memory_marks.recording() as marks:
        memory_marks.mark("small step")
    record = marks.record()
    assert record["peak_reached"] == memory_marks.EARLIER_RUN
    assert record["peak_before_run_bytes"] >= peak + 120 * 2 ** 20


def test_marks_outside_a_run_record_nothing_and_runs_do_not_share_marks():
    memory_marks.mark("nobody listens")
    memory_marks.enter_phase("nobody listens")
    with memory_marks.recording() as outer:
        memory_marks.mark("outer")
        with memory_marks.recording() as inner:
            memory_marks.mark("inner")
        memory_marks.mark("outer again")
    assert [m["after"] for m in outer.marks] == ["outer", "outer again"]
    assert [m["after"] for m in inner.marks] == ["inner"]


def test_the_report_shows_the_peak_and_where_it_was_reached():
    memory = {"peak_rss_bytes": 5 * 2 ** 30, "peak_reached": "training: end of training",
              "gpu_peak_bytes": 3 * 2 ** 29, "gpu_peak_reached": "evaluating the base model: rag"}
    assert _memory_rows(memory) == [
        ["peak resident memory (main process)", "5.00 GiB, reached in training: end of training"],
        ["peak GPU memory (torch, main process)", "1.50 GiB, reached in evaluating the base model: rag"]]
    assert _memory_rows({}) == []


@linux_only
def test_a_runs_metrics_json_names_its_peak_phase_and_marks_every_phase_and_pass(tmp_path):
    # earlier tests in this worker may have set a higher peak: hand the allocator's free memory back and
    # reset the high-water mark to what is resident, so the run's own peak is the process's (the product
    # never resets it: that would hide the peak from /usr/bin/time)
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    result = run_tiny_fit(tmp_path, overrides=["trainer.max_steps=2", "memorisation.sample=2"])
    memory = result.metrics["memory"]
    marks = memory["marks"]
    assert memory["peak_rss_bytes"] == max(m["peak_rss_bytes"] for m in marks)
    phase, _, step = memory["peak_reached"].partition(": ")
    assert (phase, step) in {(m["phase"], m["after"]) for m in marks}
    steps = [(m["phase"], m["after"]) for m in marks]
    for expected in [("loading the model", "end of loading the model"),
                     ("evaluating the base model", "perplexity on the base column"),
                     ("training", "end of training"),
                     ("evaluating the tuned model", "perplexity on the tuned column"),
                     ("scoring the memorisation sample", "perplexity on the tuned column"),
                     ("saving the results", "saving the model")]:
        assert expected in steps, steps
    times = [m["time_s"] for m in marks]
    assert times == sorted(times)
    peaks = [m["peak_rss_bytes"] for m in marks]
    assert peaks == sorted(peaks)  # a high-water mark only rises
    report = (result.run_dir / "report.md").read_text()
    assert "peak resident memory (main process)" in report and memory["peak_reached"] in report
