"""benchmarks/train_shapes.py: its smoke preset runs every step on the CPU (the dataset, train.py
and eval.py as subprocesses, the throughput runs, the tables), so the GPU benchmark does not rot
between the runs on a GPU."""
import math

import pytest
import torch

from benchmarks import train_shapes
from benchmarks.common import RESULTS


def test_smoke_run_goes_through_every_step(tmp_path, capsys):
    recorded = RESULTS.read_text()
    result, speeds = train_shapes.main(["--smoke", "--quiet", "--data", str(tmp_path / "data"),
                                        "--out", str(tmp_path / "out")])
    preset = train_shapes.PRESETS["smoke"]
    assert result["steps"] == preset["epochs"] * preset["steps_per_epoch"]
    assert result["images"] == preset["val_images"]
    for key in ("box", "box50", "mask_cls", "mask50_cls", "mask_maskiou", "mask50_maskiou"):
        assert 0 <= result[key] <= 100, key
    assert result["gain"] == result["mask_maskiou"] - result["mask_cls"]
    assert [(size, batch) for size, batch, _, _ in speeds] == list(
        preset["throughput"]["sizes"].items())
    for _, batch, seconds, rate in speeds:
        assert seconds > 0 and math.isclose(rate, batch / seconds)
    # Both evaluations ranked the masks as asked, on the same detections.
    for score in ("cls", "maskiou"):
        assert (tmp_path / "out" / f"eval_{score}" / "segm_results.json").exists()
    printed = capsys.readouterr().out
    assert "| smoke | 64 px | 1 | 2 |" in printed
    assert "| 64 px | resnet50 | 1 | no |" in printed and "| 128 px | resnet50 | 1 | no |" in printed
    assert RESULTS.read_text() == recorded  # smoke numbers are never recorded


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_preset_says_it_needs_a_gpu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_shapes.main([])
    assert exit_info.value.code == 2
    assert "trains for minutes on a CUDA GPU, and none is available" in capsys.readouterr().err
