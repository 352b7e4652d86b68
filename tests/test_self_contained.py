"""The project stands on its own: no tracked file reaches for a folder beside the repository (the
team's material lived in ../shared; a user's clone has no such folder)."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# This file must spell the patterns out; it is the only file exempt.
EXEMPT = {Path(__file__).resolve().relative_to(ROOT).as_posix()}
# A path into a sibling folder named "shared", however it is built: "../shared", "..\\shared",
# "/work/shared", "shared/reference", parent / "shared", os.path.join(..., "shared").
OUTSIDE = re.compile(r"""\.\.[/\\]+shared\b|/work/shared\b|["']shared[/\\]|/\s*["']shared["']"""
                     r"""|join\([^)]*["']shared["']""")


def tracked_files():
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked files to check")
    return [name for name in listing.decode().split("\0") if name]


@pytest.mark.parametrize("text", [
    'REFERENCE = ROOT.parent / "shared" / "reference"', "see ../shared/reference/README.md",
    "Path(__file__).parents[2] / 'shared'", r"..\shared\reference", "/work/shared/reference",
    'os.path.join(root, "..", "shared")', 'ROOT.parent / "shared/reference"',
])
def test_the_pattern_catches_paths_to_the_folder(text):
    assert OUTSIDE.search(text)


@pytest.mark.parametrize("text", [
    "rpn_model/rpn_conv_shared/kernel:0", "2 cores shared with other jobs",
    "the shared RPN", "Command-line plumbing shared by the scripts",
])
def test_the_pattern_leaves_the_word_alone(text):
    assert not OUTSIDE.search(text)


def test_no_tracked_file_refers_to_the_folder_beside_the_repository():
    found = []
    for name in tracked_files():
        path = ROOT / name
        if name in EXEMPT or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary (images, arrays)
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == []
