"""The project stands on its own: no tracked file reaches for a folder beside the repository (the
team's material lived in one; a user's clone has no such folder)."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The sibling folder's name, built so that this file does not refer to the folder itself (it is
# checked like every other file).
FOLDER = "sha" + "red"
# A path into the sibling folder, however it is built: up a level and into it (either slash),
# from the workspace root, the folder's name followed by a slash, parent / "<name>",
# os.path.join(..., "<name>").
OUTSIDE = re.compile(rf"""\.\.[/\\]+{FOLDER}\b|/work/{FOLDER}\b|["']{FOLDER}[/\\]"""
                     rf"""|/\s*["']{FOLDER}["']|join\([^)]*["']{FOLDER}["']""")


def tracked_files():
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked files to check")
    return [name for name in listing.decode().split("\0") if name]


@pytest.mark.parametrize("text", [
    f'REFERENCE = ROOT.parent / "{FOLDER}" / "reference"', f"see ../{FOLDER}/reference/README.md",
    f"Path(__file__).parents[2] / '{FOLDER}'", rf"..\{FOLDER}\reference",
    f"/work/{FOLDER}/reference", f'os.path.join(root, "..", "{FOLDER}")',
    f'ROOT.parent / "{FOLDER}/reference"',
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
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary (images, arrays)
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == []
