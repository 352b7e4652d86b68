"""The dataset checks the scripts share (train.py, eval.py, postprocess.inspect): opening a split
of a COCO-layout directory and checking a model's class count against a dataset. Both raise
mrcnn.cli.CliError with a message for the user."""
import sys

from mrcnn.cli import CliError, error_message
from preprocess.coco import coco_layout, open_dataset


def open_split(dataset_dir, split, say=None, **options):
    """The CocoDataset of `split` of a COCO-layout directory (see preprocess.coco.coco_layout);
    `options` go to CocoDataset, and the annotations it clipped or skipped are told through
    `say(line)` (default: a warning on stderr). CliError for a missing split or a broken
    annotation file."""
    say = say or (lambda line: print(f"warning: {line}", file=sys.stderr))
    try:
        return open_dataset(*coco_layout(dataset_dir, split), say, **options)
    except (OSError, ValueError) as error:  # ValueError: DatasetError
        raise CliError(error_message(error)) from None


def check_class_count(config, dataset, config_source=None):
    """CliError unless config.NUM_CLASSES is the dataset's class count (background included).

    config_source: where the config came from (e.g. "from my.json"), said in the message.
    """
    if config.NUM_CLASSES == dataset.num_classes:
        return
    source = f" ({config_source})" if config_source else ""
    where = getattr(dataset, "annotation_json", "the dataset")
    raise CliError(f"the model has NUM_CLASSES {config.NUM_CLASSES}{source} but {where} has "
                   f"{dataset.num_classes - 1} categories (NUM_CLASSES {dataset.num_classes} "
                   "with the background); the model's config and the dataset must have the "
                   "same classes")
