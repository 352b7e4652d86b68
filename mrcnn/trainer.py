"""The training loop: one library under train.py and Matterport's `MaskRCNN.train`.

    from mrcnn.detector import MaskScoringRCNN
    from mrcnn.trainer import Trainer
    from mrcnn.weights import load_pretrained
    from preprocess.training_data import flip_left_right

    model = MaskScoringRCNN(config).to("cuda")
    trainer = Trainer(model, "runs/balloons", seed=0, workers=4)
    if trainer.resume() is None:           # the run's newest complete checkpoint, if it has one
        load_pretrained(model, "mask_rcnn_coco.h5")
    trainer.train(train_set, val_set, learning_rate=0.001, epochs=20, layers="heads",
                  augmentation=flip_left_right)
    trainer.train(train_set, val_set, learning_rate=0.0001, epochs=40, layers="all")

`Trainer(model, run_dir, *, seed=0, steps_per_epoch=None, validation_steps=None, warmup_steps=0,
lr_drops=(), amp=False, workers=DEFAULT_WORKERS, eval_every=0, eval_limit=None,
keep_last=DEFAULT_KEEP_LAST, progress=True, log=print)` trains `model` (a MaskScoringRCNN on its
device) into `run_dir`:

- `train(train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None)` is
  Matterport's MaskRCNN.train: `epochs` is absolute (training goes from `trainer.epoch` to it,
  and a call to an epoch already reached returns at once); each call starts a new SGD optimizer
  (momentum LEARNING_MOMENTUM; the L2 term WEIGHT_DECAY is in the loss) with the gradient norm
  clipped at GRADIENT_CLIP_NORM over all trained tensors; `layers` is a LAYER_GROUPS name
  ("heads", "3+", "4+", "5+", "all", "maskiou") or a regular expression of layer names
  (mrcnn.training.set_trainable). The learning rate warms up linearly from 1/1000 over the
  call's first `warmup_steps` steps and is divided by 10 after each epoch of `lr_drops`.
  `augmentation` is None or a callable (image [H, W, 3] uint8, masks [H, W, N] bool) ->
  (image, masks) applied to every training sample after resizing
  (preprocess.training_data.augment says how it is seeded); `val_dataset` may be None.
- An epoch is `steps_per_epoch` (default STEPS_PER_EPOCH) steps of IMAGES_PER_GPU images per
  process. After each, the mean loss of `validation_steps` (default VALIDATION_STEPS) batches of
  the validation set (the same batches every epoch), and every `eval_every` epochs COCO box and
  mask AP on its first `eval_limit` images (a preprocess.coco.CocoDataset; masks ranked by the
  mask score; Matterport's evaluation threshold, postprocess.coco_eval.EVAL_MIN_CONFIDENCE).
- Datasets are duck-typed as Matterport's utils.Dataset: `image_ids`, `num_classes`,
  `class_names`, `load_image(image_id)`, `load_mask(image_id)`, `image_reference(image_id)`
  (preprocess.training_data); preprocess.coco.CocoDataset is one.
- `resume()` loads the run directory's newest complete checkpoint (weights, epoch, step) and
  keeps its training state (optimizer, schedule, gradient scaler, random generators) for the
  next `train()` that goes past its epoch, which must continue its stage: the same layers,
  learning rate, schedule, seed, steps per epoch, process count and augmentation, else
  ResumeMismatchError. `continue_from(path)` starts a new stage from a checkpoint's weights and
  counts epochs and steps on from it (Matterport's `--model last`).

Reproducibility: the data order, each sample's random choices and each image's target sampling
are functions of (seed, draw number), so a run resumed from a checkpoint ends bit-identical to
an uninterrupted one, on one device or several, with any number of loader workers. A stage also
seeds Python's, numpy's and torch's global generators from (seed, its first epoch); checkpoints
save their states and resuming restores them.

Distributed: under an initialised torch.distributed process group (torchrun, then
mrcnn.cli.join_processes) the loss runs under DistributedDataParallel; every process takes its
IMAGES_PER_GPU images of each global batch, and each loss is normalised by its count of terms
over all processes (mrcnn.losses.loss_counts), so that a step equals one step over the whole
global batch in one process (with TRAIN_BN off: batch statistics would differ). Rank 0 alone
writes files and logs.

The run directory holds (rank 0 writes, each file atomically):
    epoch_NNNN.pth, epoch_NNNN.state.pth  the checkpoints (mrcnn.weights); each epoch_NNNN.pth
                  is also model weights for load_weights, demo.py and eval.py; `keep_last` of
                  them are kept (0: all), the training state for the newest only
    metrics.csv   one row per optimisation step: epoch, step, lr, loss (the total), each loss
                  component, the step's seconds and the seconds it waited for data
    validation.csv one row per epoch: the epoch's mean training loss, the validation losses,
                  box and mask AP with eval_every
    config.json   the model's Config
    nonfinite.pth the last good weights, when a loss turned NaN or infinite (TrainerError)
    tensorboard/  the same curves, when the tensorboard package is installed
"""
import csv
import functools
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mrcnn.atomic import atomic_write, remove_stale_temporaries
from mrcnn.training import (LOSS_NAMES, TrainingModel, set_batch_norm_modes, set_trainable,
                            total_loss)
