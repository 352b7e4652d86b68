"""The README's Python snippet runs as written, with the reference weights for Matterport's."""
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def code_block(heading, first_line="    "):
    """The first indented code block of the README section `## heading` that starts with a line
    beginning with `first_line` (e.g. "    import "), dedented."""
    section = (ROOT / "README.md").read_text().split(f"\n## {heading}\n", 1)[1]
    lines = section.split("\n## ", 1)[0].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_line))
    end = next((i for i in range(start, len(lines))
                if lines[i] and not lines[i].startswith("    ")), len(lines))
    return textwrap.dedent("\n".join(lines[start:end]))


# Matterport's files have no MaskIoU head, which the model says.
@pytest.mark.filterwarnings("ignore::mrcnn.weights.MaskIoUHeadNotInFileWarning")
def test_detection_snippet_runs_as_written(reference_weights, monkeypatch):
    code = code_block("Detection from Python")
    assert code.count('"mask_rcnn_coco.h5"') == 1
    monkeypatch.chdir(ROOT)  # the snippet reads samples/ from the project root
    namespace = {}
    exec(compile(code.replace('"mask_rcnn_coco.h5"', repr(str(reference_weights))),
                 "README.md", "exec"), namespace)
    r = namespace["r"]
    count = len(r["class_ids"])
    assert count > 0
    assert r["rois"].shape == (count, 4) and r["rois"].dtype == np.int32
    assert r["class_ids"].dtype == np.int32 and set(r["class_ids"]) <= {1, 2, 3}
    assert r["scores"].shape == r["mask_scores"].shape == (count,)
    height, width = namespace["load_image"](ROOT / "samples" / "astronaut.jpg").shape[:2]
    assert r["masks"].shape == (height, width, count) and r["masks"].dtype == np.bool_
