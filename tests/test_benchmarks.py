"""The pieces of the Matterport comparison that run without TensorFlow: the compatibility edits,
the weights coverage check, the shared test image and the detections agreement."""
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmarks import inference
from benchmarks import matterport_tf
from preprocess.images import load_image
from tests.reference import PUBLIC_CASE

REFERENCE_IMAGE = PUBLIC_CASE / "input_0_astronaut.png"

# Stand-ins for the lines of Matterport's files that the edits touch (not Matterport's code).
FAKE_MODEL = """import keras
import keras.backend as K
import keras.layers as KL
import keras.engine as KE
import keras.models as KM
x = tf.log(a) / tf.log(2.0)
ids = tf.to_float(tf.gather(class_ids, keep))
k = tf.sets.set_intersection(a, b)
k = tf.sets.set_intersection(c, d)
k = tf.sparse_tensor_to_dense(k)
k = tf.sparse_tensor_to_dense(j)
m = m.astype(np.bool)  # np.bool
assert m.dtype == np.bool_
class ProposalLayer(KE.Layer):
    def call(self, inputs):
        proposals = utils.batch_slice([boxes, scores], nms,
                                      self.config.IMAGES_PER_GPU)
        return proposals
    def load_weights(self):
        try:
            from keras.engine import saving
        except ImportError:
            from keras.engine import topology as saving
"""
FAKE_UTILS = """d = tf.log(h) + tf.log(w)
a = np.bool; b = np.bool; c = np.zeros(2, np.bool); d = x.astype(np.bool)
"""
EXPECTED_MODEL = """import tf_keras as keras
import tf_keras.backend as K
import tf_keras.layers as KL
import tf_keras.layers as KE
import tf_keras.models as KM
x = tf.math.log(a) / tf.math.log(2.0)
ids = tf.cast(tf.gather(class_ids, keep), tf.float32)
k = tf.sets.intersection(a, b)
k = tf.sets.intersection(c, d)
k = tf.sparse.to_dense(k)
k = tf.sparse.to_dense(j)
m = m.astype(bool)  # bool
assert m.dtype == np.bool_
class ProposalLayer(KE.Layer):
    def call(self, inputs):
        proposals = utils.batch_slice([boxes, scores], nms,
                                      self.config.IMAGES_PER_GPU)
        proposals.set_shape((None, self.proposal_count, 4))
        return proposals
    def load_weights(self):
        try:
            import matterport_hdf5_loader as saving
        except ImportError:
            from keras.engine import topology as saving
"""


def fake_package(root, model=FAKE_MODEL, utils=FAKE_UTILS):
    package = root / "Mask_RCNN" / "mrcnn"
    package.mkdir(parents=True)
    (package / "model.py").write_text(model)
    (package / "utils.py").write_text(utils)
    (package / "config.py").write_text("class Config:\n    pass\n")
    return package


def test_compat_edits_rewrite_each_line(tmp_path):
    package = fake_package(tmp_path)
    assert matterport_tf.find_package(tmp_path / "Mask_RCNN") == package
    assert matterport_tf.find_package(package) == package
    patched = matterport_tf.patched_copy(package, tmp_path / "out")
    assert (patched / "model.py").read_text() == EXPECTED_MODEL
    assert (patched / "utils.py").read_text() == (
        "d = tf.math.log(h) + tf.math.log(w)\n"
        "a = bool; b = bool; c = np.zeros(2, bool); d = x.astype(bool)\n")
    assert (patched / "config.py").read_text() == "class Config:\n    pass\n"
    assert (patched / "__init__.py").read_text() == ""
    assert (package / "model.py").read_text() == FAKE_MODEL  # the user's copy is untouched


@pytest.mark.parametrize("old, new", [
    ("import keras.engine as KE\n", ""),                        # an edit finds nothing
    ("k = tf.sets.set_intersection(c, d)\n", ""),               # too few
    ("x = tf.log(a)", "x = tf.log(tf.log(a))"),                 # too many
])
def test_compat_edits_refuse_another_version(tmp_path, old, new):
    package = fake_package(tmp_path, model=FAKE_MODEL.replace(old, new))
    with pytest.raises(SystemExit, match="is not the Matterport version this script patches"):
        matterport_tf.patched_copy(package, tmp_path / "out")