from mrcnn.weights import (epoch_checkpoints, latest_resumable, load_weights,
                           read_checkpoint, read_training_checkpoint, save_epoch_checkpoint,
                           save_weights)
from postprocess import coco_eval
from preprocess.training_data import (DrawSampler, TrainingSamples, collate,
                                      trainable_image_indices)

DEFAULT_KEEP_LAST = 3
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
METRICS_FILE = "metrics.csv"
VALIDATION_FILE = "validation.csv"
NONFINITE_FILE = "nonfinite.pth"
CONFIG_FILE = "config.json"
METRICS_COLUMNS = ("epoch", "step", "lr", "loss", *LOSS_NAMES, "seconds", "data_seconds")
VALIDATION_COLUMNS = ("epoch", "step", "loss", "val_loss",
                      *(f"val_{name}" for name in LOSS_NAMES), "box_ap", "mask_ap")
# The settings a resumed train() must share with the checkpoint's (besides the config).
STAGE_SETTINGS = ("layers", "learning_rate", "warmup_steps", "lr_drops", "seed",
                  "steps_per_epoch", "processes", "augmentation")
TRAIN_STREAM, VALIDATION_STREAM = 0, 1


class TrainerError(ValueError):
    """A training run that cannot go on; the message says why and what to do."""


class ResumeMismatchError(TrainerError):
    """train() after resume() with settings other than the checkpoint's.

    differences: {setting: (the checkpoint's value, the given value)}, settings of
    STAGE_SETTINGS.
    """

    def __init__(self, checkpoint, differences):
        self.checkpoint = checkpoint
        self.differences = differences
        listed = ", ".join(f"{name} {saved!r} (now {given!r})"
                           for name, (saved, given) in differences.items())
        super().__init__(f"{checkpoint} was trained with {listed}: resume with the same "
                         "settings, or start a new stage from its weights")


class WarmupSchedule:
    """Learning-rate factor of step s of a stage that started at epoch `first_epoch`: a linear
    warm-up from 1/1000 over the stage's first `warmup_steps` steps, times 0.1 for each epoch of
    `drop_epochs` already completed (epochs count from the run's start, as train()'s do)."""

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


def sample_generator(device, seed, draw, stream=TRAIN_STREAM):
    """The generator of one sample's target sampling: a function of (seed, stream, draw) alone,
    so that a resumed or distributed run samples what one uninterrupted process would."""
    state = np.random.SeedSequence([seed, stream, draw]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state >> np.uint64(1)))


def describe_augmentation(augmentation):
    """A name for an augmentation callable, compared when a run resumes."""
    if augmentation is None:
        return None
    return getattr(augmentation, "__qualname__", None) or type(augmentation).__name__


