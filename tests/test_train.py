"""The training graph, mrcnn.trainer and train.py: layer groups, the L2 term, warm-up, the loss
of a split batch, overfitting two images, resume after SIGKILL (mid-epoch and while a checkpoint
is written) bit-identical to an uninterrupted run, a 2-process gloo DDP run that matches one
process, non-finite losses, fine-tuning across class counts and the command's errors."""
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_script
import train
from mrcnn import trainer as trainer_module
from mrcnn.config import Config
from mrcnn.detector import MaskScoringRCNN
from mrcnn.trainer import ResumeMismatchError, Trainer, TrainerError, WarmupSchedule
from mrcnn.training import (LOSS_NAMES, TrainingModel, pixel_anchors, regularized_parameters,
                            set_trainable, total_loss)
from mrcnn.weights import CLASS_LAYERS, load_pretrained, save_weights
from preprocess.synthetic import write_dataset
from preprocess.training_data import flip_left_right

ROOT = Path(__file__).resolve().parents[1]

# Small enough for a CPU: 64x64 images, a narrow FPN and classifier, few RoIs.
TINY = {"BACKBONE": "resnet50", "IMAGE_MIN_DIM": 64, "IMAGE_MAX_DIM": 64,
        "MINI_MASK_SHAPE": [28, 28], "TOP_DOWN_PYRAMID_SIZE": 64,
        "FPN_CLASSIF_FC_LAYERS_SIZE": 128, "TRAIN_ROIS_PER_IMAGE": 16, "ROI_POSITIVE_RATIO": 0.25,
        "POST_NMS_ROIS_TRAINING": 256, "PRE_NMS_LIMIT": 1024, "RPN_TRAIN_ANCHORS_PER_IMAGE": 64}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Two training and two validation images of preprocess.synthetic, and the tiny config."""
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root / "data", 2, 2, seed=3, size=64, progress=False)
    (root / "tiny.json").write_text(json.dumps(TINY))
    # Sampling caps above what the images fill, so that their counts of anchors and RoIs
    # differ: the DDP test then shows that the losses are normalised over the global batch.
    uncapped = dict(TINY, RPN_TRAIN_ANCHORS_PER_IMAGE=512, TRAIN_ROIS_PER_IMAGE=64,
                    ROI_POSITIVE_RATIO=0.5)
    (root / "uncapped.json").write_text(json.dumps(uncapped))
    (root / "uncapped_one_image.json").write_text(json.dumps(dict(uncapped, IMAGES_PER_GPU=1)))
    return root


def train_args(shapes, out, *extra, weights="none"):
    """train.py's arguments for the tiny model on `shapes`; --weights `weights` unless None."""
    weights = [] if weights is None else ["--weights", weights]
    return ["--dataset", str(shapes / "data"), "--train-split", "train", "--val-split", "val",
            "--config", str(shapes / "tiny.json"), *weights, "--layers", "heads",
            "--lr", "0.02", "--warmup-steps", "0", "--workers", "0", "--device", "cpu",
            "--validation-steps", "1", "--quiet", "--out", str(out), *extra]


def read_metrics(run_dir, name="metrics.csv"):
    """The rows of a CSV log, without the timing columns."""
    with open(run_dir / name, newline="") as f:
        return [{k: v for k, v in row.items() if k not in ("seconds", "data_seconds")}
                for row in csv.DictReader(f)]


def run_train(*argv):
    assert train.main(list(argv)) == 0


def tiny_model(num_classes=7, **overrides):
    torch.manual_seed(0)
    return MaskScoringRCNN(Config(**dict(TINY, NUM_CLASSES=num_classes, **overrides)))


def trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_layer_groups_follow_matterports_regexes():
    model = tiny_model()
    every = {name for name, _ in model.named_parameters()}
    heads = {n for n in every if not n.startswith("backbone.")}
    set_trainable(model, "heads")
    assert trainable(model) == heads
    set_trainable(model, "4+")
    assert trainable(model) == heads | {n for n in every
                                        if n.startswith(("backbone.stages.2", "backbone.stages.3"))}
    set_trainable(model, "maskiou")
    assert trainable(model) == {n for n in every if n.startswith("maskiou_head.")}
    set_trainable(model, "all")
    assert trainable(model) == every
    set_trainable(model, r"mrcnn_mask_conv\d")  # a regex, matched against whole names
    assert trainable(model) == {n for n in every if n.startswith("mask_head.convs.")}
    with pytest.raises(ValueError, match="matches no layer"):
        set_trainable(model, "res9.*")
    with pytest.raises(ValueError, match="regular expression"):
        set_trainable(model, "(")


def test_l2_term_covers_trained_kernels_and_biases_not_batch_norm():
    model = tiny_model()
    set_trainable(model, "5+")
    names = {id(p): n for n, p in model.named_parameters()}
    covered = {names[id(p)] for p in regularized_parameters(model)}
    assert "backbone.stages.3.0.conv_a.bias" in covered and "mask_head.mask.weight" in covered
    assert "maskiou_head.fc1.weight" in covered
    assert not any(".bn" in n or "_bn" in n for n in covered)  # gamma and beta are left out
    assert "backbone.stages.2.0.conv_a.weight" not in covered  # frozen
    assert set(model.named_layers()) >= set(CLASS_LAYERS)


def test_pixel_anchors_are_the_models_anchors_before_normalisation():
    config = Config(**dict(TINY, NUM_CLASSES=2))
    pixels = pixel_anchors(config, (64, 128), "cpu").numpy()
    normalised = ((pixels - [0, 0, 1, 1]) / [63, 127, 63, 127]).astype(np.float32)
    model = MaskScoringRCNN(config)
    np.testing.assert_array_equal(normalised, model.anchors((64, 128), "cpu").numpy())


def test_warmup_schedule():
    schedule = WarmupSchedule(warmup_steps=10, steps_per_epoch=100, drop_epochs=[2, 3])
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(5) == pytest.approx(0.001 + 0.999 * 0.5)
    assert [schedule(s) for s in (10, 199, 200, 300)] == pytest.approx([1, 1, 0.1, 0.01])
    # A run that goes on from epoch 2 (--weights last) warms up again; the drops stay put.
    later = WarmupSchedule(warmup_steps=10, steps_per_epoch=100, drop_epochs=[3],
                                 first_epoch=2)
    assert [later(s) for s in (0, 10, 99, 100)] == pytest.approx([0.001, 1, 1, 0.1])


def toy_batch(instances):
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[[8, 8, 40, 36], [30, 20, 60, 60]], [[0, 0, 30, 50], [0, 0, 0, 0]]],
                         dtype=torch.int32)[:, :instances]
    classes = torch.tensor([[1, 2], [3, 0]])[:, :instances]
    masks = torch.zeros(2, instances, 28, 28, dtype=torch.bool)
    masks[..., 4:24, 6:20] = True
    return images, classes, boxes, masks, torch.ones(2, 7)


def test_maskiou_loss_trains_the_mask_head_too_and_empty_images_train():
    model = tiny_model()
    set_trainable(model, "heads")
    losses = TrainingModel(model)(*toy_batch(2), generator=torch.Generator().manual_seed(0))
    assert losses["mrcnn_mask_loss"] > 0
    losses["maskiou_loss"].backward()
    # As in the official Mask Scoring R-CNN, the predicted mask fed to the MaskIoU head is not
    # detached: its loss reaches the mask head, but not the box head.
    assert model.mask_head.mask.weight.grad.abs().sum() > 0
    assert model.box_head.class_logits.weight.grad is None
    model.zero_grad()
    losses = TrainingModel(model)(*toy_batch(0), generator=torch.Generator().manual_seed(0))
    assert losses["mrcnn_mask_loss"] == 0 and losses["rpn_class_loss"] > 0
    total_loss(losses, model.config).backward()
    # Every trained parameter gets a (finite) gradient even without positive RoIs, as
    # DistributedDataParallel needs.
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)



