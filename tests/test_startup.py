"""Start-up of ``tuneforge train`` (docs/performance.md, "Start-up"): what is imported before the run needs
it, and the garbage collector's pause while the libraries load."""

import gc
import subprocess
import sys

from tuneforge.commands.train import StartupCollector

#: what Lightning brings (torchmetrics imports matplotlib.pyplot, scipy.signal and transformers): none of it
#: until a job has passed validation
HEAVY = ("torch", "lightning", "torchmetrics", "matplotlib", "scipy", "transformers", "peft", "datasets")


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


def run_main(argv: list, cwd, printed: str = "") -> subprocess.CompletedProcess:
    """A fresh interpreter that runs ``tuneforge.commands.cli.main(argv)``, then prints ``HEAVY`` and the heavy
    modules it imported, then ``printed`` (more expressions, with ``gc`` and ``sys`` imported)."""
    return run_python("import gc, sys\n"
                      "from tuneforge.commands.cli import main\n"
                      f"main({argv!r})\n"
                      f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules){printed})\n", cwd)


def test_composition_and_validation_import_none_of_the_heavy_libraries(tmp_path):
    code = ("import sys\n"
            "from tuneforge.host.compose import compose, load_plugins\n"
            "from tuneforge.host.components import run_components\n"
            "overrides = ['model=tiny', 'trainer.max_steps=1', 'evaluators=[perplexity,rouge]']\n"
            "plugins = load_plugins(overrides)\n"
            "run = run_components(compose(overrides), plugins)\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), run.settings.trainer.max_steps)\n")
    result = run_python(code, tmp_path)
    assert "HEAVY [] 1" in result.stdout, result.stdout + result.stderr[-3000:]


def test_printing_the_composed_config_imports_none_of_them_and_leaves_the_collector_on(tmp_path):
    result = run_main(['train', '--cfg', 'job', 'model=tiny', 'trainer.max_steps=1'], tmp_path,
                      ", gc.isenabled(), gc.get_freeze_count()")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_steps: 1" in result.stdout
    # main([...]) called by code is not the program: its collector is on again and nothing is frozen
    assert "HEAVY [] True 0" in result.stdout, result.stdout + result.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_train_help_imports_none_of_them(tmp_path):
    result = run_main(['train', '--help', 'adapter=lora'], tmp_path)
    assert result.returncode == 0 and "adapter" in result.stdout, result.stderr[-3000:]
    assert "HEAVY []" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]


def test_a_refused_run_turns_the_collector_on_again(tmp_path):
    code = ("import gc\n"
            "from tuneforge.commands.cli import main\n"
            "try:\n    main(['train', 'adapter.r=0', 'run_dir=r'])\n"
            "except SystemExit as exc:\n    print('EXIT', exc.code, gc.isenabled(), gc.get_freeze_count())\n")
    result = run_python(code, tmp_path)
    assert "EXIT 2 True 0" in result.stdout, result.stdout + result.stderr[-3000:]


def test_the_program_freezes_what_survives_before_it_exits(tmp_path):
    # as `tuneforge ...` runs it: main() reads sys.argv; atexit handlers still run after it (the last one
    # registered runs first)
    code = ("import atexit, gc, sys\n"
            "sys.argv = ['tuneforge', 'train', 'adapter.r=0', 'run_dir=r']\n"
            "atexit.register(lambda: print('AT EXIT', gc.isenabled(), gc.get_freeze_count() > 0, flush=True))\n"
            "from tuneforge.commands.cli import main\n"
            "main()\n")
    result = run_python(code, tmp_path)
    assert result.returncode == 2 and "adapter.r" in result.stderr
    assert "AT EXIT True True" in result.stdout, result.stdout + result.stderr[-3000:]


def test_the_collector_is_paused_until_resumed_and_frozen_only_when_asked():
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    collector = StartupCollector()
    try:
        assert not gc.isenabled()
        collector.resume()
        assert gc.isenabled() and gc.get_freeze_count() == frozen
        collector.resume()  # once only
        assert gc.isenabled()
    finally:
        gc.enable()
    gc.disable()
    try:
        paused_by_caller = StartupCollector(freeze=True)
        paused_by_caller.resume()  # it was off before: it stays off, and nothing is frozen
        assert not gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.enable()
