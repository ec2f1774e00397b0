"""The compatibility policy (docs/plugins.md, "Compatibility"): a plugin package written against the
previous release passes its own tests, with a deprecation warning for what it still relies on."""

import os
import shutil
import subprocess
import sys

from helpers import FIXTURES


def test_a_plugin_written_against_the_previous_release_passes_its_own_tests(tmp_path):
    package = tmp_path / "oldstyle"  # the author's checkout, outside this project (its pytest settings)
    shutil.copytree(FIXTURES / "oldstyle", package)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rw", "-W",
                             "default::DeprecationWarning", "oldplug/tests"],
                            capture_output=True, text=True, env=env, cwd=package, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
    assert "DeprecationWarning: plugins.disable=['oldplug'] in the overrides of tuneforge_fit/run_tiny_fit is " \
           "not needed any more" in result.stdout
