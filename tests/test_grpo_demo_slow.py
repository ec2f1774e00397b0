"""The GRPO demo (``+experiment=legal_citations_grpo``) with the real SmolLM2-135M-Instruct (``-m slow``).

It asserts what docs/alignment.md ("GRPO") reports: the held-out citation-shape compliance of the tuned model
(``reward/regex``) is above the base model's by more than the 95% interval of the change.
"""

import json
import subprocess

import pytest

from test_demo_slow import ROOT, TUNEFORGE, smollm2_env


@pytest.mark.slow
@pytest.mark.unmeasured  # not in CI's bounded slow step until its time on 2 CPU cores is measured
def test_grpo_raises_held_out_citation_shape_compliance_on_smollm2(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run([str(TUNEFORGE), "train", "+experiment=legal_citations_grpo", f"run_dir={run_dir}",
                           "trainer.enable_progress_bar=false"], cwd=ROOT, env=smollm2_env(), capture_output=True,
                          text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    change = metrics["changes"]["change"]["reward/regex"]
    assert metrics["tuned"]["reward/regex"] > metrics["base"]["reward/regex"]
    assert change["low"] > 0, change  # the whole 95% interval of the change is above 0
    for name, column in metrics["baselines"].items():
        assert "reward/regex" in column, name
