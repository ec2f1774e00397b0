"""Tests of the ``bitfit`` adapter: what trains, the guards, and a tiny fit."""

import pytest
import torch
from safetensors.torch import load_file

import tuneforge
from tuneforge.testing import tiny_model

from tuneforge_tsv_bitfit import plugin
from tuneforge_tsv_bitfit.adapter import BitFitConfig, apply_bitfit, trainable_names


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
    result = tuneforge_fit(plugins=[plugin], overrides=["adapter=bitfit", "optim.lr=1e-2"])
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


def test_extra_trainable_parameters_by_name():
    model, _ = tiny_model()
    apply_bitfit(model, BitFitConfig(extra_trainable=["^lm_head\\."], max_trainable_fraction=0.5))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "lm_head.weight" in trained and trained - {"lm_head.weight"} == set(trainable_names(model))
    with pytest.raises(ValueError, match="is not a regular expression"):
        BitFitConfig(extra_trainable=["lm_head("])
