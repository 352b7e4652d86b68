"""Access to the Keras reference cases in tests/data/reference (see its README)."""
import json
from pathlib import Path

import numpy as np

from convert_weights.synthetic import write_synthetic_weights

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"
PUBLIC_CASE = REFERENCE / "public_r50_256"


class ReferenceCase:
    """One case folder: config, input images, outputs.npz and the recipe of its weights."""

    def __init__(self, name):
        self.name = name
        self.folder = REFERENCE / name
        self.info = json.loads((self.folder / "run_info.json").read_text())
        self.config_path = self.folder / "config.json"
        self.outputs = dict(np.load(self.folder / "outputs.npz"))

    def images(self):
        import cv2
        return [cv2.cvtColor(cv2.imread(str(self.folder / entry["file"])), cv2.COLOR_BGR2RGB)
                for entry in self.info["images"]]

    def weights(self, cache_dir):
        """The case's .h5, regenerated with convert_weights.synthetic once per cache directory.

        Safe under pytest-xdist: workers that miss the file at the same time each write their own
        temporary file and rename it into place; the files are identical."""
        path = Path(cache_dir) / f"{self.name}_seed{self.info['seed']}.h5"
        if not path.exists():
            write_synthetic_weights(Path(self.info["manifest"]).stem, self.info["seed"], path)
        return path