def test_find_package_explains_a_wrong_path(tmp_path):
    with pytest.raises(SystemExit, match="no Matterport mrcnn package there"):
        matterport_tf.find_package(tmp_path)


def weights_file(path, layers):
    """A Keras-layout .h5: layer_names, and per layer its weight_names."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in layers]
        for name, weights in layers.items():
            f.create_group(name).attrs["weight_names"] = [w.encode() for w in weights]
    return path


def keras_model(*layers):
    return types.SimpleNamespace(layers=[types.SimpleNamespace(name=name, weights=weights)
                                         for name, weights in layers])


def test_weights_must_cover_every_layer_with_weights(tmp_path):
    path = weights_file(tmp_path / "w.h5", {"conv1": ["conv1/kernel:0"], "relu": [],
                                            "bn4a": ["bn4a/gamma:0"]})
    model = keras_model(("conv1", [0]), ("relu", []), ("bn4a", [0]), ("input", []))
    matterport_tf.check_weights_cover(model, path)
    with pytest.raises(SystemExit, match=r"no weights for 3 layer\(s\).*\(bn4b, relu, res4b\)"):
        matterport_tf.check_weights_cover(
            keras_model(("conv1", [0]), ("relu", [0]), ("res4b", [0]), ("bn4b", [0])), path)


def test_weights_file_must_be_keras(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(SystemExit, match="not a Keras weights file"):
        matterport_tf.check_weights_cover(keras_model(), path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(SystemExit, match="cannot read the weights"):
        matterport_tf.check_weights_cover(keras_model(), tmp_path / "junk.h5")


def test_hdf5_loader_hands_layers_to_tf_keras_as_a_model(monkeypatch):
    calls = []
    legacy = types.ModuleType("hdf5_format")
    legacy.load_weights_from_hdf5_group_by_name = lambda f, model: calls.append((f, model))
    legacy.load_weights_from_hdf5_group = lambda f, model: calls.append((f, model))
    for name in ("tf_keras", "tf_keras.src", "tf_keras.src.saving",
                 "tf_keras.src.saving.legacy"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "tf_keras.src.saving.legacy.hdf5_format", legacy)
    sys.modules["tf_keras.src.saving.legacy"].hdf5_format = legacy
    loader = matterport_tf.hdf5_loader_module()
    layers = ["a", "b"]
    loader.load_weights_from_hdf5_group_by_name("file", filter(None, layers))
    loader.load_weights_from_hdf5_group("file", layers)
    for f, model in calls:
        assert f == "file" and model.layers == layers and list(model._flatten_layers()) == layers
        assert model._trainable_weights == model._non_trainable_weights == []


def test_image_hash_tells_shapes_apart():
    pixels = np.arange(24, dtype=np.uint8)
    assert (matterport_tf.image_sha256(pixels.reshape(2, 4, 3))
            != matterport_tf.image_sha256(pixels.reshape(4, 2, 3)))
    assert (matterport_tf.image_sha256(pixels.reshape(2, 4, 3))
            == matterport_tf.image_sha256(pixels.copy().reshape(2, 4, 3)))


def test_test_image_is_written_once_and_read_back_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "CACHE", tmp_path)
    path = inference.test_image_file(512)  # the reference is 512 x 512: resizing is the identity
    assert path.parent == tmp_path
    np.testing.assert_array_equal(load_image(path), load_image(REFERENCE_IMAGE))
    stamp = path.stat().st_mtime_ns
    assert inference.test_image_file(512) == path and path.stat().st_mtime_ns == stamp
    assert load_image(inference.test_image_file(256)).shape == (256, 256, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut_256.png",
                                                          "astronaut_512.png"]


def run(rois, class_ids):
    return {"detections": len(rois), "rois": rois, "class_ids": class_ids}


BOXES = [[10, 10, 50, 60], [12, 11, 52, 58], [100, 100, 140, 180]]


def test_agreement_matches_boxes_in_any_order():
    ours = run(BOXES, [1, 1, 3])
    peer = run([BOXES[2], BOXES[1], BOXES[0]], [3, 1, 1])
    assert inference.agreement(ours, peer) == (
        "agree: 3 detections each, matched one to one by class, largest box difference 0 px")
    nudged = [[b + 1 for b in BOXES[0]], BOXES[1], [100, 99, 140, 181]]
    assert inference.agreement(ours, run(nudged, [1, 1, 3])).endswith("difference 1 px")
    assert inference.agreement(run([], []), run([], [])) == (
        "agree: no detections on either side")


@pytest.mark.parametrize("peer, verdict", [
    (run([[10, 10, 52, 60]] + BOXES[1:], [1, 1, 3]), "DIFFER: 3 detections each, matched one "
     "to one by class, largest box difference 2 px"),
    (run(BOXES, [1, 2, 3]), "DIFFER: 3 detections each, not matched one to one by class, "
     "largest box difference 2 px"),
    (run(BOXES, [1, 1, 4]), "DIFFER: 3 detections each, of different classes"),
    (run(BOXES[:2], [1, 1]), "DIFFER: 3 vs 2 detections"),
])
def test_agreement_reports_differences(peer, verdict):
    assert inference.agreement(run(BOXES, [1, 1, 3]), peer) == verdict


@pytest.mark.parametrize("argv, message", [
    (["--matterport", "/somewhere"], "--matterport needs --tensorflow-python"),
    (["--tensorflow-python", sys.executable], "--tensorflow-python needs --matterport"),
    (["--matterport", "/m", "--tensorflow-python", "/no/such/python"], "no such executable"),
    (["--matterport", "/m", "--tensorflow-python", sys.executable, "--device", "cuda"],
     "compare with --device cpu"),
    (["--matterport", "/m", "--tensorflow-python", sys.executable, "--weights", "w.pth"],
     "needs Matterport .h5 weights"),
    (["--matterport", "/m", "--tensorflow-python", sys.executable, "--precision", "bf16"],
     "drop --precision/--batch"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--precision", "fp16"], "invalid choice: 'fp16'"),
    (["--competing-jobs", "-1"], "--competing-jobs must be 0 or more"),
])
def test_peer_options_are_checked_before_any_run(monkeypatch, capsys, argv, message):
    monkeypatch.delenv("MRCNN_TF_PYTHON", raising=False)
    monkeypatch.setattr(sys, "argv", ["inference.py"] + argv)
    monkeypatch.setattr(inference, "Worker", lambda *a: pytest.fail("ran a benchmark"))
    with pytest.raises(SystemExit) as exit_info:
        inference.main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def masks_result(boxes, class_ids, shape=(20, 20)):
    """A result whose masks fill the given (y1, x1, y2, x2) boxes."""
    masks = np.zeros(shape + (len(boxes),), bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        masks[y1:y2, x1:x2, i] = True
    return {"masks": masks, "class_ids": np.array(class_ids, np.int32)}


def test_precision_agreement_pairs_masks_one_to_one_by_class():
    exact = masks_result([(0, 0, 10, 10), (0, 0, 10, 8), (12, 12, 20, 20)], [1, 1, 2])
    fast = masks_result([(0, 0, 10, 9), (12, 12, 20, 20), (0, 0, 4, 4)], [1, 2, 1])
    # (0, 0, 10, 10) takes (0, 0, 10, 9) (IoU 0.9) before (0, 0, 10, 8) could (IoU 8/9); then
    # (0, 0, 10, 8) has only (0, 0, 4, 4) left (IoU 0.2 < 0.5); class 2 matches exactly.
    assert inference.precision_agreement(exact, fast) == {
        "matched": 2, "exact": 3, "fast": 3, "smallest_mask_iou": 0.9}
    other_class = masks_result([(0, 0, 10, 10)], [3])
    assert inference.precision_agreement(exact, other_class) == {
        "matched": 0, "exact": 3, "fast": 1, "smallest_mask_iou": None}
    assert inference.precision_agreement(exact, exact)["smallest_mask_iou"] == 1.0


def test_timed_runs_warms_up_then_times_each_call():
    calls = []
    warmup, times, result = matterport_tf.timed_runs(lambda: calls.append(1) or len(calls),
                                                     serving=False, repeat=3)
    assert len(calls) == 4 and len(times) == 3 and result == 4
    assert warmup >= 0 and all(t >= 0 for t in times)


SERVING_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from benchmarks.matterport_tf import timed_runs
calls = []
warmup, times, result = timed_runs(lambda: calls.append(1) or len(calls), serving=True,
                                   repeat=None)
print("some library chatter")
print(json.dumps({{"runs": len(times), "result": result}}))
"""


