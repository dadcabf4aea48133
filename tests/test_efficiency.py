import dataclasses
import json
from pathlib import Path

import pytest
import torch

from dashlib.cli import main
from dashlib.diffusion import Diffusion
from dashlib.efficiency import efficiency, forward_flops, sampling_flops
from dashlib.presets import get_preset
from dashlib.unet import build_unet


def test_sampling_flops_are_steps_times_one_cfg_forward(tiny):
    diffusion = Diffusion(tiny.diffusion)
    for cfg in (tiny.teacher, tiny.student):
        model = build_unet(cfg, 0)
        for steps in (1, 7):
            config = dataclasses.replace(tiny.sample, steps=steps)
            total = sampling_flops(model, diffusion, config, batch=6)
            assert total == pytest.approx(steps * forward_flops(model, batch=6), rel=1e-9)


def test_cfg_costs_two_rows_and_single_head_one(tiny):
    cfg_model = build_unet(tiny.teacher, 0)
    single_head = build_unet(dataclasses.replace(tiny.teacher, cfg=False), 0)
    cfg_flops = forward_flops(cfg_model, batch=5)
    assert cfg_flops == pytest.approx(2 * forward_flops(single_head, batch=5), rel=1e-9)
    assert cfg_flops == pytest.approx(forward_flops(single_head, batch=10), rel=1e-9)


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_student_flops_below_teacher(name):
    preset = get_preset(name)
    teacher, student = build_unet(preset.teacher, 0), build_unet(preset.student, 0)
    assert forward_flops(student, 1) < forward_flops(teacher, 1) / 4


def test_cifar_flops_per_sample_match_the_papers_table():
    # docs/paper.md: 50-step CFG sampling costs 1247.8G (teacher) and 216.3G (student) FLOPs per image.
    preset = get_preset("cifar10")
    for cfg, paper in ((preset.teacher, 1247.8e9), (preset.student, 216.3e9)):
        assert 50 * forward_flops(build_unet(cfg, 0), batch=1) == pytest.approx(paper, rel=0.01)


def test_efficiency_reports_every_number(tiny):
    result = efficiency(tiny, build_unet(tiny.teacher, 0), build_unet(tiny.student, 0), torch.device("cpu"),
                        steps=3, batch=4, repeats=1)
    for side in ("teacher", "student"):
        r = result[side]
        assert r["latency_s"] > 0 and r["flops"] == pytest.approx(3 * r["flops_per_step"])
        assert r["flops_per_sample"] == pytest.approx(r["flops"] / 4) and r["rows_per_step"] == 8  # CFG
        assert 0 < r["params_nonzero"] <= r["params"]  # zero-initialised output layers count out
        assert r["peak_memory_method"].startswith(("cpu_peak_rss_growth", "unavailable"))
        if r["peak_memory_method"] == "cpu_peak_rss_growth":
            memory = r["peak_memory_bytes"]
            assert isinstance(memory, int) and not isinstance(memory, bool) and memory >= 0
    teacher, student = result["teacher"], result["student"]
    assert result["flops_ratio"] > 1 and result["param_ratio"] > 1
    assert result["flops_ratio"] == pytest.approx(teacher["flops"] / student["flops"])
    assert result["param_ratio"] == pytest.approx(teacher["params"] / student["params"])
    assert result["speedup"] == pytest.approx(teacher["latency_s"] / student["latency_s"])
    assert result["speedup_over_flops_ratio"] == pytest.approx(result["speedup"] / result["flops_ratio"])
    if "memory_ratio" in result:
        memory = teacher["peak_memory_bytes"] / student["peak_memory_bytes"]
        assert result["memory_ratio"] == pytest.approx(memory)


def test_dash_efficiency_writes_json(tiny, capsys):
    assert main(["efficiency", "--preset", "tiny", "--steps", "2", "--batch", "4", "--repeats", "0",
                 "--device", "cpu"]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    data = json.loads(path.read_text())
    assert data["flops_ratio"] > 1 and "latency_s" not in data["teacher"]
    assert data["student"]["source"].startswith("preset architecture")
    with pytest.raises(SystemExit) as usage:  # argparse's usage error (cliargs.count_arg)
        main(["efficiency", "--preset", "tiny", "--batch", "0"])
    assert usage.value.code == 2
    # a measurement with other sampler settings (one branch at w = 1) gets its own folder
    assert main(["efficiency", "--preset", "tiny", "--steps", "2", "--batch", "4", "--repeats", "0",
                 "--device", "cpu", "--set", "sample.guidance=constant", "--set", "sample.w=1"]) == 0
    other = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert other != path and path.is_file()


def test_latency_samples_the_way_dash_sample_does(tiny):
    """`dash efficiency` times the model prepared by the runtime's rules (here: frozen or not)."""
    from dashlib.efficiency import latencies
    from dashlib.runtime import _FROZEN, Runtime

    diffusion, config = Diffusion(tiny.diffusion), dataclasses.replace(tiny.sample, steps=2)
    for freeze, frozen in (("on", True), ("off", False)):
        model = build_unet(tiny.student, 0)
        times = latencies(model, diffusion, config, 3, torch.device("cpu"), 1, Runtime(freeze=freeze))
        assert len(times) == 1 and times[0] > 0
        assert (model in _FROZEN) is frozen


def test_table_4_leaves_what_was_not_measured_empty_not_zero(tmp_path):
    import json as json_module

    from eval_fakes import fake_run

    from dashlib import paper, pipeline
    from dashlib.artifacts import load_artifact

    b = pipeline.budget("tiny", threads=1, overrides={"efficiency_repeats": 0, "efficiency_steps": 2,
                                                       "efficiency_batch": 2})
    teacher = load_artifact(fake_run(b.preset))
    student = load_artifact(fake_run(b.preset, kind="student", method="dash"))
    paper.t4_efficiency(b, teacher, student, tmp_path)
    import csv

    rows = list(csv.DictReader((tmp_path / "T4_efficiency.csv").open()))
    assert [(r["peak memory (MB)"], r["speedup"]) for r in rows] == [("", ""), ("", "")], rows
    assert "latency not measured" in json_module.loads((tmp_path / "T4_efficiency.json").read_text())["title"]