def test_the_parts_of_a_batch_pooled_by_their_counts_give_the_batch_loss():
    """What DDP's loss normalisation relies on (mrcnn.trainer.Stage.pooled)."""
    model = tiny_model()
    images, classes, boxes, masks, active = toy_batch(2)

    def generators():
        return [torch.Generator().manual_seed(seed) for seed in (11, 12)]

    with torch.no_grad():
        whole, counts = TrainingModel(model)(images, classes, boxes, masks, active,
                                             generator=generators(), return_counts=True)
        parts = [TrainingModel(model)(images[i:i + 1], classes[i:i + 1], boxes[i:i + 1],
                                      masks[i:i + 1], active[i:i + 1],
                                      generator=generators()[i:i + 1], return_counts=True)
                 for i in (0, 1)]
    assert set(counts) == set(LOSS_NAMES) - {"l2_loss"}
    for name in counts:
        assert counts[name] == sum(part_counts[name] for _, part_counts in parts)
        pooled = (sum(losses[name] * part_counts[name] for losses, part_counts in parts)
                  / counts[name].clamp(min=1))
        torch.testing.assert_close(pooled, whole[name], rtol=1e-5, atol=1e-6)
    assert counts["mrcnn_mask_loss"] > 0 and counts["rpn_bbox_loss"] > 0
    # Some parts differ in count: the batch loss is a weighted mean of the parts' losses.
    assert any(parts[0][1][name] != parts[1][1][name] for name in counts)