class Trainer:
    """Training of one model in one run directory (see the module docstring)."""

    def __init__(self, model, run_dir, *, seed=0, steps_per_epoch=None, validation_steps=None,
                 warmup_steps=0, lr_drops=(), amp=False, workers=DEFAULT_WORKERS, eval_every=0,
                 eval_limit=None, keep_last=DEFAULT_KEEP_LAST, progress=True, log=print):
        self.model = model
        self.config = model.config
        self.device = model.device
        self.run_dir = Path(run_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        # BATCH_SIZE (IMAGES_PER_GPU x GPU_COUNT) is the global batch.
        self.config.update(GPU_COUNT=self.world_size)
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch or self.config.STEPS_PER_EPOCH
        self.validation_steps = validation_steps or self.config.VALIDATION_STEPS
        self.warmup_steps = warmup_steps
        self.lr_drops = sorted(lr_drops)
        self.amp = amp
        self.workers = workers
        self.eval_every = eval_every
        self.eval_limit = eval_limit
        self.keep_last = keep_last
        self.progress = progress and self.rank == 0
        self.log = log if self.rank == 0 else (lambda *_: None)
        self._check_options()
        self.epoch = 0        # epochs trained, as Matterport's model.epoch
        self.global_step = 0  # optimisation steps taken
        self._resumed = None  # (checkpoint path, settings, state) until train() applies them
        # The images that could not be processed (lines naming them), each reported once; the
        # next image of the dataset took each one's place.
        self.skipped = set()
        if self.rank == 0:
            for path in remove_stale_temporaries(self.run_dir):
                self.log(f"removed {path}, left by an interrupted write")

    def _check_options(self):
        for name, least in (("steps_per_epoch", 1), ("validation_steps", 1),
                            ("warmup_steps", 0), ("workers", 0), ("eval_every", 0),
                            ("keep_last", 0)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be at least {least}, got {getattr(self, name)}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"eval_limit must be at least 1, got {self.eval_limit}")
        if self.amp and self.device.type != "cuda":
            raise ValueError("amp (float16 autocast and gradient scaling) needs a CUDA model")

    # Where training starts.

    def resume(self):
        """Loads the newest complete checkpoint of the run directory: the weights now, the
        training state at the next train() that goes past its epoch.

        Returns the checkpoint's path, or None when the run has no checkpoint. Raises
        TrainerError when its checkpoints lack the training state (weights only), and
        WeightsError for a damaged one or one of another model.
        """
        found = latest_resumable(self.run_dir)
        if found is None:
            if epoch_checkpoints(self.run_dir):
                raise TrainerError(
                    f"{self.run_dir} has checkpoints but none with the training state "
                    "(epoch_NNNN.state.pth) that resuming needs; start a new stage from the "
                    "newest one's weights instead")
            return None
        path, state_path = found
        checkpoint, state = read_training_checkpoint(path, state_path)
        load_weights(self.model, path)
        training = checkpoint["training"]
        self.epoch, self.global_step = training["epoch"], training["global_step"]
        self._resumed = (path, training["settings"], state)
        newer = [str(newer_path) for epoch, newer_path in epoch_checkpoints(self.run_dir).items()
                 if epoch > self.epoch]
        if newer:
            self.log(f"note: {', '.join(newer)} hold weights only; resuming from the newest "
                     "complete checkpoint")
        return path

    def continue_from(self, path):
        """Loads the weights of a training run's checkpoint and counts epochs and steps on from
        it; the next train() starts a new stage (a new optimizer)."""
        training = read_checkpoint(path).get("training")
        if not isinstance(training, dict):
            raise TrainerError(f"{path} holds weights only, without the epoch and step of a "
                               "training run to count on from")
        load_weights(self.model, path)
        self.epoch, self.global_step = training["epoch"], training["global_step"]
        self._resumed = None

    # The loop.

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers,
              augmentation=None, no_augmentation_sources=None, epoch_callbacks=()):
        """Trains from epoch self.epoch to `epochs` (see the module docstring).

        no_augmentation_sources: the sources (a Matterport Dataset's image_info[i]["source"])
        whose images are not augmented. epoch_callbacks: callables (epoch, results) that the
        first process calls after each epoch's checkpoint is written, with the epochs trained so
        far and the epoch's losses (and APs).
        """
        if epochs <= self.epoch:
            self.log(f"already trained to epoch {self.epoch}; nothing to do up to epoch {epochs}")
            return
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        self._check_datasets(train_dataset, val_dataset)
        try:
            trained = set_trainable(self.model, layers)
        except ValueError as error:
            raise TrainerError(str(error)) from None
        self.log(f"training {len(trained)} layers ({layers}), epochs {self.epoch + 1} to "
                 f"{epochs}: {self.steps_per_epoch} steps of {self.config.IMAGES_PER_GPU} "
                 f"images x {self.world_size} process(es), learning rate {learning_rate}")
        if any(p.requires_grad for p in self.model.maskiou_head.parameters()):
            self.model.maskiou_head.trained.fill_(True)  # its mask scores now mean something
        settings = {"layers": layers, "learning_rate": learning_rate,
                    "warmup_steps": self.warmup_steps, "lr_drops": self.lr_drops,
                    "seed": self.seed, "steps_per_epoch": self.steps_per_epoch,
                    "processes": self.world_size,
                    "augmentation": describe_augmentation(augmentation),
                    "first_epoch": self.epoch}
        stage = Stage(self, settings)
        if self._resumed is not None:
            stage.restore(*self._resumed)
            self._resumed = None
        else:
            seed_global_generators(self.seed, self.epoch)
        logs = RunLogs(self.run_dir, self.global_step, self.log) if self.rank == 0 else None
        if logs is not None:
            self.config.to_json(self.run_dir / CONFIG_FILE)
        batches = self._checked(self._loader(
            train_dataset, self.epoch, epochs - self.epoch, augmentation,
            no_augmentation_sources=no_augmentation_sources))
        try:
            for epoch in range(self.epoch, epochs):
                self._epoch(stage, batches, epoch, epochs, val_dataset, logs, epoch_callbacks)
        finally:
            if logs is not None:
                logs.close()
        self.log(f"trained to epoch {epochs}; checkpoints in {self.run_dir}")

    def _epoch(self, stage, batches, epoch, epochs, val_dataset, logs, callbacks=()):
        start = time.perf_counter()
        results = {"loss": stage.train_epoch(batches, epoch, epochs, logs)}
        if val_dataset is not None:
            results.update(self.validate(stage, val_dataset))
        if self.eval_every and (epoch + 1) % self.eval_every == 0:
            results.update(self.evaluate(val_dataset))
        self.epoch = epoch + 1
        summary = ", ".join(f"{name} {value:.4f}" for name, value in results.items()
                            if name in ("loss", "val_loss", "box_ap", "mask_ap"))
        self.log(f"epoch {self.epoch}/{epochs}: {summary} ({time.perf_counter() - start:.0f} s)")
        if logs is not None:
            logs.epoch(self.epoch, self.global_step, results)
            save_epoch_checkpoint(self.run_dir, self.model, self.config, stage.training_info(),
                                  stage.state(), keep_last=self.keep_last)
            for callback in callbacks:
                callback(self.epoch, results)
        self.barrier()

    def _check_datasets(self, train_dataset, val_dataset):
        for name, dataset in (("train", train_dataset), ("validation", val_dataset)):
            if dataset is not None and dataset.num_classes != self.config.NUM_CLASSES:
                raise TrainerError(f"the {name} dataset has {dataset.num_classes} classes "
                                   "(background included) but the model's NUM_CLASSES is "
                                   f"{self.config.NUM_CLASSES}")
        if self.eval_every and not hasattr(val_dataset, "coco"):
            raise TrainerError("eval_every evaluates COCO AP on the validation dataset, which "
                               "must be a preprocess.coco.CocoDataset")

    def _loader(self, dataset, epoch, epochs, augmentation, steps=None,
                no_augmentation_sources=None):
        """Batches of `epochs` epochs from `epoch` (this process's share), in draw order."""
        image_ids = trainable_image_indices(dataset)
        if not image_ids:
            raise TrainerError(f"no image to train on in {dataset!r}: none has an instance "
                               "of a class that is not a crowd")
        samples = TrainingSamples(dataset, self.config, augmentation, seed=self.seed,
                                  no_augmentation_sources=no_augmentation_sources)
        sampler = DrawSampler(image_ids, self.config.IMAGES_PER_GPU,
                              steps or self.steps_per_epoch, epoch, self.seed, self.rank,
                              self.world_size, epochs=epochs)
        # The loader's own generator (it seeds the workers, whose samples are seeded by draw):
        # the global one, saved in checkpoints, stays untouched.
        return torch.utils.data.DataLoader(
            samples, batch_size=self.config.IMAGES_PER_GPU, sampler=sampler,
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            collate_fn=functools.partial(collate, mean_pixel=self.config.MEAN_PIXEL),
            generator=torch.Generator().manual_seed(self.seed))

    @torch.no_grad()
    def validate(self, stage, dataset):
        """Mean losses over validation_steps batches of `dataset`: the same batches and target
        samples every epoch, so that epochs compare."""
        stage.training_model.eval()
        loader = self._loader(dataset, 0, 1, None, steps=self.validation_steps)
        total = 0.0
        for batch in tqdm(self._checked(loader), total=len(loader), desc="validation",
                          unit="step", leave=False,
                          disable=not self.progress):
            total = total + stage.losses(batch, VALIDATION_STREAM)[1]
        values = (total / self.validation_steps).tolist()
        return dict(zip(("val_loss",) + tuple(f"val_{name}" for name in LOSS_NAMES), values))

    def _checked(self, loader):
        """The batches of a loader, once the images they had to skip are reported (each image
        once). A batch that says no image can be processed stops the run (TrainerError)."""
        for batch in loader:
            if "error" in batch:
                raise TrainerError(batch["error"])
            for line in batch.pop("skipped"):
                if line not in self.skipped:
                    self.skipped.add(line)
                    if self.rank == 0:
                        tqdm.write(f"warning: skipped {line} (the next image takes its "
                                   "place)", file=sys.stderr)
            yield batch

    def evaluate(self, dataset):
        """COCO box and mask AP on `dataset` (postprocess.coco_eval, as eval.py)."""
        summary = coco_eval.evaluate(
            self.model, dataset, limit=self.eval_limit, batch_size=self.config.IMAGES_PER_GPU,
            mask_score="maskiou", progress=self.progress, print_tables=False)
        self.skipped.update(image["reason"] for image in summary["skipped_images"])
        self.log(f"COCO AP on {summary['image_count']} validation images, detections with a "
                 f"class score >= {summary['min_confidence']} (Matterport's evaluation "
                 f"setting): box {summary['bbox']['AP']:.4f}, mask {summary['segm']['AP']:.4f}")
        return {"box_ap": summary["bbox"]["AP"], "mask_ap": summary["segm"]["AP"]}

    def stop_on_nonfinite(self, stage, epoch, logged):
        """Saves the weights before this step (the last good ones) and stops the run."""
        detail = ", ".join(f"{name}={value:.4g}"
                           for name, value in zip(("loss",) + LOSS_NAMES, logged.tolist()))
        if self.rank == 0:
            save_weights(self.model, self.config, self.run_dir / NONFINITE_FILE,
                         stage.training_info())
        self.barrier()
        last = list(epoch_checkpoints(self.run_dir).values())
        raise TrainerError(
            f"non-finite loss at epoch {epoch + 1}, step {self.global_step + 1} ({detail}). "
            "Training stopped before that step changed anything: the last good weights are in "
            f"{self.run_dir / NONFINITE_FILE}"
            + (f", the last epoch checkpoint is {last[-1]}" if last else "")
            + ". Lower the learning rate, lengthen the warm-up or check the data.")

    def barrier(self):
        """Waits for every process (no-op in one process)."""
        if self.world_size > 1:
            dist.barrier()


