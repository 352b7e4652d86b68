import os
import stat
import subprocess
import sys

import pytest

from mrcnn.atomic import (HOST_TAG, TEMPORARY_NAME, atomic_path, atomic_write,
                          remove_stale_temporaries)


def test_replaces_the_file_with_the_usual_mode(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with atomic_write(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path, "w") as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_file_and_folder_are_synced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open
    opened = {}

    def tracking_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        opened[fd] = os.path.basename(os.fspath(path))
        return fd

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", opened.get(fd)))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", os.path.basename(b)))
                        or real_replace(a, b))
    with atomic_write(tmp_path / "model.pth") as f:
        f.write(b"weights")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(".model.pth.")        # the temporary file's data first
    assert events[2][1] == tmp_path.name                  # then the folder's new entry


def test_only_the_temporaries_of_dead_writers_of_this_host_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    names = {
        "killed": f".epoch_0002.pth.{HOST_TAG}-{dead}.k3x_9abc.tmp",
        "running": f".epoch_0003.pth.{HOST_TAG}-{os.getpid()}.k3x_9abc.tmp",
        "other_host": f".epoch_0004.pth.0123abcd-{dead}.k3x_9abc.tmp",
        "user_file": "notes.tmp",
        "checkpoint": "epoch_0001.pth",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [tmp_path / names["killed"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        name for key, name in names.items() if key != "killed")
    assert remove_stale_temporaries(tmp_path / "absent") == []
    # The names atomic writes use are the ones recognised.
    with atomic_path(tmp_path / "out.json") as tmp:
        assert TEMPORARY_NAME.fullmatch(tmp.name)