def test_overfits_two_images(shapes, tmp_path):
    run_train(*train_args(shapes, tmp_path, "--epochs", "1", "--steps-per-epoch", "30",
                          "--val-split", "none", "--no-augment"))
    losses = [float(row["loss"]) for row in read_metrics(tmp_path)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * losses[0]


# Resume. The same command throughout: 2 epochs of 2 steps, no validation (it changes nothing
# of the training), 2 loader workers.
RESUMED_RUN = ("--epochs", "2", "--steps-per-epoch", "2", "--val-split", "none",
               "--workers", "2")

# Runs train.py and kills itself (SIGKILL, no clean-up of any kind) at a chosen moment:
#   step N     while computing the loss of optimisation step N
#   write E    half-way through writing the model checkpoint of epoch E
KILLING_DRIVER = """
import io, os, signal, sys
import torch
torch.set_num_threads(int(os.environ["MRCNN_TEST_THREADS"]))
import mrcnn.trainer, train

def die():
    os.kill(os.getpid(), signal.SIGKILL)

moment, number, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if moment == "step":
    real_total_loss, calls = mrcnn.trainer.total_loss, []
    def total_loss(losses, config):
        calls.append(1)
        if len(calls) == number:
            die()
        return real_total_loss(losses, config)
    mrcnn.trainer.total_loss = total_loss
else:
    real_save = torch.save
    def save(obj, f):
        if isinstance(obj, dict) and obj.get("training", {}).get("epoch") == number:
            data = io.BytesIO()
            real_save(obj, data)
            f.write(data.getvalue()[:len(data.getvalue()) // 2])
            f.flush()
            die()
        real_save(obj, f)
    torch.save = save
sys.exit(train.main(argv))
"""


def killed_run(shapes, out, moment, number):
    """train.py with RESUMED_RUN into `out` in a process killed at `moment` `number`."""
    env = dict(os.environ, MRCNN_TEST_THREADS=str(torch.get_num_threads()))
    result = subprocess.run(
        [sys.executable, "-c", KILLING_DRIVER, moment, str(number),
         *train_args(shapes, out, *RESUMED_RUN)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == -signal.SIGKILL, result.stderr


@pytest.fixture(scope="module")
def uninterrupted(shapes, tmp_path_factory):
    """The run directory of RESUMED_RUN, never interrupted."""
    out = tmp_path_factory.mktemp("uninterrupted")
    run_train(*train_args(shapes, out, *RESUMED_RUN))
    return out


def assert_identical(ours, theirs, where="checkpoint"):
    """Nested dicts, lists and tensors equal bit for bit."""
    assert type(ours) is type(theirs), where
    if isinstance(ours, dict):
        assert list(ours) == list(theirs), where
        for key in ours:
            assert_identical(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), where
        for index, (mine, other) in enumerate(zip(ours, theirs)):
            assert_identical(mine, other, f"{where}[{index}]")
    elif isinstance(ours, torch.Tensor):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), where
    else:
        assert ours == theirs, where


def assert_same_run(run_dir, reference):
    """The final checkpoints (weights, optimiser, schedule, random state) and the logs are
    bit-identical."""
    for name in ("epoch_0002.pth", "epoch_0002.state.pth"):
        assert_identical(torch.load(run_dir / name, weights_only=True),
                         torch.load(reference / name, weights_only=True), name)
    assert read_metrics(run_dir) == read_metrics(reference)
    assert read_metrics(run_dir, "validation.csv") == read_metrics(reference, "validation.csv")


def test_resume_after_a_kill_mid_epoch_ends_as_if_uninterrupted(shapes, tmp_path,
                                                                  uninterrupted, capsys):
    killed_run(shapes, tmp_path, "step", 4)  # the last step of epoch 2
    assert [row["step"] for row in read_metrics(tmp_path)] == ["1", "2", "3"]
    # The same command, weights included, plus --resume.
    run_train(*train_args(shapes, tmp_path, *RESUMED_RUN, "--resume"))
    out = capsys.readouterr().out
    assert f"--resume: continuing {tmp_path} from {tmp_path / 'epoch_0001.pth'} (epoch 1, " \
           "step 2); --weights is not used" in out
    assert_same_run(tmp_path, uninterrupted)
    # Done: the same command again trains nothing.
    run_train(*train_args(shapes, tmp_path, *RESUMED_RUN, "--resume"))
    assert "already trained to epoch 2" in capsys.readouterr().out
    # Resuming with other settings is refused, naming them.
    assert train.main(train_args(shapes, tmp_path, "--epochs", "3", "--steps-per-epoch", "2",
                                 "--val-split", "none", "--layers", "5+", "--lr", "0.01",
                                 "--resume")) == 1
    err = capsys.readouterr().err
    assert "was trained with --layers heads (this command: 5+), --lr 0.02 (this command: " \
           "0.01)" in err and "--weights last" in err


def test_resume_after_a_kill_while_writing_a_checkpoint_ends_as_if_uninterrupted(
        shapes, tmp_path, uninterrupted, capsys):
    killed_run(shapes, tmp_path, "write", 2)
    # Epoch 2's training state was written, its checkpoint only half, under a temporary name.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".epoch_0002.pth.")]
    assert len(leftovers) == 1 and (tmp_path / "epoch_0002.state.pth").exists()
    assert not (tmp_path / "epoch_0002.pth").exists()
    run_train(*train_args(shapes, tmp_path, *RESUMED_RUN, "--resume"))
    out = capsys.readouterr().out
    assert f"removed {tmp_path / leftovers[0]}, left by an interrupted write" in out
    assert f"from {tmp_path / 'epoch_0001.pth'} (epoch 1, step 2)" in out
    assert_same_run(tmp_path, uninterrupted)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "epoch_0001.pth", "epoch_0002.pth", "epoch_0002.state.pth"]  # state of the newest only

    # A next stage (Matterport's --model last) counts on from the newest checkpoint.
    run_train(*train_args(shapes, tmp_path, "--epochs", "3", "--steps-per-epoch", "1",
                          "--layers", "5+", "--val-split", "none", "--keep-last", "1",
                          weights="last"))
    assert [row["step"] for row in read_metrics(tmp_path)] == ["1", "2", "3", "4", "5"]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["epoch_0003.pth",
                                                              "epoch_0003.state.pth"]
    checkpoint = torch.load(tmp_path / "epoch_0003.pth", weights_only=True)
    assert checkpoint["training"]["settings"]["layers"] == "5+"
    assert checkpoint["training"]["global_step"] == 5


def test_resume_without_a_checkpoint_starts_from_the_weights(shapes, tmp_path, capsys):
    run_train(*train_args(shapes, tmp_path, "--epochs", "0", "--resume"))
    out = capsys.readouterr().out
    assert f"--resume: {tmp_path} has no checkpoint yet; starting from --weights none" in out


def test_export_weights_for_inference(uninterrupted, tmp_path, capsys):
    assert train.main(["--export-weights", str(uninterrupted), str(tmp_path / "model.pth")]) == 0
    assert f"the weights and config of {uninterrupted / 'epoch_0002.pth'}" in \
        capsys.readouterr().out
    exported = torch.load(tmp_path / "model.pth", weights_only=True)
    checkpoint = torch.load(uninterrupted / "epoch_0002.pth", weights_only=True)
    assert "training" not in exported
    torch.testing.assert_close(exported["state_dict"], checkpoint["state_dict"], rtol=0, atol=0)
    model = MaskScoringRCNN.from_weights(tmp_path / "model.pth")  # as demo.py and eval.py do
    assert model.maskiou_head.trained
    assert train.main(["--export-weights", str(uninterrupted / "epoch_0001.pth"),
                       str(uninterrupted / "epoch_0001.pth")]) == 1
    assert "would overwrite the input" in capsys.readouterr().err


# The DDP comparison runs where CPU kernels give each image bit for bit the same result alone or
# in a batch: one thread, and PyTorch's own convolutions instead of oneDNN's. Elsewhere float
# noise of 1e-7 between two runs already changes discrete choices: a box clipped to the image
# edge samples inside or outside it in Matterport's crop_and_resize.
DDP_STEP = ("--epochs", "1", "--steps-per-epoch", "1", "--val-split", "none", "--workers", "0")


def batch_invariant_numerics():
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False


def ddp_worker(rank, shapes, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    batch_invariant_numerics()
    real_train = trainer_module.Trainer.train

    def train_and_record(self, *args, **kwargs):
        real_train(self, *args, **kwargs)
        digest = hashlib.sha256()
        for p in self.model.parameters():
            digest.update(p.detach().numpy().tobytes())
        (out / f"rank{rank}.sha256").write_text(digest.hexdigest())

    trainer_module.Trainer.train = train_and_record
    assert train.main(train_args(shapes, out, *DDP_STEP,
                                 "--config", str(shapes / "uncapped_one_image.json"))) == 0


def test_ddp_on_two_processes_matches_one_process_over_the_same_batch(shapes, tmp_path):
    """Two processes of 1 image per step against one process of 2: the same global batch, so
    the same losses and the same weights after the step, to float rounding (the gradients are
    summed in another order)."""
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    try:
        batch_invariant_numerics()
        run_train(*train_args(shapes, tmp_path / "single", *DDP_STEP,
                              "--config", str(shapes / "uncapped.json")))
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(ddp_worker, args=(shapes, tmp_path / "ddp", port), nprocs=2)
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    assert (ddp / "rank0.sha256").read_text() == (ddp / "rank1.sha256").read_text()
    (row,), (reference,) = read_metrics(ddp), read_metrics(single)  # only rank 0 writes
    np.testing.assert_allclose([float(row[name]) for name in ("loss",) + LOSS_NAMES],
                               [float(reference[name]) for name in ("loss",) + LOSS_NAMES],
                               rtol=1e-6)
    ours = torch.load(ddp / "epoch_0001.pth", weights_only=True)["state_dict"]
    theirs = torch.load(single / "epoch_0001.pth", weights_only=True)["state_dict"]
    initial = tiny_model(**{name: value for name, value in
                            json.loads((shapes / "uncapped.json").read_text()).items()
                            if name not in TINY}).state_dict()
    changed = [name for name in theirs if not torch.equal(theirs[name], initial[name])
               and name != "maskiou_head.trained"]
    assert len(changed) > 50  # the step moved every trained layer
    for name in changed:
        # The same update, to a few float32 steps of the weight and 0.2% of the layer's largest
        # update (gradients summed in another order); normalising each process's loss by its
        # own counts instead would be off by several percent.
        weight, update = theirs[name], theirs[name] - initial[name]
        step = torch.nextafter(weight.abs(), torch.tensor(float("inf"))) - weight.abs()
        tolerance = 4 * step + 2e-3 * update.abs().max()
        assert ((ours[name] - weight).abs() <= tolerance).all(), name


class BoxesDataset:
    """Two 64x64 images with two rectangles each, through Matterport's Dataset interface only."""

    num_classes = 3
    class_names = ["BG", "wide", "tall"]
    image_ids = np.arange(2)
    boxes = [[(8, 4, 20, 40, 1), (30, 40, 60, 52, 2)], [(40, 6, 56, 50, 1), (4, 20, 36, 30, 2)]]

    def load_image(self, image_id):
        image = np.full((64, 64, 3), 40 * image_id + 30, np.uint8)
        for y1, x1, y2, x2, class_id in self.boxes[image_id]:
            image[y1:y2, x1:x2] = 200 if class_id == 1 else 120
        return image

    def load_mask(self, image_id):
        masks = np.zeros((64, 64, 2), bool)
        for k, (y1, x1, y2, x2, _) in enumerate(self.boxes[image_id]):
            masks[y1:y2, x1:x2, k] = True
        return masks, np.array([box[-1] for box in self.boxes[image_id]], np.int32)

    def image_reference(self, image_id):
        return f"boxes image {image_id}"


def test_the_library_trains_stages_as_matterport_and_a_rerun_script_resumes(tmp_path):
    """Matterport's MaskRCNN.train semantics through mrcnn.trainer: absolute epochs, stages,
    any dataset with Matterport's interface, an augmentation callable; a script of stages run
    again after resume() skips the done stages."""
    dataset, messages = BoxesDataset(), []
    calls = []

    def counting_flip(image, masks):
        calls.append(1)
        return flip_left_right(image, masks)

    def trainer():
        torch.manual_seed(0)
        model = MaskScoringRCNN(Config(**dict(TINY, NUM_CLASSES=3)))
        return Trainer(model, tmp_path, steps_per_epoch=1, validation_steps=1, workers=0,
                       progress=False, log=messages.append)

    first = trainer()
    assert first.resume() is None
    first.train(dataset, dataset, 0.01, 1, "heads", augmentation=counting_flip)
    first.train(dataset, None, 0.01, 2, "5+")
    assert (first.epoch, first.global_step) == (2, 2) and len(calls) == 2
    rows = read_metrics(tmp_path, "validation.csv")
    assert [row["epoch"] for row in rows] == ["1", "2"] and rows[1]["val_loss"] == ""

    again = trainer()
    assert again.resume() == tmp_path / "epoch_0002.pth" and again.epoch == 2
    again.train(dataset, dataset, 0.01, 1, "heads", augmentation=counting_flip)
    again.train(dataset, None, 0.01, 2, "5+")
    assert again.global_step == 2 and len(calls) == 2
    assert messages.count("already trained to epoch 2; nothing to do up to epoch 1") == 1
    with pytest.raises(ResumeMismatchError) as error:
        again.train(dataset, None, 0.001, 3, "5+")
    assert error.value.differences == {"learning_rate": (0.01, 0.001)}
    with pytest.raises(TrainerError, match="the train dataset has 3 classes"):
        Trainer(MaskScoringRCNN(Config(**dict(TINY, NUM_CLASSES=4))), tmp_path / "other",
                workers=0).train(dataset, None, 0.01, 1, "heads")


def test_eval_every_records_box_and_mask_ap(shapes, tmp_path, capsys):
    run_train(*train_args(shapes, tmp_path, "--epochs", "1", "--steps-per-epoch", "1",
                          "--eval-every", "1", "--eval-limit", "2"))
    (row,) = read_metrics(tmp_path, "validation.csv")
    assert 0 <= float(row["box_ap"]) <= 1 and 0 <= float(row["mask_ap"]) <= 1
    assert float(row["val_loss"]) > 0 and float(row["loss"]) > 0
    assert "detections with a class score >= 0.0 (Matterport's evaluation setting)" in \
        capsys.readouterr().out
    state = torch.load(tmp_path / "epoch_0001.pth", weights_only=True)
    assert state["state_dict"]["maskiou_head.trained"]  # demo.py and eval.py use its scores


def test_nonfinite_loss_stops_after_saving_the_last_good_state(shapes, tmp_path, monkeypatch,
                                                               capsys):
    real_total = trainer_module.total_loss
    calls = []

    def total_with_nan_at_step_2(losses, config):
        calls.append(1)
        total = real_total(losses, config)
        return total * float("nan") if len(calls) == 2 else total

    monkeypatch.setattr(trainer_module, "total_loss", total_with_nan_at_step_2)
    assert train.main(train_args(shapes, tmp_path, "--epochs", "3", "--steps-per-epoch", "1",
                                 "--val-split", "none")) == 1
    assert "error: non-finite loss at epoch 2, step 2 (loss=nan" in capsys.readouterr().err
    state = torch.load(tmp_path / "nonfinite.pth", weights_only=True)
    assert state["training"]["global_step"] == 1  # the good step, not the bad one
    assert [row["step"] for row in read_metrics(tmp_path)] == ["1"]
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pth")) == ["epoch_0001.pth",
                                                                    "epoch_0001.state.pth"]


def test_fine_tuning_from_another_class_count_refreshes_the_class_layers(tmp_path):
    source = tiny_model(num_classes=3)
    save_weights(source, source.config, tmp_path / "three.pth")
    target = tiny_model(num_classes=7, CLASS_NAMES=None)
    fresh_logits = target.box_head.class_logits.weight.clone()
    messages = []
    load_pretrained(target, tmp_path / "three.pth", log=messages.append)
    assert "3 classes" in messages[0] and "mrcnn_class_logits" in messages[0]
    assert torch.equal(target.box_head.class_logits.weight, fresh_logits)
    assert torch.equal(target.backbone.conv1.weight, source.backbone.conv1.weight)
    assert torch.equal(target.maskiou_head.fc1.weight, source.maskiou_head.fc1.weight)
    assert not torch.equal(target.maskiou_head.iou.weight[:3], source.maskiou_head.iou.weight)


@pytest.mark.parametrize("extra, message", [
    (["--amp", "--device", "cpu"], "--amp needs CUDA"),
    (["--weights", "last"], "--weights last, but"),
    (["--eval-every", "1", "--val-split", "none"], "--eval-every evaluates on the validation"),
    (["--steps-per-epoch", "0"], "--steps-per-epoch must be at least 1"),
    (["--layers", "res9.*"], "matches no layer"),
])
def test_command_line_errors(shapes, tmp_path, capsys, extra, message):
    assert train.main(train_args(shapes, tmp_path, "--epochs", "1", *extra)) == 1
    assert message in capsys.readouterr().err


def test_epochs_and_dataset_are_required(capsys):
    assert train.main(["--dataset", "d"]) == 1
    assert "--epochs is required (or --export-weights alone)" in capsys.readouterr().err


def test_config_must_fit_the_dataset_and_a_used_run_dir_is_not_overwritten(shapes, tmp_path,
                                                                           capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(TINY, NUM_CLASSES=3)))
    assert train.main(train_args(shapes, tmp_path / "a", "--epochs", "1",
                                 "--config", str(bad))) == 1
    assert f"the model has NUM_CLASSES 3 (from {bad}) but" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "epoch_0001.pth").write_bytes(b"")
    assert train.main(train_args(shapes, tmp_path / "b", "--epochs", "2")) == 1
    assert "already holds checkpoints" in capsys.readouterr().err
    # Checkpoints without the training state (e.g. from an older version) cannot resume.
    assert train.main(train_args(shapes, tmp_path / "b", "--epochs", "2", "--resume")) == 1
    assert "lack the training state" in capsys.readouterr().err
    # The run's config.json would replace the --config it was given.
    (tmp_path / "c").mkdir()
    shutil.copy(shapes / "tiny.json", tmp_path / "c" / "config.json")
    assert train.main(train_args(shapes, tmp_path / "c", "--epochs", "1", "--config",
                                 str(tmp_path / "c" / "config.json"))) == 1
    assert "would overwrite the input" in capsys.readouterr().err


