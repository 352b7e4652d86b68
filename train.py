"""Fine-tunes the Mask Scoring R-CNN on a COCO-format dataset, on one device or with torchrun.

    python train.py --dataset DIR --weights coco --layers heads --epochs 40 --lr 0.001
    torchrun --nproc_per_node 4 train.py --dataset DIR ...
    python train.py --export-weights RUN_DIR model.pth

A command over the training library mrcnn.trainer. Run with --help for every option.
"""
import argparse
import json
import sys
from pathlib import Path

import mrcnn  # noqa: F401  first: it sets OpenMP's thread settings before torch loads
import torch
import torch.distributed as dist
from tqdm import tqdm

from mrcnn.cli import (CliError, add_dataset_check_arguments, check_no_overwrite, coco_checkpoint,
                       dataset_options, error_message, join_processes, reports_errors,
                       resolve_device)
from mrcnn.config import Config
from mrcnn.detector import MaskScoringRCNN
from mrcnn.trainer import (CONFIG_FILE, DEFAULT_KEEP_LAST, DEFAULT_WORKERS, METRICS_FILE,
                           VALIDATION_FILE, ResumeMismatchError, Trainer, TrainerError)
from mrcnn.weights import (epoch_checkpoints, export_weights, imagenet_weights_path,
                           latest_resumable, load_pretrained, load_weights, read_checkpoint)
from preprocess.splits import check_class_count, open_split
from preprocess.training_data import flip_left_right

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
  epoch_NNNN.pth   a checkpoint per epoch (the newest --keep-last), written atomically; each
                   loads as weights (--weights PATH here, demo.py, eval.py)
  epoch_NNNN.state.pth
                   the optimiser, schedule and random state --resume needs, for the newest
                   checkpoint only
  metrics.csv      one row per optimisation step: epoch, step, lr, loss (the total), each loss
                   component, the step's seconds and the seconds it waited for data
  validation.csv   one row per epoch: the mean training loss, the validation losses, and
                   box/mask AP with --eval-every
  config.json      the run's Config
  tensorboard/     the same curves, when the tensorboard package is installed

A run that stopped (crash, Ctrl-C, a killed or preempted machine) continues with the same
command plus --resume: from the run's newest complete checkpoint, exactly as if it had not
stopped; --weights counts only when the run has no checkpoint yet."""

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
  python train.py --dataset data/coco --weights coco --layers heads --epochs 40 --out runs/coco \\
      --resume                           # the same command again, after an interruption
  python train.py --dataset data/coco --weights last --layers 4+ --epochs 120 --out runs/coco
  torchrun --nproc_per_node 4 train.py --dataset data/coco --weights last --layers all \\
      --epochs 160 --lr 0.0001 --out runs/coco
  python train.py --export-weights runs/coco coco_final.pth"""

