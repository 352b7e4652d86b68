"""The training graph and train.py: layer groups, the L2 term, warm-up, overfitting two images,
exact resume, a 2-process gloo DDP run, non-finite losses and fine-tuning across class counts."""
import csv
import hashlib
import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch

import eval as eval_script
import train
from mrcnn.config import Config
from mrcnn.detector import MaskScoringRCNN
from mrcnn.training import (TrainingModel, pixel_anchors, regularized_parameters, set_trainable,
                            total_loss)
from mrcnn.weights import CLASS_LAYERS, load_pretrained, save_weights
from preprocess.synthetic import write_dataset

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
    return root


def train_args(shapes, out, *extra, weights="none"):
    """train.py's arguments for the tiny model on `shapes`; --weights `weights` unless None or
    --resume."""
    weights = [] if weights is None or "--resume" in extra else ["--weights", weights]
    return ["--dataset", str(shapes / "data"), "--train-split", "train", "--val-split", "val",
            "--config", str(shapes / "tiny.json"), *weights, "--layers", "heads",
            "--lr", "0.02", "--warmup-steps", "0", "--workers", "0", "--device", "cpu",
            "--validation-steps", "1", "--quiet", "--out", str(out), *extra]


def read_metrics(run_dir, name="metrics.csv"):
    """The rows of a CSV log, without the timing column."""
    with open(run_dir / name, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


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
    schedule = train.WarmupSchedule(warmup_steps=10, steps_per_epoch=100, drop_epochs=[2, 3])
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(5) == pytest.approx(0.001 + 0.999 * 0.5)
    assert [schedule(s) for s in (10, 199, 200, 300)] == pytest.approx([1, 1, 0.1, 0.01])
    # A run that goes on from epoch 2 (--weights last) warms up again; the drops stay put.
    later = train.WarmupSchedule(warmup_steps=10, steps_per_epoch=100, drop_epochs=[3],
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


def test_overfits_two_images(shapes, tmp_path):
    run_train(*train_args(shapes, tmp_path, "--epochs", "1", "--steps-per-epoch", "30",
                          "--val-split", "none", "--no-augment"))
    losses = [float(row["loss"]) for row in read_metrics(tmp_path)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * losses[0]


def test_resume_gives_the_losses_of_an_uninterrupted_run(shapes, tmp_path):
    steps = ["--steps-per-epoch", "2"]
    run_train(*train_args(shapes, tmp_path / "whole", "--epochs", "2", *steps))
    run_train(*train_args(shapes, tmp_path / "parts", "--epochs", "1", *steps))
    # A crash after the epoch-1 checkpoint may leave rows of later steps; resume drops them.
    with open(tmp_path / "parts" / "metrics.csv", "a") as f:
        f.write("2,3,0.02,9,9,9,9,9,9,9,9,1\n")
    run_train(*train_args(shapes, tmp_path / "parts", "--epochs", "2", "--resume",
                          "--workers", "2", *steps))
    for name in ("metrics.csv", "validation.csv"):
        whole = read_metrics(tmp_path / "whole", name)
        parts = read_metrics(tmp_path / "parts", name)
        assert [row["step"] for row in parts] == [row["step"] for row in whole]
        assert parts == whole
    checkpoint = torch.load(tmp_path / "parts" / "epoch_0002.pth", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["global_step"] == 4
    model = tiny_model(num_classes=checkpoint["config"]["NUM_CLASSES"])
    model.load_weights(tmp_path / "parts" / "epoch_0002.pth")  # a checkpoint is an mrcnn .pth
    # A next stage (Matterport's --model last) counts on from the newest checkpoint.
    run_train(*train_args(shapes, tmp_path / "parts", "--epochs", "3", "--steps-per-epoch", "1",
                          "--layers", "5+", "--val-split", "none", weights="last"))
    assert [row["step"] for row in read_metrics(tmp_path / "parts")] == ["1", "2", "3", "4", "5"]
    assert torch.load(tmp_path / "parts" / "epoch_0003.pth", weights_only=True)["layers"] == "5+"


def test_eval_every_records_box_and_mask_ap(shapes, tmp_path):
    run_train(*train_args(shapes, tmp_path, "--epochs", "1", "--steps-per-epoch", "1",
                          "--eval-every", "1", "--eval-limit", "2"))
    (row,) = read_metrics(tmp_path, "validation.csv")
    assert 0 <= float(row["box_ap"]) <= 1 and 0 <= float(row["mask_ap"]) <= 1
    assert float(row["val_loss"]) > 0
    state = torch.load(tmp_path / "epoch_0001.pth", weights_only=True)
    assert state["state_dict"]["maskiou_head.trained"]  # demo.py and eval.py use its scores


def ddp_worker(rank, shapes, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    args = train.build_parser().parse_args(train_args(
        shapes, out, "--epochs", "1", "--steps-per-epoch", "2", "--val-split", "none"))
    info = train.Distributed("cpu")
    trainer = train.Trainer(args, info)
    trainer.train()
    digest = hashlib.sha256()
    for p in trainer.model.parameters():
        digest.update(p.detach().numpy().tobytes())
    (out / f"rank{rank}.sha256").write_text(digest.hexdigest())
    info.close()


def test_ddp_gloo_keeps_the_ranks_identical(shapes, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(ddp_worker, args=(shapes, tmp_path, port), nprocs=2)
    assert (tmp_path / "rank0.sha256").read_text() == (tmp_path / "rank1.sha256").read_text()
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == ["1", "2"]  # only rank 0 writes
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pth")) == ["epoch_0001.pth"]


def test_nonfinite_loss_stops_after_saving_the_last_good_state(shapes, tmp_path, monkeypatch,
                                                               capsys):
    real_total = train.total_loss
    calls = []

    def total_with_nan_at_step_2(losses, config):
        calls.append(1)
        total = real_total(losses, config)
        return total * float("nan") if len(calls) == 2 else total

    monkeypatch.setattr(train, "total_loss", total_with_nan_at_step_2)
    assert train.main(train_args(shapes, tmp_path, "--epochs", "3", "--steps-per-epoch", "1",
                                 "--val-split", "none")) == 1
    assert "error: non-finite loss at epoch 2, step 2 (loss=nan" in capsys.readouterr().err
    state = torch.load(tmp_path / "nonfinite.pth", weights_only=True)
    assert state["global_step"] == 1  # the good step, not the bad one
    assert [row["step"] for row in read_metrics(tmp_path)] == ["1"]
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pth")) == ["epoch_0001.pth"]


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
    (["--resume"], "has no epoch checkpoint"),
    (["--resume", "--weights", "coco"], "leave out --weights"),
    (["--weights", "last"], "--weights last, but"),
    (["--eval-every", "1", "--val-split", "none"], "--eval-every evaluates on the validation"),
    (["--steps-per-epoch", "0"], "--steps-per-epoch must be at least 1"),
])
def test_command_line_errors(shapes, tmp_path, capsys, extra, message):
    assert train.main(train_args(shapes, tmp_path, "--epochs", "1", *extra)) == 1
    assert message in capsys.readouterr().err


def test_config_must_fit_the_dataset_and_a_used_run_dir_is_not_overwritten(shapes, tmp_path,
                                                                           capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(TINY, NUM_CLASSES=3)))
    assert train.main(train_args(shapes, tmp_path / "a", "--epochs", "1",
                                 "--config", str(bad))) == 1
    assert "NUM_CLASSES 3 but the dataset" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "epoch_0001.pth").write_bytes(b"")
    assert train.main(train_args(shapes, tmp_path / "b", "--epochs", "2")) == 1
    assert "already holds checkpoints" in capsys.readouterr().err


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
