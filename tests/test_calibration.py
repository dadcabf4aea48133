import copy
import math

import torch
from torch import nn

from dashlib.calibration import CALIB_BINS, Calibrator, gap_metrics, matched_inputs
from dashlib.data import load_dataset
from dashlib.diffusion import Diffusion


class EqualBranches(nn.Module):
    """A collapsed student: it ignores the label, so both branches coincide."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    @property
    def null_label(self):
        return self.inner.null_label

    def forward(self, x, t, y):
        return self.inner(x, t, torch.zeros_like(y))


def _calibrator(tiny, teacher):
    diffusion = Diffusion(tiny.diffusion)
    data = load_dataset(tiny.data)
    inputs = matched_inputs(data.test, diffusion, 60, torch.Generator().manual_seed(0))
    return Calibrator(teacher, diffusion, inputs, batch_size=16)


def test_teacher_against_itself_is_perfectly_calibrated(tiny, tiny_model):
    m = _calibrator(tiny, tiny_model).score(copy.deepcopy(tiny_model))
    assert abs(m["rho"] - 1) < 1e-6 and abs(m["cos"] - 1) < 1e-5
    assert m["gap_mse"] < 1e-10 and m["cond_mse"] < 1e-10 and m["uncond_mse"] < 1e-10
    assert len(m["per_bin"]["rho"]) == CALIB_BINS


def test_equal_branches_have_rho_zero(tiny, tiny_model):
    calib = _calibrator(tiny, tiny_model)
    collapsed = EqualBranches(copy.deepcopy(tiny_model)).eval()
    m = calib.score(collapsed)
    assert m["rho"] == 0.0 and m["cos"] == 0.0
    assert m["gap_mse"] > 0


def test_scaled_gap_gives_rho_of_the_scale():
    g = torch.Generator().manual_seed(0)
    cond_t, uncond_t = torch.randn(20, 1, 4, 4, generator=g), torch.randn(20, 1, 4, 4, generator=g)
    half = cond_t - 0.5 * (cond_t - uncond_t)
    m = gap_metrics(cond_t, half, cond_t, uncond_t)
    assert abs(m["rho"] - 0.5) < 1e-6 and abs(m["cos"] - 1) < 1e-6 and m["cond_mse"] == 0
    flipped = gap_metrics(uncond_t, cond_t, cond_t, uncond_t)
    assert abs(flipped["rho"] - 1) < 1e-6 and abs(flipped["cos"] + 1) < 1e-6


def test_rho_is_nan_where_the_teacher_has_no_gap():
    """rho divides by E|delta_T|: against a teacher whose branches agree it is undefined (NaN),
    not a ratio of rounding errors, and the reason is named per timestep bin too."""
    from dashlib.calibration import MIN_TEACHER_GAP, rho_undefined

    g = torch.Generator().manual_seed(0)
    cond_s, uncond_s, cond_t = (torch.randn(20, 1, 4, 4, generator=g) for _ in range(3))
    for offset, defined in ((3e-9, False), (10 * MIN_TEACHER_GAP, True)):
        m = gap_metrics(cond_s, uncond_s, cond_t, cond_t + offset)
        assert math.isfinite(m["rho"]) is defined and math.isfinite(m["cos"])
        assert math.isfinite(m["cond_mse"]) and m["teacher_gap_abs"] < 1e-4
    bins = {"per_bin": {"teacher_gap_abs": [0.05, 2e-8, None]}, "teacher_gap_abs": 0.03}
    assert rho_undefined([bins]) is None
    assert "2.0e-08 in a timestep bin" in rho_undefined([bins], per_bin=True)


def test_single_head_student_has_no_gap_metrics(tiny, tiny_model):
    import dataclasses

    from dashlib.unet import UNet

    student = UNet(dataclasses.replace(tiny.student, cfg=False))
    m = _calibrator(tiny, tiny_model).score(student)
    assert math.isnan(m["rho"]) and math.isfinite(m["cond_mse"])


def test_matched_inputs_are_stratified_and_seeded(tiny):
    diffusion = Diffusion(tiny.diffusion)
    data = load_dataset(tiny.data)
    a = matched_inputs(data.test, diffusion, 50, torch.Generator().manual_seed(1))
    b = matched_inputs(data.test, diffusion, 50, torch.Generator().manual_seed(1))
    assert torch.equal(a.t, b.t) and torch.equal(a.eps, b.eps)
    counts = torch.bincount(a.t * 10 // diffusion.T, minlength=10)
    assert counts.tolist() == [5] * 10  # one stratum per 1/50 of T: exactly 5 in each tenth
    c = matched_inputs(data.test, diffusion, 50, torch.Generator().manual_seed(2))
    assert not torch.equal(a.t, c.t) and not torch.equal(a.eps, c.eps)


def test_rho_against_a_teacher_without_a_gap_is_undefined_in_the_tables(tmp_path):
    """A one-step teacher's gap is ~1e-9: rho divided by it read 7,642,160 in T1 and T3."""
    import json

    from dashlib.calibration import MIN_TEACHER_GAP, rho_undefined
    from dashlib.paper import t3_calibration
    from dashlib.pipeline import budget
    from dashlib.runs import Run

    assert rho_undefined([{"teacher_gap_abs": 0.05}, {}]) is None
    why = rho_undefined([{"teacher_gap_abs": 3e-9}, {"teacher_gap_abs": 0.05}])
    assert why is not None and "3.0e-09" in why and f"{MIN_TEACHER_GAP:g}" in why

    def student(name: str, gap: float) -> Run:
        run = Run(tmp_path / "runs" / name)
        run.path.mkdir(parents=True)
        run.results.write_text(json.dumps({
            "params": 100, "rho": 7642160.0, "cos": 0.1, "gap_mse": 0.0, "cond_mse": 0.0, "uncond_mse": 0.0,
            "final_losses": {"loss": 0.1}, "calibration": {"teacher_gap_abs": gap}}))
        return run

    b = budget("tiny", threads=1)
    for gap, shown in ((3e-9, "–"), (0.05, "7642160.0000")):
        folder = tmp_path / f"figs-{gap}"
        md = t3_calibration(b, {"fitnets": student(f"fitnets-{gap}", gap)}, folder).read_text()
        assert f"| fitnets | 100 | {shown} |" in md, md
        index = (folder / "README.md").read_text()
        assert ("rho = E|delta_S| / E|delta_T| is undefined" in index) is (shown == "–")


def test_f2_names_the_bins_where_rho_is_undefined_in_the_figures_index(tmp_path):
    import json

    from dashlib.paper import f2_gap_calibration
    from dashlib.pipeline import budget
    from dashlib.runs import Run

    def student(name: str, bin_gap: float) -> Run:
        run = Run(tmp_path / "runs" / name)
        run.path.mkdir(parents=True)
        per_bin = {"rho": [0.9, None], "cos": [0.8, 0.1], "teacher_gap_abs": [0.05, bin_gap]}
        run.results.write_text(json.dumps({"calibration": {"per_bin": per_bin, "bin_edges": [0, 5, 10],
                                                           "teacher_gap_abs": 0.03}}))
        return run

    b = budget("tiny", threads=1)
    for gap in (3e-9, 0.04):
        folder = tmp_path / f"figs-{gap}"
        f2_gap_calibration(b, {"dash": student(f"dash-{gap}", gap)}, folder)
        index = (folder / "README.md").read_text()
        assert ("is undefined there" in index) is (gap < 1e-6), index
