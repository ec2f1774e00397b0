"""The default demo as QLoRA (``+experiment=legal_citations adapter=qlora``: LoRA on every linear layer over
an NF4 base with double quantization) on the real SmolLM2-135M-Instruct (``-m slow``).

It runs the demo as ``bash .ci/demo adapter=qlora`` does, whole, and asserts that its four quality
targets pass (targets.json: base and tuned exact match, forgetting, training examples) and that the base
really was 4-bit.  The fifth target, the run within 15 minutes, depends on the CPU: on 2 AVX2-only cores
the demo takes 30 min as QLoRA (bitsandbytes' 4-bit matrix products on the CPU) and about 25 min in
fp32, so it is reported, not asserted (docs/demo.md, "QLoRA", gives both runs' time and peak memory).
"""

import json

import pytest

from test_demo_slow import smollm2_env, train_smollm2

pytest.importorskip("bitsandbytes")


@pytest.mark.slow
@pytest.mark.long  # the whole demo with its baselines, 4-bit matrix products on 2 AVX2 cores (docs/demo.md)
def test_the_demo_as_qlora_meets_its_quality_targets_on_smollm2(tmp_path):
    run_dir = tmp_path / "qlora"
    done = train_smollm2(["+experiment=legal_citations", "adapter=qlora", "threads=2",
                          "trainer.enable_progress_bar=false", f"run_dir={run_dir}"], smollm2_env(), timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    targets = json.loads((run_dir / "targets.json").read_text())
    assert len(targets["checks"]) == 5
    missed = [check for check in targets["checks"]
              if not check["passed"] and not check["expression"].startswith("wall_time_s")]
    assert not missed, missed
    config = (run_dir / "config.yaml").read_text()
    assert "quantization: nf4" in config and "double_quant: true" in config
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["tuned"]["exact_match"] >= 0.9 and metrics["base"]["exact_match"] <= 0.1
