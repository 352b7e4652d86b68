"""Model configuration with Matterport's field names and defaults.

A `Config` is passed explicitly to everything that needs it; there are no globals. Fields are the
upper-case attributes of the class (subclass to make a preset, or pass keyword overrides);
derived values (BATCH_SIZE, IMAGE_SHAPE, IMAGE_META_SIZE, BACKBONE_SHAPES, MOLDED_IMAGE_SHAPE)
are read-only properties, so they never go stale. In 'pad64' and 'none' modes each image has its
own molded shape, so IMAGE_SHAPE, MOLDED_IMAGE_SHAPE and BACKBONE_SHAPES are None there.

Config files (to_json, Matterport's dumps, the Keras reference's config.json) record the derived
values too. They are informational: from_dict accepts them when they describe what the model does
for the file's fields (in 'pad64' mode, say, the shapes of one molded image) and refuses them,
saying why, when they do not.
"""
import copy
import json
import math

from mrcnn.atomic import atomic_write

COCO_CLASS_NAMES = [
    "BG", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]

# COCO's category id of each of COCO_CLASS_NAMES[1:] (COCO numbers its 80 categories 1 to 90).
COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54,
    55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81,
    82, 84, 85, 86, 87, 88, 89, 90,
]

RESIZE_MODES = ("none", "square", "pad64", "crop")
# Resize modes in which the molded shape depends on the image.
PER_IMAGE_MODES = ("pad64", "none")
BACKBONES = ("resnet50", "resnet101")
POOLERS = ("crop_and_resize", "roi_align")
PRECISIONS = ("exact", "tf32", "bf16")   # see mrcnn.precision


