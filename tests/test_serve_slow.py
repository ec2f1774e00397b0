"""``tuneforge serve`` on the demo's SmolLM2 run (``-m slow``): served greedy answers to the 30 held-out
prompts equal ``tuneforge generate``'s (its ``generate_reply``), one request at a time.

The run is the demo shortened to 10 steps without evaluators; the held-out prompts are the
demo's 30 held-out cases (``tuneforge.plugins.legal_citations.generate``, as the data plugin
draws them) written as the user turn the alpaca normalization makes of them.  SmolLM2 is
fetched as in tests/test_demo_slow.py.
"""


import pytest

from test_demo_slow import smollm2_env, train_smollm2

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

SHORT = ["trainer.max_steps=10", "evaluators=[]", "baselines=[]", "memorisation.sample=0",
         "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    env = smollm2_env()
    run_dir = tmp_path_factory.mktemp("serve-demo") / "citations"
    done = train_smollm2(["+experiment=legal_citations", *SHORT, f"run_dir={run_dir}"], env, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run_dir, env


@pytest.mark.slow
@pytest.mark.long  # 35 min on 2 loaded AVX2 cores (a 10-step demo run, then 30 served answers): over CI's bound
def test_served_answers_equal_generate_on_the_held_out_prompts(short_demo, monkeypatch):
    from test_serve import Server

    from tuneforge.commands.generate import generate_reply
    from tuneforge.commands.run_loading import load_run

    from tuneforge.plugins.legal_citations import generate

    run_dir, env = short_demo
    _, held_out = generate(75, 30, seed=0)
    messages = [f"{record['instruction']}\n\n{record['input']}" for record in held_out]
    for key in ("TUNEFORGE_SMOLLM2_GGUF",):
        monkeypatch.setenv(key, env[key])
    loaded = load_run(run_dir, device="cpu")
    expected = [generate_reply(loaded, [{"role": "user", "content": m}], max_new_tokens=48) for m in messages]
    server = Server([run_dir], "threads=2")
    try:
        client = server.client()
        served = [client.chat.completions.create(model="citations", messages=[{"role": "user", "content": m}],
                                                 max_tokens=48, temperature=0).choices[0].message.content
                  for m in messages]
    finally:
        server.stop()
    assert served == expected
    assert sum(", " in answer and "(" in answer for answer in served) >= 15  # the tuned model writes citations