def messy_copy(shapes, tmp_path):
    """A copy of the shapes data whose val annotations need clipping and skipping, and whose
    second training image is unreadable."""
    root = tmp_path / "messy"
    shutil.copytree(shapes / "data", root)
    path = root / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    first = data["annotations"][0]
    data["annotations"] += [dict(first, id=900, segmentation=[[1, 2, None, 4, 5, 6]]),
                            dict(first, id=901, segmentation=[[3, 4]]),
                            dict(first, id=902, bbox=[10, 10, 57, 5])]
    path.write_text(json.dumps(data))
    (root / "train" / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def test_train_and_eval_report_the_same_repairs(shapes, tmp_path, capsys):
    data = messy_copy(shapes, tmp_path)
    args = train_args(shapes, tmp_path / "run", "--epochs", "0")
    args[args.index("--dataset") + 1] = str(data)
    assert train.main(args) == 0
    from_train = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith("warning: ")]
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not weights")
    with pytest.raises(SystemExit):
        eval_script.main(["--dataset", str(data), "--split", "val", "--weights", str(junk),
                          "--out", str(tmp_path / "eval")])
    from_eval = [line for line in capsys.readouterr().err.splitlines()
                 if line.startswith("warning: ")]
    assert from_train == from_eval == [
        f"warning: {data / 'annotations' / 'instances_val.json'}: clipped 1 annotation to their "
        "image (box or polygons past the border: 902); skipped 2 annotations: 1 unreadable "
        "(annotation 900: polygon coordinates must be numbers, got None); 1 degenerate "
        "(annotation 901: no polygon with 3 or more points, segmentation [[3, 4]]) (--strict "
        "refuses such files)"]
    args.append("--strict")
    assert train.main(args) == 1
    assert "annotation 900: polygon coordinates must be numbers, got None (without --strict it " \
           "is skipped)" in capsys.readouterr().err