class Config:
    """Matterport's `Config` fields (same names, same defaults) plus the Mask Scoring fields."""

    NAME = None
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50

    # Backbone and FPN.
    BACKBONE = "resnet101"
    COMPUTE_BACKBONE_SHAPE = None
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    TOP_DOWN_PYRAMID_SIZE = 256

    # Number of classes including the background (class 0).
    NUM_CLASSES = 1
    # Optional names of the NUM_CLASSES classes (index 0 = background), for display.
    CLASS_NAMES = None

    # RPN.
    RPN_ANCHOR_SCALES = [32, 64, 128, 256, 512]
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    RPN_ANCHOR_STRIDE = 1
    RPN_NMS_THRESHOLD = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    PRE_NMS_LIMIT = 6000
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000

    USE_MINI_MASK = True
    MINI_MASK_SHAPE = [56, 56]

    # Input.
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3
    MEAN_PIXEL = [123.7, 116.8, 103.9]

    # Heads and training targets.
    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    # How PyramidROIAlign pools a box from its pyramid level (box and mask heads, training too):
    # "crop_and_resize" is Matterport's (tf.image.crop_and_resize), the one Matterport's weights
    # were trained with; "roi_align" is RoIAlign as torchvision and detectron2 compute it
    # (aligned=True, adaptive sampling), for models trained with this project.
    POOLER = "crop_and_resize"
    MASK_SHAPE = [28, 28]
    MAX_GT_INSTANCES = 100
    RPN_BBOX_STD_DEV = [0.1, 0.1, 0.2, 0.2]
    BBOX_STD_DEV = [0.1, 0.1, 0.2, 0.2]

    # Detection.
    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3

    # Optimisation.
    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001
    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.0,
        "rpn_bbox_loss": 1.0,
        "mrcnn_class_loss": 1.0,
        "mrcnn_bbox_loss": 1.0,
        "mrcnn_mask_loss": 1.0,
    }
    USE_RPN_ROIS = True
    TRAIN_BN = False
    GRADIENT_CLIP_NORM = 5.0

    # Mask Scoring R-CNN: weight of the MaskIoU regression loss.
    MASKIOU_LOSS_WEIGHT = 1.0

    # Arithmetic of the inference forward pass (mrcnn.precision): "exact" (float32, TF32 off:
    # Matterport's numbers), "tf32" (TF32 convolutions and matmuls on recent GPUs) or "bf16"
    # (bfloat16 autocast for the network layers).
    PRECISION = "exact"

    # Values computed from the fields above; from_dict accepts them only when they describe
    # this config (see derived_value_problem).
    DERIVED = ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE", "BACKBONE_SHAPES",
               "MOLDED_IMAGE_SHAPE")

    def __init__(self, **overrides):
        for name in type(self).field_names():
            setattr(self, name, copy.deepcopy(getattr(type(self), name)))
        self.update(**overrides)

    @classmethod
    def field_names(cls):
        """The settable upper-case fields, in a stable order."""
        return sorted(name for name in dir(cls)
                      if name.isupper() and name not in cls.DERIVED and name != "DERIVED")

    def update(self, **overrides):
        """Sets fields by name; an unknown name or a derived value is an error."""
        known = set(self.field_names())
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise KeyError(f"unknown Config field(s) {unknown}; known fields: {sorted(known)}")
        for name, value in overrides.items():
            setattr(self, name, copy.deepcopy(value))
        self.validate()
        return self

    # Derived values (Matterport computes them in Config.__init__).
    @property
    def BATCH_SIZE(self):
        return self.IMAGES_PER_GPU * self.GPU_COUNT

    @property
    def IMAGE_SHAPE(self):
        """[H, W, C] of every molded image: [IMAGE_MAX_DIM, IMAGE_MAX_DIM, C] in 'square' mode,
        [IMAGE_MIN_DIM, IMAGE_MIN_DIM, C] in 'crop' mode; None in 'pad64' and 'none' modes,
        where each image has its own (mrcnn.molding.molded_shape). Matterport's Config gives
        [IMAGE_MAX_DIM, IMAGE_MAX_DIM, C] there, a shape no molded image need have."""
        if self.IMAGE_RESIZE_MODE in PER_IMAGE_MODES:
            return None
        side = self.IMAGE_MIN_DIM if self.IMAGE_RESIZE_MODE == "crop" else self.IMAGE_MAX_DIM
        return [side, side, self.IMAGE_CHANNEL_COUNT]

    @property
    def IMAGE_META_SIZE(self):
        return 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES

    @property
    def BACKBONE_SHAPES(self):
        """[[ceil(H/s), ceil(W/s)] for each backbone stride] of the molded image; None in 'pad64'
        and 'none' modes (per image: backbone_shapes(molded_shape(image_hw, config),
        BACKBONE_STRIDES))."""
        if self.IMAGE_SHAPE is None:
            return None
        return backbone_shapes(self.IMAGE_SHAPE[:2], self.BACKBONE_STRIDES)

    @property
    def MOLDED_IMAGE_SHAPE(self):
        """IMAGE_SHAPE (None in 'pad64' and 'none' modes, where it is per image)."""
        return self.IMAGE_SHAPE

    def derived_value_problem(self, name, value, recorded=None):
        """Why `value`, recorded as derived value `name` in a config file, does not describe
        this config; None when it does.

        Values the fields fix must equal them. In 'pad64' and 'none' modes a file may record
        the shapes of one molded image: MOLDED_IMAGE_SHAPE must then be a shape the mode can
        mold to and BACKBONE_SHAPES its backbone shapes (MOLDED_IMAGE_SHAPE taken from
        `recorded`, the file's other derived values). Matterport's IMAGE_SHAPE there,
        [IMAGE_MAX_DIM, IMAGE_MAX_DIM, C], and the shapes derived from it (which this project
        wrote before) are accepted too, and so is null.
        """
        value, own = _plain(value), _plain(getattr(self, name))
        if value == own:
            return None
        mode = self.IMAGE_RESIZE_MODE
        if own is not None or value is None:
            return f"the fields give {own!r}"
        matterport = [self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM, self.IMAGE_CHANNEL_COUNT]
        if name == "IMAGE_SHAPE":
            return (None if value == matterport else
                    f"in '{mode}' mode the molded shape is per image, and Matterport's Config "
                    f"gives {matterport}")
        if name == "MOLDED_IMAGE_SHAPE" and value == matterport:
            return None
        if name == "MOLDED_IMAGE_SHAPE":
            return self._molded_shape_problem(value)
        molded = _plain((recorded or {}).get("MOLDED_IMAGE_SHAPE"))
        if molded is None or self.derived_value_problem("MOLDED_IMAGE_SHAPE", molded):
            return self._shape_list_problem(value)
        expected = backbone_shapes(molded[:2], self.BACKBONE_STRIDES)
        return (None if value == expected else
                f"the MOLDED_IMAGE_SHAPE {molded} given with it has backbone shapes {expected}")

    def _molded_shape_problem(self, shape):
        """Why [H, W, C] is no molded shape of this 'pad64' or 'none' config; None if it is."""
        if not (isinstance(shape, list) and len(shape) == 3
                and all(isinstance(v, int) and v > 0 for v in shape)):
            return "a molded shape is [H, W, C], three positive integers"
        if shape[2] != self.IMAGE_CHANNEL_COUNT:
            return f"IMAGE_CHANNEL_COUNT is {self.IMAGE_CHANNEL_COUNT}"
        if self.IMAGE_RESIZE_MODE == "pad64":
            if shape[0] % 64 or shape[1] % 64:
                return "'pad64' mode pads both sides to multiples of 64"
            if min(shape[:2]) < self.IMAGE_MIN_DIM:
                return (f"'pad64' mode scales images up to a shorter side of at least "
                        f"IMAGE_MIN_DIM {self.IMAGE_MIN_DIM}")
        return None

    def _shape_list_problem(self, shapes):
        """Why `shapes` is not one [h, w] pair per backbone stride; None if it is."""
        if (isinstance(shapes, list) and len(shapes) == len(self.BACKBONE_STRIDES)
                and all(isinstance(pair, list) and len(pair) == 2
                        and all(isinstance(v, int) and v > 0 for v in pair) for pair in shapes)):
            return None
        return (f"backbone shapes are one [h, w] pair of positive integers per BACKBONE_STRIDES "
                f"level ({len(self.BACKBONE_STRIDES)})")

    def validate(self):
        """Raises ValueError for settings the model cannot run with."""
        if self.BACKBONE not in BACKBONES:
            raise ValueError(f"BACKBONE must be one of {BACKBONES}, got {self.BACKBONE!r}")
        if self.POOLER not in POOLERS:
            raise ValueError(f"POOLER must be one of {POOLERS}, got {self.POOLER!r}")
        if self.IMAGE_RESIZE_MODE not in RESIZE_MODES:
            raise ValueError(f"IMAGE_RESIZE_MODE must be one of {RESIZE_MODES}, "
                             f"got {self.IMAGE_RESIZE_MODE!r}")
        if not isinstance(self.NUM_CLASSES, int) or self.NUM_CLASSES < 1:
            raise ValueError(f"NUM_CLASSES must be an integer >= 1 (background included), "
                             f"got {self.NUM_CLASSES!r}")
        if self.CLASS_NAMES is not None and len(self.CLASS_NAMES) != self.NUM_CLASSES:
            raise ValueError(f"CLASS_NAMES has {len(self.CLASS_NAMES)} names but NUM_CLASSES is "
                             f"{self.NUM_CLASSES}")
        if self.IMAGE_RESIZE_MODE in ("square", "crop"):
            side = self.IMAGE_SHAPE[0]
            if side % 64:
                raise ValueError(f"the molded image side {side} must be a multiple of 64 "
                                 "(IMAGE_MAX_DIM in 'square' mode, IMAGE_MIN_DIM in 'crop' mode)")
        if self.IMAGE_RESIZE_MODE == "pad64" and self.IMAGE_MIN_DIM % 64:
            raise ValueError(f"IMAGE_MIN_DIM must be a multiple of 64 in 'pad64' mode, "
                             f"got {self.IMAGE_MIN_DIM}")
        if len(self.RPN_ANCHOR_SCALES) != len(self.BACKBONE_STRIDES):
            raise ValueError("RPN_ANCHOR_SCALES needs one scale per BACKBONE_STRIDES level")
        # Matterport options this port does not implement: refuse them rather than ignore them.
        if self.COMPUTE_BACKBONE_SHAPE is not None:
            raise ValueError("COMPUTE_BACKBONE_SHAPE (a custom backbone's shapes) is not supported: "
                             "the backbone is ResNet-50/101, whose shapes follow BACKBONE_STRIDES")
        if not self.USE_RPN_ROIS:
            raise ValueError("USE_RPN_ROIS = False (training on externally given ROIs) is not "
                             "supported")
        if self.IMAGES_PER_GPU < 1 or self.GPU_COUNT < 1:
            raise ValueError("IMAGES_PER_GPU and GPU_COUNT must be >= 1")
        if self.PRECISION not in PRECISIONS:
            raise ValueError(f"PRECISION must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.PRECISION!r}")

    def class_names(self):
        """Display names for the NUM_CLASSES classes."""
        if self.CLASS_NAMES is not None:
            return list(self.CLASS_NAMES)
        return ["BG"] + [f"class {i}" for i in range(1, self.NUM_CLASSES)]

    def to_dict(self):
        """Every field plus the derived values, as plain JSON-compatible data."""
        values = {name: copy.deepcopy(getattr(self, name)) for name in self.field_names()}
        values.update({name: getattr(self, name) for name in self.DERIVED})
        return values

    def to_json(self, path):
        """Writes to_dict() to `path` atomically (temporary file, then rename)."""
        with atomic_write(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, values, **overrides):
        """A config of this class with `values` (any subset of fields) then `overrides` applied.

        Derived values in `values` (as Matterport's dumps and to_json write them) are
        informational: each must describe the config (derived_value_problem), else ValueError.
        """
        values = dict(values)
        derived = {name: values.pop(name) for name in cls.DERIVED if name in values}
        values.update(overrides)
        config = cls(**values)
        for name, given in derived.items():
            problem = config.derived_value_problem(name, given, derived)
            if problem:
                raise ValueError(f"{name} is {given!r} in the given values, but {problem}")
        return config

    @classmethod
    def from_json(cls, path, defaults=None, **overrides):
        """Reads a JSON object of Config fields (any subset; e.g. a reference config.json).

        `defaults` ({field: value}) fill the fields the file does not set; `overrides` replace
        any.
        """
        values = dict(defaults or {}, **read_json_fields(path))
        try:
            return cls.from_dict(values, **overrides)
        except (KeyError, ValueError) as error:
            raise type(error)(f"{path}: {error.args[0]}") from None

    def __eq__(self, other):
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def display(self):
        """Prints every field and derived value, one per line, as Matterport's display()."""
        print("\nConfigurations:")
        for name in self._display_names():
            print(f"{name:30} {getattr(self, name)}")
        print("\n")

    def __repr__(self):
        lines = [f"{name:28} {getattr(self, name)!r}" for name in self._display_names()]
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def _display_names(self):
        return sorted(self.field_names() + list(self.DERIVED))


class CocoConfig(Config):
    """Matterport's COCO configuration (samples/coco/coco.py): 80 classes plus background."""

    NAME = "coco"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 81
    CLASS_NAMES = COCO_CLASS_NAMES


def read_json_fields(path):
    """The JSON object of Config fields in the file `path`, as a dict (not checked)."""
    try:
        with open(path) as f:
            values = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object of Config fields")
    return values


def backbone_shapes(image_hw, strides):
    """[[ceil(H/s), ceil(W/s)] for s in strides] (Matterport's compute_backbone_shapes)."""
    height, width = image_hw
    return [[int(math.ceil(height / s)), int(math.ceil(width / s))] for s in strides]


def _plain(value):
    """JSON round-trip form, so tuples and lists compare equal."""
    return json.loads(json.dumps(value))