def test_worker_drives_a_serving_child_one_run_at_a_time(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(SERVING_CHILD.format(root=str(Path(inference.ROOT))))
    worker = inference.Worker([sys.executable, str(script)], "the test child")
    assert all(worker.run() >= 0 for _ in range(3))
    assert worker.finish() == {"runs": 3, "result": 4}  # the warm-up is call 1


def test_worker_reports_a_failing_child(tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import sys\nsys.exit('error: no model here')\n")
    with pytest.raises(SystemExit, match="the test child failed \\(exit 1\\):\nerror: no model"):
        inference.Worker([sys.executable, str(script)], "the test child")


def test_worker_reports_a_child_dying_mid_run(tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import sys\nprint('{\"ready\": true}', flush=True)\nsys.stdin.readline()\n"
                      "sys.exit('error: out of memory')\n")
    worker = inference.Worker([sys.executable, str(script)], "the test child")
    with pytest.raises(SystemExit, match="the test child failed \\(exit 1\\):\nerror: out of"):
        worker.run()


class FakeWorker:
    """Stands in for benchmarks.common.Worker in time_setting: logs what is started, run,
    checked and killed, and keeps the workers it made in `started`; `failing_run` raises on that
    run (e.g. Ctrl-C)."""

    def __init__(self, log, failing_run=None):
        self.log, self.failing_run, self.runs, self.started = log, failing_run, 0, []

    def __call__(self, command, what, env=None):
        worker = FakeWorker(self.log, self.failing_run)
        worker.what, worker.loop, worker.env = what, "--loop" in command, env
        self.log.append(("start", what))
        self.started.append(worker)
        return worker

    def run(self):
        self.runs += 1
        self.log.append(("run", self.what))
        if self.runs == self.failing_run:
            raise KeyboardInterrupt
        return 10.0

    def check_running(self):
        self.log.append(("check", self.what))

    def kill(self):
        self.log.append(("kill", self.what))

    def finish(self):
        self.log.append(("finish", self.what))
        return {"image_sha256": "same"}


def setting_args(**overrides):
    values = dict(device="cpu", batch=1, precision=["exact"], matterport="/m", repeat=2,
                  competing_jobs=2)
    return types.SimpleNamespace(**{**values, **overrides})


def test_competing_jobs_run_between_the_warm_ups_and_the_end_of_the_timed_runs(monkeypatch,
                                                                               tmp_path):
    log = []
    monkeypatch.setattr(inference, "Worker", FakeWorker(log))
    monkeypatch.setattr(inference, "test_image_file", lambda size: tmp_path / "image.png")
    monkeypatch.setattr(inference, "USERS_WAIT_POLICY", None)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    _, _, speedups = inference.time_setting("resnet50", 64, "w.h5", setting_args(), "python")
    ours, peer = "the resnet50 64 run", "the Matterport resnet50 64 run"
    jobs = ["competing job 1 (resnet50 64)", "competing job 2 (resnet50 64)"]
    assert log == ([("start", ours), ("start", peer)] + [("start", job) for job in jobs]
                   + [("run", ours), ("run", peer), ("run", peer), ("run", ours)]
                   + [("check", job) for job in jobs] + [("kill", job) for job in jobs]
                   + [("finish", ours), ("finish", peer)])
    assert speedups == [1.0, 1.0]


def test_competing_jobs_are_killed_when_a_timed_run_is_interrupted(monkeypatch, tmp_path):
    log = []
    monkeypatch.setattr(inference, "Worker", FakeWorker(log, failing_run=1))
    monkeypatch.setattr(inference, "test_image_file", lambda size: tmp_path / "image.png")
    with pytest.raises(KeyboardInterrupt):
        inference.time_setting("resnet50", 64, "w.h5", setting_args(matterport=None), "python")
    assert log[-3:] == [("run", "the resnet50 64 run"),
                        ("kill", "competing job 1 (resnet50 64)"),
                        ("kill", "competing job 2 (resnet50 64)")]


def test_the_matterport_peer_runs_in_the_users_environment(monkeypatch, tmp_path):
    """mrcnn's default OMP_WAIT_POLICY is ours, not TensorFlow's: the peer gets the user's."""
    monkeypatch.setattr(inference, "test_image_file", lambda size: tmp_path / "image.png")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    for users, expected in ((None, None), ("ACTIVE", "ACTIVE")):
        fake = FakeWorker([])
        monkeypatch.setattr(inference, "Worker", fake)
        monkeypatch.setattr(inference, "USERS_WAIT_POLICY", users)
        inference.time_setting("resnet50", 64, "w.h5", setting_args(competing_jobs=1), "python")
        ours, peer, competitor = fake.started
        assert ours.env is None and competitor.env is None and competitor.loop
        assert peer.env.get("OMP_WAIT_POLICY") == expected and peer.env["PATH"] == (
            inference.os.environ["PATH"])


def test_competing_note_says_what_ran():
    assert inference.competing_note(setting_args(competing_jobs=0)) == []
    note, = inference.competing_note(setting_args(competing_jobs=2, batch=1))
    assert note.startswith("Competing load: 2 other processes ran our exact detect() of the "
                           "same setting (1 copy of the same image")


LOOPING_CHILD = """import time
print('{"ready": true}', flush=True)
while True:
    time.sleep(0.01)
"""


def test_worker_kills_and_reaps_a_child_that_runs_until_stopped(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(LOOPING_CHILD)
    worker = inference.Worker([sys.executable, str(script)], "the looping child")
    worker.check_running()
    worker.kill()
    assert worker.process.returncode == -9


def test_worker_reports_a_child_that_stopped_running(tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import sys\nprint('{\"ready\": true}', flush=True)\n"
                      "sys.exit('error: killed by the OOM killer')\n")
    worker = inference.Worker([sys.executable, str(script)], "competing job 1")
    worker.process.wait()
    with pytest.raises(SystemExit, match="competing job 1 failed \\(exit 1\\):\nerror: killed"):
        worker.check_running()


STUB_COMPETITOR = """
import sys, time
sys.path.insert(0, {root!r})
from benchmarks import inference

class Model:
    def run_batch(self, images, precision):
        assert precision == "exact" and images == ["image"] * 2
        time.sleep(0.01)

inference.load_model = lambda *args: (Model(), ["image"] * args[-1])
inference.compete("resnet50", 64, "cpu", "w.h5", "image.png", 2)
"""


def test_a_competing_job_loops_until_its_parent_goes_away(tmp_path):
    script = tmp_path / "competitor.py"
    script.write_text(STUB_COMPETITOR.format(root=str(Path(inference.ROOT))))
    worker = inference.Worker([sys.executable, str(script)], "the competing job")
    assert worker.ready == {"ready": True}
    worker.check_running()  # still looping
    worker.process.stdin.close()  # as when the parent dies
    assert worker.process.wait(timeout=60) == 0


def test_roofline_counts_every_multiply_add_once():
    # roofline.py's stages must cover the whole network, and its MaskIoU count must be that head's.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks import roofline
    from mrcnn.config import CocoConfig
    from mrcnn.detector import MaskScoringRCNN
    from mrcnn.molding import mold_inputs

    torch.manual_seed(0)
    config = CocoConfig(BACKBONE="resnet50", NUM_CLASSES=3, CLASS_NAMES=["BG", "a", "b"],
                        IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64,
                        POST_NMS_ROIS_INFERENCE=20, DETECTION_MIN_CONFIDENCE=0.0,
                        DETECTION_MAX_INSTANCES=5)
    model = MaskScoringRCNN(config).eval()
    with torch.no_grad():
        model.box_head.class_logits.bias[1] = 10.0  # every proposal a class-1 detection
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    macs, maskiou_macs, rows = roofline.stage_macs(model, [image])
    assert rows > 0
    molded, metas, _ = mold_inputs([image], config)
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:  # the plain ops, which flop_counter counts
        model.infer(molded, metas)
    assert sum(macs.values()) == pytest.approx(counter.get_total_flops() / 2e9)
    per_row = (257 * 256 * 9 * 196 + 2 * 256 * 256 * 9 * 196 + 256 * 256 * 9 * 49
               + 256 * 49 * 1024 + 1024 * 1024 + 1024 * 3)
    assert maskiou_macs == pytest.approx(rows * per_row / 1e9)
