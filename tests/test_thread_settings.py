"""The thread settings that mrcnn sets for a shared machine (mrcnn/__init__.py): importing mrcnn
before torch makes torch's OpenMP runtime wait passively unless the user chose a policy, and
every command of the project imports mrcnn before torch."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mrcnn", "convert_weights", "preprocess", "postprocess")
# They run under TensorFlow's Python, which has neither torch nor mrcnn.
TENSORFLOW_PEERS = ("benchmarks/matterport_tf.py", "benchmarks/tf_ops_peer.py")

# Imports a command the way `python SCRIPT` or `python -m MODULE` would, without running its
# main(), and reports the state at the moment torch is first imported (or at the end, when the
# command imports torch only later, in main()); the torch import itself never happens.
IMPORT_WATCH = """
import json, os, runpy, sys

def report(torch_imported):
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        maps = ""
    print(json.dumps({
        "torch_imported": torch_imported, "mrcnn_imported": "mrcnn" in sys.modules,
        "policy": os.environ.get("OMP_WAIT_POLICY"),
        "openmp_loaded": any(name in maps for name in ("libgomp", "libomp", "libiomp"))}))
    sys.stdout.flush()
    os._exit(0)

class TorchWatch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "torch":
            report(True)

kind, target = sys.argv[1:]
sys.meta_path.insert(0, TorchWatch)
if kind == "script":
    sys.path[0] = os.path.dirname(os.path.abspath(target))
    runpy.run_path(target, run_name="__import_check__")
else:
    sys.path[0] = os.getcwd()
    runpy.run_module(target, run_name="__import_check__")
report(False)
"""


def environment(**values):
    """The test process's environment without OMP_WAIT_POLICY, with this checkout's packages
    first on the path, and `values` added."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**env, **values}


def openmp_settings(code, **env):
    """Runs `code` in a fresh Python with the OpenMP runtime printing its settings when it loads
    (libgomp's OMP_DISPLAY_ENV). Returns (OMP_WAIT_POLICY in os.environ afterwards, libgomp's
    spin count or None where torch's OpenMP is not libgomp)."""
    done = subprocess.run(
        [sys.executable, "-c", code + "\nimport os\nprint(os.environ.get('OMP_WAIT_POLICY'))"],
        cwd=ROOT, env=environment(OMP_DISPLAY_ENV="verbose", **env), capture_output=True,
        text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    spin_count = re.search(r"GOMP_SPINCOUNT = '(\d+)'", done.stdout + done.stderr)
    return done.stdout.splitlines()[-1], spin_count and int(spin_count.group(1))


def test_importing_mrcnn_first_makes_openmp_wait_passively():
    policy, spin_count = openmp_settings("import mrcnn\nimport torch")
    assert policy == "PASSIVE"
    assert spin_count in (0, None)  # libgomp: threads sleep at once instead of spinning


def test_the_users_policy_wins():
    policy, spin_count = openmp_settings("import mrcnn\nimport torch", OMP_WAIT_POLICY="ACTIVE")
    assert policy == "ACTIVE"
    assert spin_count is None or spin_count > 10**9  # libgomp: spins "forever"


def test_after_torch_mrcnn_leaves_the_environment_alone():
    """torch's OpenMP runtime has read the environment already: setting the variable now would
    not change it, only mislead (and reach child processes)."""
    policy, spin_count = openmp_settings("import torch\nimport mrcnn")
    assert policy == "None"
    assert spin_count is None or spin_count > 0  # libgomp's default: spin a while, then sleep


def commands():
    """(kind, target) of every command of the project: its files with a __main__ block, run as
    `python -m` inside the packages and as scripts elsewhere (tests excluded)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "*.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    found = []
    for path in sorted(listed):
        file = ROOT / path
        if (path.startswith("tests/") or path in TENSORFLOW_PEERS or not file.is_file()
                or '__name__ == "__main__"' not in file.read_text()):
            continue
        if path.split("/")[0] in PACKAGES:
            module = path[:-len(".py")].replace("/", ".").removesuffix(".__main__")
            found.append(("module", module))
        else:
            found.append(("script", path))
    return found


COMMANDS = commands()


def test_every_command_is_checked():
    """The discovery finds the commands (a broken one would pass every check below)."""
    found = {target for _, target in COMMANDS}
    assert {"demo.py", "realtime_demo.py", "eval.py", "train.py", "benchmarks/inference.py",
            "benchmarks/ops.py", "mrcnn.export", "convert_weights",
            "samples/balloon_like/balloon_like.py"} <= found


@pytest.mark.parametrize("kind, target", COMMANDS, ids=[target for _, target in COMMANDS])
def test_command_imports_mrcnn_before_torch(kind, target):
    done = subprocess.run([sys.executable, "-c", IMPORT_WATCH, kind, target], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout.splitlines()[-1])
    assert state["mrcnn_imported"], f"{target} imports torch before mrcnn"
    assert state["policy"] == "PASSIVE"
    assert not state["openmp_loaded"], f"{target} loads an OpenMP runtime before torch"


def test_the_watch_catches_torch_first(tmp_path):
    script = tmp_path / "torch_first.py"
    script.write_text("import torch\nimport mrcnn\n")
    done = subprocess.run([sys.executable, "-c", IMPORT_WATCH, "script", str(script)], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "torch_imported": True, "mrcnn_imported": False, "policy": None,
        "openmp_loaded": False}