class Stage:
    """One train() call: the trained parameters, the loss module (under DDP when distributed),
    the optimizer, its schedule and the gradient scaler."""

    def __init__(self, trainer, settings):
        self.trainer = trainer
        self.settings = settings
        model, config = trainer.model, trainer.config
        self.training_model = TrainingModel(model)
        if trainer.world_size > 1:
            device = trainer.device
            self.training_model = torch.nn.parallel.DistributedDataParallel(
                self.training_model, device_ids=[device.index] if device.type == "cuda" else None)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.parameters, lr=settings["learning_rate"],
                                         momentum=config.LEARNING_MOMENTUM)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, WarmupSchedule(
            settings["warmup_steps"], settings["steps_per_epoch"], settings["lr_drops"],
            settings["first_epoch"]))
        self.scaler = torch.amp.GradScaler("cuda", enabled=trainer.amp)

    def restore(self, checkpoint, saved_settings, state):
        """Continues the stage of a checkpoint: its settings must be this stage's."""
        differences = {name: (saved_settings.get(name), self.settings[name])
                       for name in STAGE_SETTINGS
                       if saved_settings.get(name) != self.settings[name]}
        if differences:
            raise ResumeMismatchError(checkpoint, differences)
        self.settings["first_epoch"] = saved_settings["first_epoch"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_random_states(state["random"])
        self.trainer.log(f"resumed from {checkpoint}: epoch {self.trainer.epoch}, step "
                         f"{self.trainer.global_step}, with its optimizer, schedule and random "
                         "state")

    def training_info(self):
        """What the model checkpoint records of the run (see mrcnn.weights)."""
        return {"epoch": self.trainer.epoch, "global_step": self.trainer.global_step,
                "settings": dict(self.settings)}

    def state(self):
        """The training state resuming needs beyond the weights."""
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "random": random_states()}

    def losses(self, batch, stream):
        """(the loss to optimise, [loss, *LOSS_NAMES] as one tensor averaged over processes)."""
        trainer = self.trainer
        device = trainer.device
        inputs = {name: value.to(device, non_blocking=True) for name, value in batch.items()
                  if name != "draws"}
        generators = [sample_generator(device, trainer.seed, draw, stream)
                      for draw in batch["draws"].tolist()]
        with torch.autocast(device.type, enabled=trainer.amp):
            losses, counts = self.training_model(
                inputs["images"], inputs["gt_class_ids"], inputs["gt_boxes"],
                inputs["gt_masks"], inputs["active_class_ids"], generator=generators,
                return_counts=True)
        if trainer.world_size > 1:
            losses = self.pooled(losses, counts)
        loss = total_loss(losses, trainer.config)
        logged = torch.stack([loss.detach()] + [losses[name].detach().float()
                                                for name in LOSS_NAMES])
        if trainer.world_size > 1:
            dist.all_reduce(logged)
            logged /= trainer.world_size
        return loss, logged

    def pooled(self, losses, counts):
        """Each loss times this process's share of its terms over all processes (times the
        process count, which DDP's gradient average divides out): the mean over processes
        becomes the loss of the global batch."""
        names = list(counts)
        local = torch.stack([counts[name] for name in names])
        total = local.clone()
        dist.all_reduce(total)
        factors = local * self.trainer.world_size / total.clamp(min=1.0)
        return {name: loss * factors[names.index(name)] if name in counts else loss
                for name, loss in losses.items()}

    def train_epoch(self, batches, epoch, epochs, logs):
        """Runs one epoch's steps from the `batches` iterator; returns the mean total loss."""
        trainer = self.trainer
        set_batch_norm_modes(self.training_model)
        bar = tqdm(total=trainer.steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                   unit="step", disable=not trainer.progress, dynamic_ncols=True)
        total = 0.0
        with bar:
            for _ in range(trainer.steps_per_epoch):
                start = time.perf_counter()
                batch = next(batches)
                loaded = time.perf_counter()
                loss, logged = self.losses(batch, TRAIN_STREAM)
                if not torch.isfinite(logged).all():
                    trainer.stop_on_nonfinite(self, epoch, logged)
                lr = self.optimizer.param_groups[0]["lr"]
                self.step(loss)
                values = logged.tolist()
                total += values[0]
                if logs is not None:
                    logs.step(epoch + 1, trainer.global_step, lr, values,
                              time.perf_counter() - start, loaded - start)
                bar.update()
                bar.set_postfix_str(" ".join(
                    f"{name.removesuffix('_loss')}={value:.3f}"
                    for name, value in zip(("loss",) + LOSS_NAMES[:-1], values)))
        return total / trainer.steps_per_epoch

    def step(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.parameters, self.trainer.config.GRADIENT_CLIP_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.trainer.global_step += 1


def seed_global_generators(seed, epoch):
    """Seeds Python's, numpy's and torch's global generators for a stage that starts at `epoch`,
    so that code drawing from them during training repeats (and a resumed run, which restores
    them, goes on as the uninterrupted one)."""
    value = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def random_states():
    """The global random generators' states (Python, numpy, torch CPU and CUDA), as plain values
    and tensors that torch.load(weights_only=True) reads."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {"python": {"version": version, "state": list(python_state), "gauss": python_gauss},
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                      "has_gauss": has_gauss, "gauss": gauss},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_random_states(states):
    """Restores what random_states() returned."""
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RunLogs:
    """metrics.csv, validation.csv and TensorBoard of a run (rank 0 only)."""

    def __init__(self, run_dir, resume_step, log):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = CsvLog(run_dir / METRICS_FILE, METRICS_COLUMNS, resume_step)
        self.validation = CsvLog(run_dir / VALIDATION_FILE, VALIDATION_COLUMNS, resume_step)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log("note: tensorboard is not installed; the curves go to the CSV files only")
            return
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def step(self, epoch, step, lr, values, seconds, data_seconds):
        losses = dict(zip(("loss",) + LOSS_NAMES, values))
        self.metrics.write({"epoch": epoch, "step": step, "lr": lr, **losses,
                            "seconds": seconds, "data_seconds": data_seconds})
        if self.tensorboard is not None:
            for name, value in losses.items():
                self.tensorboard.add_scalar(f"train/{name}", value, step)
            self.tensorboard.add_scalar("train/lr", lr, step)

    def epoch(self, epoch, step, results):
        self.validation.write({"epoch": epoch, "step": step, **results})
        if self.tensorboard is not None:
            for name, value in results.items():
                self.tensorboard.add_scalar(f"epoch/{name}", value, step)
            self.tensorboard.flush()

    def close(self):
        self.metrics.close()
        self.validation.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


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

    def close(self):
        self.file.close()
