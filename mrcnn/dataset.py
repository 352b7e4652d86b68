"""The dataset interface of training and evaluation: Matterport's `utils.Dataset` bookkeeping.

A dataset that the training loop and the evaluation read provides

    image_ids                 [N] int array, the image indices 0..N-1
    num_classes, class_names  the classes, background (index 0) included
    load_image(image_id)      [H, W, 3] uint8 RGB
    load_mask(image_id)       ([H, W, K] bool masks, [K] int32 class ids; negative = crowd)
    image_reference(image_id) a string that names the image in messages

`Dataset` here is Matterport's base class with exactly its bookkeeping (add_class, add_image,
prepare, the source maps). Subclass `mrcnn.utils.Dataset` (which also reads image files) as for
Matterport: override `load_mask`, and `load_image` or `image_reference` when needed. The core
never decodes files, so `Dataset.load_image` here only says so.
"""
import numpy as np


class Dataset:
    """Matterport's `utils.Dataset`: classes and images from one or more sources.

    Classes are added per source (`add_class("balloon", 1, "balloon")`), images with a path and
    any extra fields (`add_image("balloon", image_id="a.jpg", path=..., polygons=...)`); after
    `prepare()` the classes have contiguous ids (0 = background "BG") and the images the ids
    0..N-1 of `image_ids`.
    """

    def __init__(self, class_map=None):
        self._image_ids = []
        self.image_info = []
        self.class_info = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids = {}

    def add_class(self, source, class_id, class_name):
        """Adds class `class_id` of `source`; adding the same (source, id) again does nothing."""
        if "." in source:
            raise ValueError(f"a source name cannot contain a dot, got {source!r} (prepare() "
                             "joins source and id with one)")
        if any(info["source"] == source and info["id"] == class_id for info in self.class_info):
            return
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source, image_id, path, **kwargs):
        """Adds an image: its source, its id in that source, its path and any other fields
        (stored in image_info, e.g. the annotations load_mask reads)."""
        info = {"id": image_id, "source": source, "path": path}
        info.update(kwargs)
        self.image_info.append(info)

    def image_reference(self, image_id):
        """A link or other text that helps to find the image; override for your dataset."""
        return ""

    def prepare(self, class_map=None):
        """Builds the class and image ids from the added classes and images (call it after the
        last add_class/add_image). `class_map` is accepted and unused, as in Matterport."""
        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        # Matterport keeps the part of a name before the first comma.
        self.class_names = [info["name"].split(",")[0] for info in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)
        self.class_from_source_map = {f"{info['source']}.{info['id']}": class_id
                                      for class_id, info in enumerate(self.class_info)}
        self.image_from_source_map = {f"{info['source']}.{info['id']}": image_id
                                      for image_id, info in enumerate(self.image_info)}
        self.sources = list({info["source"] for info in self.class_info})
        # Every source's class list starts with the background.
        self.source_class_ids = {
            source: [class_id for class_id, info in enumerate(self.class_info)
                     if class_id == 0 or info["source"] == source]
            for source in self.sources}

    def map_source_class_id(self, source_class_id):
        """The class id of "source.id", e.g. map_source_class_id("coco.12") -> 23."""
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id, source):
        """The id in `source` of class `class_id`."""
        info = self.class_info[class_id]
        if info["source"] != source:
            raise ValueError(f"class {class_id} comes from source {info['source']!r}, not "
                             f"{source!r}")
        return info["id"]

    def append_data(self, class_info, image_info):
        """Matterport's unfinished cross-dataset helper, with its behaviour: builds
        external_to_class_id from each class's "map" list of (dataset, id) pairs and
        external_to_image_id from each image's "ds" and "id"; the arguments are unused."""
        self.external_to_class_id = {f"{dataset}{external_id}": class_id
                                     for class_id, info in enumerate(self.class_info)
                                     for dataset, external_id in info["map"]}
        self.external_to_image_id = {f"{info['ds']}{info['id']}": image_id
                                     for image_id, info in enumerate(self.image_info)}

    @property
    def image_ids(self):
        return self._image_ids

    def source_image_link(self, image_id):
        """The path or URL of the image; override to link to it online."""
        return self.image_info[image_id]["path"]

    def load_image(self, image_id):
        """[H, W, 3] uint8 RGB. This base class reads no files: subclass mrcnn.utils.Dataset
        (which decodes image_info[image_id]["path"]) or override load_image."""
        raise NotImplementedError(
            f"{type(self).__name__} reads no image files: derive it from mrcnn.utils.Dataset, "
            "which decodes image_info[image_id]['path'], or override load_image")

    def load_mask(self, image_id):
        """(masks [H, W, K] bool, class_ids [K] int32) of the image's instances. Override it;
        the default is no instance at all (an empty [0, 0, 0] mask), as in Matterport."""
        return np.empty([0, 0, 0]), np.empty([0], np.int32)


def active_class_ids(dataset, image_id):
    """[num_classes] int32: 1 for the classes of the image's source (Matterport's
    active_class_ids, so the class loss ignores classes another source annotates), all ones for
    datasets without sources."""
    active = np.zeros(dataset.num_classes, dtype=np.int32)
    source_class_ids = getattr(dataset, "source_class_ids", None)
    if isinstance(dataset, Dataset) and source_class_ids:
        active[source_class_ids[dataset.image_info[image_id]["source"]]] = 1
    else:
        active[:] = 1
    return active


def image_source(dataset, image_id):
    """The source of an image of a Matterport Dataset ("balloon", "coco", ...), else None."""
    if isinstance(dataset, Dataset):
        return dataset.image_info[image_id]["source"]
    return None

