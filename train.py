"""Fine-tunes the Mask Scoring R-CNN on a COCO-format dataset, on one device or with torchrun.

    python train.py --dataset DIR --weights coco --layers heads --epochs 40 --lr 0.001
    torchrun --nproc_per_node 4 train.py --dataset DIR ...

Run with --help for every option.
"""
import argparse
import csv
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mrcnn.atomic import atomic_write
from mrcnn.cli import (CliError, add_dataset_check_arguments, coco_checkpoint, dataset_options,
                       error_message, join_processes, reports_errors, resolve_device)
from mrcnn.config import Config
from mrcnn.detector import MaskScoringRCNN
from mrcnn.training import (LOSS_NAMES, TrainingModel, set_batch_norm_modes, set_trainable,
                            total_loss)
from mrcnn.weights import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_pretrained
from postprocess import coco_eval
from preprocess.coco import coco_layout, open_dataset
from preprocess.training_data import DrawSampler, TrainingSamples, collate, trainable_image_indices

DESCRIPTION = """\
Fine-tunes the Mask Scoring R-CNN (Matterport's Mask R-CNN plus a MaskIoU head) with Matterport's
training semantics: RPN and detection targets, losses weighted by LOSS_WEIGHTS (and
MASKIOU_LOSS_WEIGHT), L2 weight decay added to the loss, SGD with momentum, gradient clipping at
GRADIENT_CLIP_NORM, BatchNorm frozen unless TRAIN_BN. Training images are flipped left-right at
random.

Bad data (the same rules as eval.py): an annotation file that cannot be read as COCO is an error
naming the entry; boxes and polygons past their image are clipped, unreadable, degenerate and
empty annotations skipped, with one warning per file that counts them (eval.py reports the same
counts), or refused with --strict. An image that cannot be processed (unreadable, more than
--max-pixels, another size than the annotation file gives, too thin for the resize mode) is
reported once and replaced by the next image of the dataset; training goes on and the exit
status is then 1.

RUN_DIR receives:
  epoch_NNNN.pth   a checkpoint per epoch, written atomically; --resume continues from the newest,
                   and each loads as weights (--weights PATH here, demo.py, eval.py)
  metrics.csv      one row per optimisation step: epoch, step, lr, loss (the total), each loss
                   component and the step's seconds
  validation.csv   one row per epoch: the validation losses, and box/mask AP with --eval-every
  config.json      the run's Config
  tensorboard/     the same curves, when the tensorboard package is installed"""

EPILOG = """\
layer groups (--layers), as in Matterport:
  heads    the RPN, FPN and the box, mask and MaskIoU heads
  3+ 4+ 5+ ResNet stage 3 (4, 5) and up, plus the heads
  all      every layer
  maskiou  the MaskIoU head alone (e.g. to add mask scoring to a trained Mask R-CNN)
  or any regular expression, fully matched against the Keras layer names

examples:
  python -m preprocess.synthetic --out data/shapes --train 2000 --val 100 --seed 0
  python train.py --dataset data/shapes --train-split train --val-split val \\
      --config shapes.json --weights coco --layers heads --epochs 10 --out runs/shapes
  python train.py --dataset data/coco --weights coco --layers heads --epochs 40 --out runs/coco
  python train.py --dataset data/coco --weights last --layers 4+ --epochs 120 --out runs/coco
  torchrun --nproc_per_node 4 train.py --dataset data/coco --weights last --layers all \\
      --epochs 160 --lr 0.0001 --out runs/coco"""

METRICS_FILE = "metrics.csv"
VALIDATION_FILE = "validation.csv"
NONFINITE_FILE = "nonfinite.pth"
# The header mrcnn.weights.load_weights checks, so that a training checkpoint is also a model
# checkpoint.
CHECKPOINT_HEADER = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}


def build_parser():
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, metavar="DIR",
                      help="dataset in the COCO 2017 layout: DIR/annotations/instances_<split>"
                           ".json, images in DIR/<split>/")
    data.add_argument("--train-split", default="train2017", metavar="SPLIT",
                      help="training split (default: %(default)s; 'train' for "
                           "preprocess.synthetic)")
    data.add_argument("--val-split", default="val2017", metavar="SPLIT",
                      help="validation split (default: %(default)s; 'val' for "
                           "preprocess.synthetic; 'none' for no validation)")
    data.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="W",
                      help="data-loading worker processes per training process (default: "
                           "%(default)s; 0 loads in the training process)")
    data.add_argument("--no-augment", action="store_true",
                      help="do not flip training images left-right at random")
    add_dataset_check_arguments(data)

    model = parser.add_argument_group("model")
    model.add_argument("--config", metavar="C.json",
                       help="JSON object with any Config fields (e.g. BACKBONE, IMAGE_MAX_DIM, "
                            "IMAGES_PER_GPU, STEPS_PER_EPOCH); NUM_CLASSES and CLASS_NAMES "
                            "default to the dataset's")
    model.add_argument("--weights", metavar="coco|last|none|PATH",
                       help="weights to start from: 'coco' (the default: Matterport's COCO "
                            "model, downloaded and converted once into the cache demo.py uses), "
                            "'last' (the newest checkpoint in RUN_DIR, weights only; the epoch "
                            "count goes on from it), 'none' (train from scratch), or a "
                            "Matterport .h5 / mrcnn .pth. Layers made for another class count "
                            "start fresh. Not with --resume")
    model.add_argument("--layers", default="heads", metavar="GROUP",
                       help="layers to train: heads, 3+, 4+, 5+, all, maskiou or a regex "
                            "(default: %(default)s; see below)")

    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--epochs", type=int, required=True, metavar="E",
                              help="the epoch to train up to (cumulative, as in Matterport: a "
                                   "resumed run continues to it)")
    optimisation.add_argument("--steps-per-epoch", type=int, metavar="N",
                              help="optimisation steps per epoch (default: the config's "
                                   "STEPS_PER_EPOCH)")
    optimisation.add_argument("--validation-steps", type=int, metavar="N",
                              help="batches of validation loss per epoch (default: the "
                                   "config's VALIDATION_STEPS)")
    optimisation.add_argument("--lr", type=float, metavar="LR",
                              help="learning rate (default: the config's LEARNING_RATE)")
    optimisation.add_argument("--warmup-steps", type=int, default=500, metavar="N",
                              help="linear learning-rate warm-up from lr/1000 over the first N "
                                   "steps of the run (again after --weights last, which starts "
                                   "a new optimiser as Matterport does; not after --resume; "
                                   "default: %(default)s; 0: none)")
    optimisation.add_argument("--lr-drop", type=int, nargs="*", default=[], metavar="EPOCH",
                              help="epochs (counted like --epochs) after which the learning "
                                   "rate is divided by 10")
    optimisation.add_argument("--amp", action="store_true",
                              help="mixed precision: float16 autocast and gradient scaling "
                                   "(CUDA only)")
    optimisation.add_argument("--seed", type=int, default=0,
                              help="seed of the fresh layers, the data order, the augmentation "
                                   "and the target sampling (default: %(default)s)")

    run = parser.add_argument_group("run")
    run.add_argument("--device", metavar="cpu|cuda",
                     help="default: cuda when available, else cpu; under torchrun each process "
                          "takes the GPU of its LOCAL_RANK")
    run.add_argument("--out", default="runs/train", metavar="RUN_DIR",
                     help="directory of the checkpoints and logs (default: %(default)s)")
    run.add_argument("--resume", action="store_true",
                     help="continue exactly where the newest checkpoint in RUN_DIR stopped "
                          "(model, optimiser, schedule, epoch, data order), with its config")
    run.add_argument("--eval-every", type=int, default=0, metavar="K",
                     help="every K epochs, COCO box and mask AP on the validation split (masks "
                          "ranked by the mask score; detections kept from the config's "
                          "DETECTION_MIN_CONFIDENCE; default: never)")
    run.add_argument("--eval-limit", type=int, metavar="N",
                     help="evaluate on the first N validation images only")
    run.add_argument("--keep-last", type=int, default=0, metavar="N",
                     help="keep only the newest N epoch checkpoints (default: keep all)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def check_arguments(args):
    """Raises CliError for values and combinations that cannot work."""
    for name, least in (("epochs", 0), ("steps_per_epoch", 1), ("validation_steps", 1),
                        ("warmup_steps", 0), ("workers", 0), ("eval_every", 0),
                        ("eval_limit", 1), ("keep_last", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise CliError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise CliError(f"--lr must be positive, got {args.lr}")
    if args.resume and args.weights is not None:
        raise CliError("--resume continues from the run's own checkpoint; leave out --weights")
    if args.eval_every and args.val_split == "none":
        raise CliError("--eval-every evaluates on the validation split; give --val-split")
    if not args.layers:
        raise CliError("--layers is empty")


class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun) and its device."""

    def __init__(self, device_name=None):
        self.device = join_processes(device_name)
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    @property
    def enabled(self):
        return dist.is_initialized()

    @property
    def main(self):
        return self.rank == 0

    def mean(self, values):
        """Mean over the processes of a float tensor."""
        if self.enabled:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world_size
        return values

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def close(self):
        if self.enabled:
            dist.destroy_process_group()


class WarmupSchedule:
    """Learning-rate factor of step s of a run that started at epoch `first_epoch`: a linear
    warm-up from 1/1000 over the run's first `warmup_steps` steps, times 0.1 for each epoch of
    `drop_epochs` already completed (epochs count from the first run, as --epochs does)."""

    def __init__(self, warmup_steps, steps_per_epoch, drop_epochs, first_epoch=0):
        self.warmup_steps = warmup_steps
        self.steps_per_epoch = steps_per_epoch
        self.drop_epochs = sorted(drop_epochs)
        self.first_epoch = first_epoch

    def __call__(self, step):
        warmup = 1.0
        if step < self.warmup_steps:
            warmup = 0.001 + (1.0 - 0.001) * step / self.warmup_steps
        epoch = self.first_epoch + step // self.steps_per_epoch
        return warmup * 0.1 ** sum(epoch >= drop for drop in self.drop_epochs)


def step_generator(device, seed, step, stream=0):
    """The generator of one step's target sampling: a function of (seed, stream, step) alone,
    so that a resumed run samples what the uninterrupted run would have."""
    state = np.random.SeedSequence([seed, stream, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state >> np.uint64(1)))


def checkpoints(run_dir):
    """The epoch checkpoints of a run directory, oldest first."""
    return sorted(Path(run_dir).glob("epoch_[0-9][0-9][0-9][0-9].pth"))


def build_config(config_path, dataset, name):
    """The run's Config: --config's fields; NUM_CLASSES, CLASS_NAMES and NAME from the dataset
    unless the file sets them (a NUM_CLASSES that does not fit the dataset is an error)."""
    try:
        given = json.loads(Path(config_path).read_text()) if config_path else {}
        if not isinstance(given, dict):
            raise ValueError("expected a JSON object of Config fields")
    except (OSError, ValueError) as error:
        raise CliError(f"--config {config_path}: {error_message(error)}") from None
    if given.get("NUM_CLASSES", dataset.num_classes) != dataset.num_classes:
        raise CliError(f"{config_path} sets NUM_CLASSES {given['NUM_CLASSES']} but the dataset "
                       f"{dataset.annotation_json} has {dataset.num_classes} classes "
                       "(background included)")
    defaults = {"NUM_CLASSES": dataset.num_classes, "CLASS_NAMES": dataset.class_names,
                "NAME": name}
    try:
        return Config.from_dict(given, **{field: value for field, value in defaults.items()
                                         if field not in given})
    except (KeyError, ValueError) as error:
        raise CliError(f"--config {config_path}: {error.args[0]}") from None


def open_split(dataset_dir, split, options, say):
    """The CocoDataset of a split (its repairs said through `say`); CliError when it is broken."""
    try:
        return open_dataset(*coco_layout(dataset_dir, split), say, **options)
    except (OSError, ValueError) as error:
        raise CliError(error_message(error)) from None


def print_warning(line):
    tqdm.write(f"warning: {line}", file=sys.stderr)


class Trainer:
    """One training run: the model, its optimiser and schedule, the data, logs and checkpoints."""

    def __init__(self, args, processes):
        self.args = args
        self.processes = processes
        self.device = processes.device
        self.run_dir = Path(args.out)
        self.log = print if processes.main else (lambda *_: None)
        say = print_warning if processes.main else (lambda _: None)
        self.train_data = open_split(args.dataset, args.train_split, dataset_options(args), say)
        self.val_data = None if args.val_split == "none" else open_split(
            args.dataset, args.val_split, dataset_options(args), say)
        self.skipped = set()  # the images that could not be processed, as lines naming them
        resumed = self.read_resume_checkpoint() if args.resume else None
        if resumed is None:
            self.config = build_config(args.config, self.train_data,
                                       Path(args.dataset).resolve().name)
        else:
            self.config = Config.from_dict(resumed["config"])
            self.check_resumed_settings(resumed)
        self.config.update(GPU_COUNT=processes.world_size)
        self.steps_per_epoch = args.steps_per_epoch or self.config.STEPS_PER_EPOCH
        self.validation_steps = args.validation_steps or self.config.VALIDATION_STEPS
        self.log(f"config: {self.config.BACKBONE}, {self.config.NUM_CLASSES} classes, "
                 f"{self.config.IMAGE_RESIZE_MODE} images of {self.config.IMAGE_MAX_DIM}, "
                 f"{self.config.IMAGES_PER_GPU} per process x {processes.world_size}, "
                 f"{self.steps_per_epoch} steps per epoch")

        torch.manual_seed(args.seed)  # initialises the layers that no weights fill
        self.model = MaskScoringRCNN(self.config)
        self.start_epoch = self.global_step = 0
        if resumed is None:
            self.load_initial_weights(args.weights or "coco")
        trained = set_trainable(self.model, args.layers)
        self.log(f"training {len(trained)} layers ({args.layers})")
        self.model.to(self.device)
        self.training_model = TrainingModel(self.model)
        if processes.enabled:
            self.training_model = torch.nn.parallel.DistributedDataParallel(
                self.training_model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        lr = args.lr if args.lr is not None else self.config.LEARNING_RATE
        self.optimizer = torch.optim.SGD(self.parameters, lr=lr,
                                         momentum=self.config.LEARNING_MOMENTUM)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, WarmupSchedule(
            args.warmup_steps, self.steps_per_epoch, args.lr_drop, first_epoch=self.start_epoch))
        self.scaler = torch.amp.GradScaler("cuda", enabled=args.amp)
        if resumed is not None:
            self.restore(resumed)
        self.train_indices = trainable_image_indices(self.train_data)
        skipped = len(self.train_data) - len(self.train_indices)
        if skipped:
            self.log(f"{skipped} of {len(self.train_data)} training images have no non-crowd "
                     "instance and are left out")
        self.metrics = self.validation_log = self.tensorboard = None

    # Start-up.

    def read_resume_checkpoint(self):
        found = checkpoints(self.run_dir)
        if not found:
            raise CliError(f"--resume, but {self.run_dir} has no epoch checkpoint "
                           "(epoch_NNNN.pth); start without --resume")
        state = torch.load(found[-1], map_location="cpu", weights_only=True)
        state["path"] = found[-1]
        return state

    def check_resumed_settings(self, resumed):
        """--resume goes on with the checkpoint's config, layers and data order."""
        args = self.args
        if args.config:
            given = json.loads(Path(args.config).read_text())
            changed = sorted(name for name, value in given.items()
                             if json.dumps(resumed["config"].get(name)) != json.dumps(value))
            if changed:
                raise CliError(f"--resume goes on with the config of {resumed['path']}, but "
                               f"{args.config} changes {changed}; start a new run instead")
        for option, value, saved in (("--layers", args.layers, resumed["layers"]),
                                     ("--seed", args.seed, resumed["seed"]),
                                     ("--steps-per-epoch",
                                      args.steps_per_epoch or self.config.STEPS_PER_EPOCH,
                                      resumed["steps_per_epoch"])):
            if value != saved:
                raise CliError(f"{resumed['path']} was trained with {option} {saved}; resume "
                               f"with the same value (got {value}), or start a new run "
                               "with --weights last")

    def load_initial_weights(self, weights):
        """Loads --weights; with 'last' the run goes on counting epochs and steps from it."""
        if checkpoints(self.run_dir) and weights != "last":
            raise CliError(f"{self.run_dir} already holds checkpoints: pass --resume to "
                           "continue that run, --weights last to train on from its newest "
                           "checkpoint, or choose another --out")
        if weights == "none":
            self.log("weights: none, training from scratch")
            return
        if weights == "last":
            found = checkpoints(self.run_dir)
            if not found:
                raise CliError(f"--weights last, but {self.run_dir} has no epoch checkpoint")
            path = found[-1]
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.start_epoch, self.global_step = state["epoch"], state["global_step"]
        elif weights == "coco":
            # Rank 0 downloads and converts once, into the cache demo.py uses; the others wait.
            path = coco_checkpoint(progress=True) if self.processes.main else None
            self.processes.barrier()
            path = path or coco_checkpoint(progress=False)
        else:
            path = Path(weights)
        self.log(f"weights: {path}")
        try:
            load_pretrained(self.model, path, log=self.log)
        except (OSError, ValueError) as error:
            raise CliError(error_message(error)) from None

    def restore(self, state):
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = state["epoch"]
        self.global_step = state["global_step"]
        torch.set_rng_state(state["torch_rng"])
        self.log(f"resumed from {state['path']} (epoch {self.start_epoch}, step "
                 f"{self.global_step})")

    # The loop.

    def train(self):
        if self.start_epoch >= self.args.epochs:
            self.log(f"already trained to epoch {self.start_epoch}; raise --epochs to train on")
            return
        self.log(f"epochs {self.start_epoch + 1} to {self.args.epochs}")
        if any(p.requires_grad for p in self.model.maskiou_head.parameters()):
            self.model.maskiou_head.trained.fill_(True)  # its mask scores now mean something
        if self.processes.main:
            self.open_logs()
        for epoch in range(self.start_epoch, self.args.epochs):
            self.train_epoch(epoch)
            results = self.validate(epoch) if self.val_data is not None else {}
            if self.args.eval_every and (epoch + 1) % self.args.eval_every == 0:
                results.update(self.evaluate(epoch))
            if self.processes.main:
                self.log_validation(epoch + 1, results)
                self.save_checkpoint(epoch + 1, self.run_dir / f"epoch_{epoch + 1:04d}.pth")
                self.remove_old_checkpoints()
            self.processes.barrier()
        self.log(f"done: trained to epoch {self.args.epochs}; checkpoints in {self.run_dir}")

    def loader(self, data, indices, epoch, steps, augment):
        samples = TrainingSamples(data, self.config, augment=augment, seed=self.args.seed)
        sampler = DrawSampler(indices, self.config.IMAGES_PER_GPU, steps, epoch, self.args.seed,
                              self.processes.rank, self.processes.world_size)
        return torch.utils.data.DataLoader(
            samples, batch_size=self.config.IMAGES_PER_GPU, sampler=sampler,
            num_workers=self.args.workers, pin_memory=self.device.type == "cuda",
            collate_fn=functools.partial(collate, mean_pixel=self.config.MEAN_PIXEL))

    def checked(self, loader):
        """The batches of a loader, once the images they had to skip are reported (each image
        once; the next image of the dataset took its place). A batch that says no image can be
        processed stops the run."""
        for batch in loader:
            if "error" in batch:
                raise CliError(batch["error"])
            for line in batch.pop("skipped"):
                if line not in self.skipped:
                    self.skipped.add(line)
                    print_warning(f"skipped {line} (the next image takes its place)")
            yield batch

    def losses(self, batch, generator):
        """(losses by name, the total loss, and both as one tensor averaged over processes)."""
        batch = {name: value.to(self.device, non_blocking=True) for name, value in batch.items()}
        with torch.autocast(self.device.type, enabled=self.args.amp):
            losses = self.training_model(batch["images"], batch["gt_class_ids"],
                                         batch["gt_boxes"], batch["gt_masks"],
                                         batch["active_class_ids"], generator=generator)
        loss = total_loss(losses, self.config)
        logged = torch.stack([loss.detach()] + [losses[name].detach().float()
                                                for name in LOSS_NAMES])
        return loss, self.processes.mean(logged)

    def train_epoch(self, epoch):
        set_batch_norm_modes(self.training_model)
        loader = self.loader(self.train_data, self.train_indices, epoch, self.steps_per_epoch,
                             augment=not self.args.no_augment)
        bar = tqdm(self.checked(loader), total=len(loader), unit="step",
                   desc=f"epoch {epoch + 1}/{self.args.epochs}",
                   disable=self.args.quiet or not self.processes.main, dynamic_ncols=True)
        start = time.perf_counter()
        for batch in bar:
            loss, logged = self.losses(batch, step_generator(self.device, self.args.seed,
                                                             self.global_step))
            if not torch.isfinite(logged).all():
                self.stop_on_nonfinite(epoch, logged)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.GRADIENT_CLIP_NORM)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.global_step += 1
            if self.processes.main:
                values = logged.tolist()
                seconds, start = time.perf_counter() - start, time.perf_counter()
                self.log_step(epoch + 1, lr, values, seconds)
                bar.set_postfix_str(" ".join(
                    f"{name.removesuffix('_loss')}={value:.3f}"
                    for name, value in zip(("loss",) + LOSS_NAMES[:-1], values)))

    @torch.no_grad()
    def validate(self, epoch):
        """Mean losses over validation_steps batches of the validation split: the same batches
        and target samples every epoch, so that epochs compare."""
        self.training_model.eval()
        loader = self.loader(self.val_data, trainable_image_indices(self.val_data), 0,
                             self.validation_steps, augment=False)
        total = 0.0
        for step, batch in enumerate(tqdm(self.checked(loader), total=len(loader),
                                          desc="validation", unit="step", leave=False,
                                          disable=self.args.quiet or not self.processes.main)):
            total = total + self.losses(batch, step_generator(self.device, self.args.seed, step,
                                                              stream=1))[1]
        values = (total / self.validation_steps).tolist()
        self.log(f"epoch {epoch + 1}: validation loss {values[0]:.4f}")
        return dict(zip(("val_loss",) + tuple(f"val_{name}" for name in LOSS_NAMES), values))

    def evaluate(self, epoch):
        """COCO box and mask AP on the validation split (eval.py's evaluation)."""
        summary = coco_eval.evaluate(
            self.model, self.val_data, limit=self.args.eval_limit,
            batch_size=self.config.IMAGES_PER_GPU, mask_score="maskiou",
            progress=not self.args.quiet, print_tables=False)
        self.skipped.update(image["reason"] for image in summary["skipped_images"])
        results = {"box_ap": summary["bbox"]["AP"], "mask_ap": summary["segm"]["AP"]}
        self.log(f"epoch {epoch + 1}: box AP {results['box_ap']:.4f}, mask AP "
                 f"{results['mask_ap']:.4f} on {summary['image_count']} images")
        return results

    def stop_on_nonfinite(self, epoch, logged):
        """Saves the state before this step (the last good one) and stops the run."""
        detail = ", ".join(f"{name}={value:.4g}"
                           for name, value in zip(("loss",) + LOSS_NAMES, logged.tolist()))
        if self.processes.main:
            self.save_checkpoint(epoch, self.run_dir / NONFINITE_FILE)
        self.processes.barrier()
        last = checkpoints(self.run_dir)
        raise CliError(
            f"non-finite loss at epoch {epoch + 1}, step {self.global_step + 1} ({detail}). "
            f"Training stopped before that step changed anything: the last good state is in "
            f"{self.run_dir / NONFINITE_FILE}"
            + (f", the last epoch checkpoint is {last[-1]}" if last else "")
            + ". Lower --lr, lengthen --warmup-steps or check the data.")

    # Files (the first process alone writes).

    def open_logs(self):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.to_json(self.run_dir / "config.json")
        self.metrics = CsvLog(self.run_dir / METRICS_FILE,
                              ["epoch", "step", "lr", "loss", *LOSS_NAMES, "seconds"],
                              self.global_step)
        validation_columns = ["epoch", "step"]
        if self.val_data is not None:
            validation_columns += ["val_loss"] + [f"val_{name}" for name in LOSS_NAMES]
        if self.args.eval_every:
            validation_columns += ["box_ap", "mask_ap"]
        self.validation_log = CsvLog(self.run_dir / VALIDATION_FILE, validation_columns,
                                     self.global_step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("note: tensorboard is not installed; the curves go to the CSV files only")
            return
        self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"),
                                         purge_step=self.global_step)

    def log_step(self, epoch, lr, values, seconds):
        self.metrics.write({"epoch": epoch, "step": self.global_step, "lr": lr,
                            **dict(zip(("loss",) + LOSS_NAMES, values)), "seconds": seconds})
        if self.tensorboard is not None:
            for name, value in zip(("loss",) + LOSS_NAMES, values):
                self.tensorboard.add_scalar(f"train/{name}", value, self.global_step)
            self.tensorboard.add_scalar("train/lr", lr, self.global_step)

    def log_validation(self, epoch, results):
        if not results:
            return
        self.validation_log.write({"epoch": epoch, "step": self.global_step, **results})
        if self.tensorboard is not None:
            for name, value in results.items():
                self.tensorboard.add_scalar(f"validation/{name}", value, self.global_step)
            self.tensorboard.flush()

    def save_checkpoint(self, epoch, path):
        """An mrcnn model checkpoint plus the training state, written atomically."""
        state = {
            **CHECKPOINT_HEADER,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "seed": self.args.seed,
            "layers": self.args.layers,
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_write(path) as f:
            torch.save(state, f)

    def remove_old_checkpoints(self):
        if self.args.keep_last:
            for old in checkpoints(self.run_dir)[:-self.args.keep_last]:
                old.unlink()


class CsvLog:
    """A CSV file written row by row, flushed after each. Rows past `resume_step` (written after
    the checkpoint a run resumes from) are dropped first, atomically."""

    def __init__(self, path, columns, resume_step):
        self.path = Path(path)
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        with atomic_write(self.path, "w") as f:
            writer = csv.DictWriter(f, columns, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, columns, restval="")

    def write(self, row):
        self.writer.writerow(row)
        self.file.flush()


@reports_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_arguments(args)
    if args.amp and resolve_device(args.device).type != "cuda":
        raise CliError("--amp needs CUDA (--device cuda)")
    processes = Distributed(args.device)
    try:
        trainer = Trainer(args, processes)
        trainer.train()
    finally:
        processes.close()
    if trainer.skipped:
        print(f"error: skipped {len(trainer.skipped)} image(s) that could not be processed (see "
              "the warnings above); training went on with the others", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