def test_an_unreadable_training_image_is_reported_once_and_replaced(shapes, tmp_path, capsys):
    data = messy_copy(shapes, tmp_path)
    args = train_args(shapes, tmp_path / "run", "--epochs", "1", "--steps-per-epoch", "3",
                      "--val-split", "none", "--no-augment")
    args[args.index("--dataset") + 1] = str(data)
    assert train.main(args) == 1
    err = capsys.readouterr().err
    broken = data / "train" / "000002.png"
    assert err.count(f"warning: skipped {broken}: not a readable image") == 1
    assert "(the next image takes its place)" in err
    assert err.rstrip().endswith("error: skipped 1 image(s) that could not be processed (see the "
                                 "warnings above); training went on with the others")
    assert len(read_metrics(tmp_path / "run")) == 3
    assert (tmp_path / "run" / "epoch_0001.pth").exists()


def test_imagenet_weights_start_the_resnet(shapes, tmp_path, monkeypatch, imagenet_h5, capsys):
    path, donor_backbone = imagenet_h5
    monkeypatch.setattr(train, "imagenet_weights_path", lambda progress: path)
    run_train(*train_args(shapes, tmp_path / "run", "--epochs", "1", "--steps-per-epoch", "1",
                          weights="imagenet"))
    trained = torch.load(tmp_path / "run" / "epoch_0001.pth", weights_only=True)["state_dict"]
    for key, value in donor_backbone.items():       # "heads" leaves the ResNet as loaded
        assert torch.equal(trained[f"backbone.{key}"], value), key

    deeper = tmp_path / "r101.json"
    deeper.write_text(json.dumps(dict(TINY, BACKBONE="resnet101")))
    assert train.main(train_args(shapes, tmp_path / "deeper", "--epochs", "1", "--config",
                                 str(deeper), weights="imagenet")) == 1
    assert "set BACKBONE \"resnet50\"" in capsys.readouterr().err