OPTION_OF_SETTING = {"layers": "--layers", "learning_rate": "--lr",
                     "warmup_steps": "--warmup-steps", "lr_drops": "--lr-drop", "seed": "--seed",
                     "steps_per_epoch": "--steps-per-epoch", "processes": "processes",
                     "augmentation": "augmentation (--no-augment)"}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="train.py", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", metavar="DIR",
                      help="dataset in the COCO 2017 layout: DIR/annotations/instances_<split>"
                           ".json, images in DIR/<split>/ (required)")
    data.add_argument("--train-split", default="train2017", metavar="SPLIT",
                      help="training split (default: %(default)s; 'train' for "
                           "preprocess.synthetic)")
    data.add_argument("--val-split", default="val2017", metavar="SPLIT",
                      help="validation split (default: %(default)s; 'val' for "
                           "preprocess.synthetic; 'none' for no validation)")
    data.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="W",
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
    model.add_argument("--weights", metavar="coco|imagenet|last|none|PATH",
                       help="weights to start from: 'coco' (the default: Matterport's COCO "
                            "model, downloaded and converted once into the cache demo.py uses), "
                            "'imagenet' (Keras's ImageNet ResNet-50, as Matterport: the ResNet "
                            "layers only, BACKBONE resnet50; downloaded once), "
                            "'last' (the newest checkpoint in RUN_DIR, weights only; the epoch "
                            "count goes on from it), 'none' (train from scratch), or a "
                            "Matterport .h5 / mrcnn .pth. Layers made for another class count "
                            "start fresh. With --resume, used only when RUN_DIR has no "
                            "checkpoint yet")
    model.add_argument("--layers", default="heads", metavar="GROUP",
                       help="layers to train: heads, 3+, 4+, 5+, all, maskiou or a regex "
                            "(default: %(default)s; see below)")

    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--epochs", type=int, metavar="E",
                              help="the epoch to train up to (cumulative, as in Matterport: a "
                                   "resumed run continues to it; required)")
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
                     help="continue the run in RUN_DIR from its newest complete checkpoint, "
                          "exactly (model, optimiser, schedule, epoch, random state, data "
                          "order), with its config: re-run the original command with --resume. "
                          "Without a checkpoint yet, the run starts from --weights")
    run.add_argument("--eval-every", type=int, default=0, metavar="K",
                     help="every K epochs, COCO box and mask AP on the validation split (masks "
                          "ranked by the mask score; every detection counts, "
                          "DETECTION_MIN_CONFIDENCE 0, as in Matterport's COCO evaluation and "
                          "eval.py; default: never)")
    run.add_argument("--eval-limit", type=int, metavar="N",
                     help="evaluate on the first N validation images only")
    run.add_argument("--keep-last", type=int, default=DEFAULT_KEEP_LAST, metavar="N",
                     help="keep only the newest N epoch checkpoints (default: %(default)s; 0: "
                          "keep all)")
    run.add_argument("--export-weights", nargs=2, metavar=("RUN_DIR|CHECKPOINT", "OUT.pth"),
                     help="write the weights and config of a checkpoint (a run directory: its "
                          "newest) to OUT.pth for inference, without the training state, and "
                          "exit; no other option is needed")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def check_arguments(args):
    """Raises CliError for values and combinations that cannot work."""
    for name in ("dataset", "epochs"):
        if getattr(args, name) is None:
            raise CliError(f"--{name} is required (or --export-weights alone)")
    for name, least in (("epochs", 0), ("steps_per_epoch", 1), ("validation_steps", 1),
                        ("warmup_steps", 0), ("workers", 0), ("eval_every", 0),
                        ("eval_limit", 1), ("keep_last", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise CliError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise CliError(f"--lr must be positive, got {args.lr}")
    if args.eval_every and args.val_split == "none":
        raise CliError("--eval-every evaluates on the validation split; give --val-split")
    if not args.layers:
        raise CliError("--layers is empty")
    if args.amp and resolve_device(args.device).type != "cuda":
        raise CliError("--amp needs CUDA (--device cuda)")


def read_config_file(config_path):
    """The JSON object of --config ({} without one)."""
    try:
        given = json.loads(Path(config_path).read_text()) if config_path else {}
    except (OSError, ValueError) as error:
        raise CliError(f"--config {config_path}: {error_message(error)}") from None
    if not isinstance(given, dict):
        raise CliError(f"--config {config_path}: expected a JSON object of Config fields")
    return given


def build_config(config_path, dataset, name):
    """The run's Config: --config's fields; NUM_CLASSES, CLASS_NAMES and NAME from the dataset
    unless the file sets them (run_config then checks the class count)."""
    given = read_config_file(config_path)
    defaults = {"NUM_CLASSES": dataset.num_classes, "NAME": name}
    if given.get("NUM_CLASSES", dataset.num_classes) == dataset.num_classes:
        defaults["CLASS_NAMES"] = dataset.class_names  # (else check_class_count says why)
    try:
        return Config.from_dict(given, **{field: value for field, value in defaults.items()
                                         if field not in given})
    except (KeyError, ValueError) as error:
        raise CliError(f"--config {config_path}: {error.args[0]}") from None


def resumed_config(args, checkpoint):
    """The config of the checkpoint a run resumes from; --config may not change it."""
    saved = read_checkpoint(checkpoint)["config"]
    changed = sorted(name for name, value in read_config_file(args.config).items()
                     if json.dumps(saved.get(name)) != json.dumps(value))
    if changed:
        raise CliError(f"--resume goes on with the config of {checkpoint}, but {args.config} "
                       f"changes {changed}; start a new run instead")
    return Config.from_dict(saved)


def run_config(args, train_data, resumable):
    """(the run's Config, where it comes from) after the class-count check."""
    if resumable is not None:
        config, source = resumed_config(args, resumable[0]), f"from {resumable[0]}"
    else:
        config = build_config(args.config, train_data, Path(args.dataset).resolve().name)
        source = f"from {args.config}" if args.config else "the dataset's classes"
    check_class_count(config, train_data, source)
    return config


def start(trainer, args, resumable, log):
    """Resumes the run, or loads --weights when there is nothing to resume."""
    if resumable is not None:
        path = trainer.resume()
        log(f"--resume: continuing {trainer.run_dir} from {path} (epoch {trainer.epoch}, step "
            f"{trainer.global_step}); --weights is not used")
        return
    weights = args.weights or "coco"
    if args.resume:
        log(f"--resume: {trainer.run_dir} has no checkpoint yet; starting from --weights "
            f"{weights}")
    if weights == "none":
        log("weights: none, training from scratch")
        return
    if weights == "last":
        found = epoch_checkpoints(trainer.run_dir)
        if not found:
            raise CliError(f"--weights last, but {trainer.run_dir} has no epoch checkpoint")
        path = list(found.values())[-1]
        trainer.continue_from(path)
        log(f"weights: {path}; a new stage, counting on from epoch {trainer.epoch}")
        return
    if weights == "imagenet":
        if trainer.config.BACKBONE != "resnet50":
            raise CliError("--weights imagenet is Keras's ImageNet ResNet-50: set BACKBONE "
                           f"\"resnet50\" in --config (the config has {trainer.config.BACKBONE})")
        path = fetched_once(trainer, imagenet_weights_path)
        log(f"weights: {path}, into the ResNet layers; the FPN, RPN and heads start fresh")
        load_weights(trainer.model, path, backbone_only=True)
        return
    # Matterport's COCO weights are downloaded and converted once, into the cache demo.py uses.
    path = fetched_once(trainer, coco_checkpoint) if weights == "coco" else Path(weights)
    log(f"weights: {path}")
    load_pretrained(trainer.model, path, log=log)


def fetched_once(trainer, fetch):
    """fetch(progress) -> path of a cached download: the first process fetches, the others wait
    and then take it from the cache."""
    path = fetch(True) if trainer.rank == 0 else None
    trainer.barrier()
    return path or fetch(False)


def find_resumable(args, run_dir):
    """The (checkpoint, state) --resume continues from, or None; CliError for a run directory
    that a new run would overwrite."""
    checkpoints = epoch_checkpoints(run_dir)
    if not args.resume:
        if checkpoints and args.weights != "last":
            raise CliError(f"{run_dir} already holds checkpoints: pass --resume to continue "
                           "that run, --weights last to train on from its newest checkpoint, "
                           "or choose another --out")
        return None
    resumable = latest_resumable(run_dir)
    if resumable is None and checkpoints:
        raise CliError(f"--resume, but the checkpoints of {run_dir} lack the training state "
                       "(epoch_NNNN.state.pth) resuming needs; start a new stage from the "
                       "newest with --weights last")
    return resumable


def train(args, device):
    processes = dist.get_world_size() if dist.is_initialized() else 1
    main_process = not dist.is_initialized() or dist.get_rank() == 0
    log = print if main_process else (lambda *_: None)
    run_dir = Path(args.out)
    say = print_warning if main_process else (lambda _: None)
    train_data = open_split(args.dataset, args.train_split, say, **dataset_options(args))
    val_data = None if args.val_split == "none" else open_split(
        args.dataset, args.val_split, say, **dataset_options(args))
    resumable = find_resumable(args, run_dir)
    config = run_config(args, train_data, resumable)
    check_no_overwrite(run_dir, [CONFIG_FILE, METRICS_FILE, VALIDATION_FILE], [args.config])
    log(f"config: {config.BACKBONE}, {config.NUM_CLASSES} classes, {config.IMAGE_RESIZE_MODE} "
        f"images of {config.IMAGE_MAX_DIM}, {config.IMAGES_PER_GPU} per process x {processes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)  # initialises the layers that no weights fill
        model = MaskScoringRCNN(config).to(device)
    trainer = Trainer(model, run_dir, seed=args.seed, steps_per_epoch=args.steps_per_epoch,
                      validation_steps=args.validation_steps, warmup_steps=args.warmup_steps,
                      lr_drops=args.lr_drop, amp=args.amp, workers=args.workers,
                      eval_every=args.eval_every, eval_limit=args.eval_limit,
                      keep_last=args.keep_last, progress=not args.quiet, log=log)
    learning_rate = args.lr if args.lr is not None else config.LEARNING_RATE
    try:
        start(trainer, args, resumable, log)
        trainer.train(train_data, val_data, learning_rate, args.epochs, args.layers,
                      augmentation=None if args.no_augment else flip_left_right)
    except ResumeMismatchError as error:
        listed = ", ".join(f"{OPTION_OF_SETTING[name]} {saved} (this command: {given})"
                           for name, (saved, given) in error.differences.items())
        raise CliError(f"{error.checkpoint} was trained with {listed}; resume with the "
                       "original command's options, or start a new stage from it with "
                       "--weights last") from None
    except TrainerError as error:
        raise CliError(str(error)) from None
    return trainer


def print_warning(line):
    tqdm.write(f"warning: {line}", file=sys.stderr)


def export(source, dest):
    """--export-weights: the weights of a checkpoint (a run directory's newest) to dest."""
    source, dest = Path(source), Path(dest)
    if source.is_dir():
        checkpoints = epoch_checkpoints(source)
        if not checkpoints:
            raise CliError(f"--export-weights: {source} has no epoch checkpoint")
        source = list(checkpoints.values())[-1]
    check_no_overwrite(dest.parent, [dest.name], [source])
    export_weights(source, dest)
    print(f"wrote {dest}: the weights and config of {source}")


@reports_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.export_weights:
        export(*args.export_weights)
        return 0
    check_arguments(args)
    device = join_processes(args.device)
    try:
        trainer = train(args, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.skipped:
        print(f"error: skipped {len(trainer.skipped)} image(s) that could not be processed (see "
              "the warnings above); training went on with the others", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
