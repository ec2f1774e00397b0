"""oldplug's own tests, as written against tuneforge 0.1: the installed package had to be blocked with
plugins.disable=[oldplug] so that the module passed in plugins= did not collide with it."""

import oldplug.plugin as plugin


def test_head_only_trains(tuneforge_fit):
    result = tuneforge_fit(plugins=[plugin], overrides=["plugins.disable=[oldplug]", "adapter=head_only",
                                                        "trainer.max_steps=2", "baselines=[]",
                                                        "evaluators=[perplexity]", "memorisation.sample=0"])
    assert result.metrics["steps"] == 2
    assert result.metrics["parameters"]["trainable"] < result.metrics["parameters"]["total"]
