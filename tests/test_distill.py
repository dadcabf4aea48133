import copy
import dataclasses
import json

import pytest
import torch

from dashlib.artifacts import load_artifact
from dashlib.config import ConfigError, DistillConfig, override
from dashlib.data import load_dataset
from dashlib.diffusion import Diffusion
from dashlib.distill import METHODS, distill, distill_run, resolve_config
from dashlib.distill.methods import single_head_config
from dashlib.distill.pruning import emptied, emptied_note, magnitude_prune
from dashlib.io import load_checkpoint
from dashlib.presets import check, get_preset
from dashlib.teacher import train_teacher
from dashlib.tirt import make_weighting
from dashlib.train import Batch
from dashlib.unet import UNet, count_params, param_count

EXPECTED = {"scratch", "cond-only", "composite", "multi-w-composite", "fitnets", "gap-match",
            "pruning", "single-head", "dash"}


def test_every_paper_method_is_registered():
    assert set(METHODS.names()) == EXPECTED


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_every_method_runs_two_steps_on_tiny(tiny, method):
    run = distill(tiny, method, steps=2, progress=False)
    results = run.read_results()
    assert results["method"] == method and results["steps"] == 2
    for key in ("rho", "cos", "gap_mse", "params", "wall_time_s", "final_losses", "calibration"):
        assert key in results
    student = load_artifact(run).model
    assert student.config.cfg == (method != "single-head")


def _batch(tiny, n=8):
    data = load_dataset(tiny.data).train
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(data), (n,), generator=g)
    return Batch(data.x[idx], data.y[idx], torch.randint(0, tiny.diffusion.T, (n,), generator=g),
                 torch.randn(data.x[idx].shape, generator=g), torch.rand(n, 4, generator=g),
                 torch.rand(4, generator=g))


@pytest.mark.parametrize("method, config", [
    ("cond-only", {}), ("composite", {}), ("multi-w-composite", {}), ("gap-match", {}),
    ("dash", {"an": 0.0}), ("cond-only", {"null_rows": True, "label_dropout": 0.5}),
])
def test_loss_is_zero_when_the_student_is_the_teacher(tiny, tiny_model, method, config):
    diffusion = Diffusion(tiny.diffusion)
    cfg = dataclasses.replace(resolve_config(tiny, method), **config)
    weighting = make_weighting("tirt", diffusion)
    objective = METHODS.get(method).from_config(copy.deepcopy(tiny_model), tiny_model, weighting,
                                                diffusion, cfg, tiny.sample)
    loss, terms = objective.loss(_batch(tiny))
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-10)
    # ... and a perturbed student has a positive loss (the test can fail)
    with torch.no_grad():
        for p in objective.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert float(objective.loss(_batch(tiny))[0].detach()) > 1e-6


def test_dash_anchor_is_the_data_term(tiny, tiny_model):
    diffusion = Diffusion(tiny.diffusion)
    cfg = dataclasses.replace(resolve_config(tiny, "dash"), im=0.0, un=0.0, an=1.0)
    objective = METHODS.get("dash").from_config(copy.deepcopy(tiny_model), tiny_model,
                                                make_weighting("uniform", diffusion), diffusion, cfg,
                                                tiny.sample)
    batch = _batch(tiny)
    x_t = diffusion.q_sample(batch.x0, batch.t, batch.eps)
    with torch.no_grad():
        expected = (tiny_model(x_t, batch.t, batch.y) - batch.eps).pow(2).mean()
        loss, _ = objective.loss(batch)
    torch.testing.assert_close(loss, expected)


def test_dash_with_no_terms_is_refused(tiny):
    silent = override(tiny, **{"distill.method": "scratch", "distill.im": 0.0, "distill.un": 0.0,
                               "distill.an": 0.0})
    with pytest.raises(ConfigError, match="no loss"):
        resolve_config(silent, "dash")
    with pytest.raises(ConfigError, match="no loss"):
        check(override(silent, **{"distill.method": "dash"}))


def test_transferred_tirt_stays_frozen_through_distillation(tiny):
    teacher = load_artifact(train_teacher(tiny, progress=False))
    assert teacher.weighting.table.abs().max() > 0  # learned, so equality below means something
    run = distill(tiny, "dash", steps=6, progress=False)
    assert run.read_results()["tirt"] == "transfer"
    assert run.read_results()["tirt_drift"] is None  # a frozen copy learns nothing to report
    for path in (run.final, run.checkpoint):
        table = load_checkpoint(path)["weighting" if path == run.final else "objective"]
        key = "table" if path == run.final else "weighting.table"
        assert torch.equal(table[key], teacher.weighting.table)


def test_relearned_tirt_moves(tiny):
    tiny = override(tiny, **{"distill.tirt": "relearn"})
    run = distill(tiny, "dash", steps=6, progress=False)
    table = load_checkpoint(run.final)["weighting"]["table"]
    assert table.abs().max() > 0 and run.read_results()["tirt_drift"] is not None


def test_tirt_modes_say_which_students_learn_a_table_of_their_own(tiny):
    """`distill.tirt` is one registry (TIRT_MODES): the student's weighting follows from the
    teacher's, and a run hashes as learning a table only where one is learned: `relearn`
    of a teacher whose weighting learns nothing (min-snr, uniform) has no table to decay."""
    from dashlib.config import TIRT_CHOICES
    from dashlib.distill.run import TIRT_MODES, distill_payload, learns_table, student_weighting

    assert set(TIRT_CHOICES) == {"auto", *TIRT_MODES.names()}
    expect = {  # (tirt, teacher's weighting): (student's weighting, learns a table)
        ("transfer", "tirt"): ("tirt", False), ("transfer", None): ("uniform", False),
        ("uniform", "tirt"): ("uniform", False), ("relearn", "tirt"): ("tirt", True),
        ("relearn", "min-snr"): ("min-snr", False), ("relearn", "uniform"): ("uniform", False),
        ("relearn", "uncertainty"): ("uncertainty", True), ("relearn", None): ("uniform", False),
        ("min-snr", "tirt"): ("min-snr", False), ("uncertainty", "uniform"): ("uncertainty", True)}
    for (tirt, teacher), (name, learns) in expect.items():
        config = override(tiny, **{"distill.tirt": tirt}).distill
        assert (student_weighting(config, teacher), learns_table(config, teacher)) == (name, learns)
    for teacher, learns in (("tirt", True), ("min-snr", False), ("uniform", False)):
        preset = override(tiny, **{"distill.tirt": "relearn", "train.weighting": teacher})
        payload = distill_payload(preset, resolve_config(preset, "dash"))
        assert ("table_weight_decay" in payload) == learns


@pytest.mark.parametrize("tirt", ["relearn", "uncertainty", "transfer"])
def test_a_learned_weighting_table_gets_no_weight_decay(tiny, tiny_model, tirt):
    """docs/choices.md: the teacher's TIRT table has no weight decay; a student's relearned
    (lambda_t) or uncertainty (u_t) table neither, and the network keeps its decay."""
    from dashlib.distill.methods import DASH
    from dashlib.distill.run import make_weighting_for
    from dashlib.teacher import TeacherObjective

    diffusion = Diffusion(tiny.diffusion)
    teacher = load_artifact(train_teacher(tiny, progress=False))
    config = override(tiny, **{"distill.tirt": tirt}).distill
    weighting = make_weighting_for(config, teacher, diffusion)
    objective = DASH(copy.deepcopy(tiny_model), teacher.model, weighting, diffusion)
    groups = objective.param_groups(1e-3, 0.5)
    table = [p for p in weighting.parameters() if p.requires_grad]
    assert [p for p in groups[0]["params"]] == [p for p in objective.model.parameters()]
    assert groups[0]["weight_decay"] == 0.5
    if tirt == "transfer":
        assert not table and len(groups) == 1
    else:
        assert len(groups) == 2 and groups[1]["params"] == table and groups[1]["weight_decay"] == 0.0
    learned = make_weighting("tirt", diffusion)
    mine = TeacherObjective(copy.deepcopy(tiny_model), learned, diffusion,
                            override(tiny, **{"train.tirt_lr": 0.25}).train)
    groups = mine.param_groups(1e-3, 0.5)
    assert groups[1] == {"params": list(learned.parameters()), "lr": 0.25, "weight_decay": 0.0}
    assert groups[0]["params"] == list(mine.model.parameters())


def test_cond_only_never_trains_the_null_row(tiny):
    run = distill(tiny, "cond-only", steps=8, progress=False)
    cfg = resolve_config(tiny, "cond-only")
    from dashlib.unet import build_unet

    init = build_unet(dataclasses.replace(tiny.student, null_init=cfg.null_init), cfg.seed)
    trained = load_artifact(run).model
    null = tiny.student.num_classes
    # only AdamW's decoupled weight decay touches it: (1 - lr * wd)^steps ~ 1
    torch.testing.assert_close(trained.label_emb.weight[null], init.label_emb.weight[null],
                               rtol=1e-3, atol=1e-5)
    assert not torch.allclose(trained.label_emb.weight[0], init.label_emb.weight[0])


def test_pruning_keeps_the_paper_share_and_stays_sparse(tiny):
    run = distill(tiny, "pruning", steps=5, progress=False)
    results = run.read_results()
    teacher_params = results["teacher_params"]
    share = results["params"] / teacher_params
    assert abs(share - 8.95 / 35.75) < 0.01 and results["params_counted"] == "nonzero"
    model = load_artifact(run).model
    assert count_params(model, nonzero=True) == results["params"]


def test_a_pruned_away_output_layer_is_reported_and_gives_rho_zero(tiny, capsys):
    # the tiny teacher trains 20 steps: its zero-initialised output convolution has barely
    # left 0, so one global magnitude threshold removes all of it
    run = distill(tiny, "pruning", steps=2, progress=False)
    results = run.read_results()
    assert "conv_out.weight" in results["emptied_layers"]
    model = load_artifact(run).model
    assert not model.conv_out.weight.any()
    assert results["rho"] == 0.0  # a constant output has no guidance gap
    # the note is printed when the student is built (a rerun reuses the run: force it)
    distill(tiny, "pruning", steps=2, progress=False, force=True)
    err = capsys.readouterr().err
    assert "dash: note: pruning[tiny]" in err and "conv_out.weight" in err and "rho 0" in err


def test_emptied_names_only_layers_with_no_weight_left(tiny_model):
    model = copy.deepcopy(tiny_model)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
             if n.endswith("conv_in.weight") or n.endswith("conv_out.weight")}
    assert emptied(masks) == [] and emptied_note([]) == ""
    masks["conv_out.weight"][:] = False
    masks["conv_in.weight"].view(-1)[1:] = False  # one weight left: not emptied
    assert emptied(masks) == ["conv_out.weight"]
    assert "rho 0" in emptied_note(["conv_out.weight"])
    assert "rho 0" not in emptied_note(["down.0.blocks.0.conv2.weight"])


def test_magnitude_prune_removes_the_smallest_weights(tiny_model):
    model = copy.deepcopy(tiny_model)
    before = {n: p.clone() for n, p in model.named_parameters()}
    masks = magnitude_prune(model, 0.5)
    assert abs(count_params(model, nonzero=True) / count_params(model) - 0.5) < 0.01
    kept = torch.cat([before[n][m].abs() for n, m in masks.items()])
    dropped = torch.cat([before[n][~m].abs() for n, m in masks.items()])
    assert kept.min() >= dropped.max()


def test_single_head_student_is_sized_like_the_paper(tiny):

    # the nearest width in steps of 2: digits 20 (0.269; 18 gives 0.218), cifar 78 (0.2525)
    for name, tolerance in (("digits", 0.02), ("cifar10", 0.002)):
        preset = get_preset(name)
        cfg = single_head_config(preset, 8.99 / 35.75)
        share = count_params(UNet(cfg)) / count_params(UNet(preset.teacher))
        assert not cfg.cfg and abs(share - 8.99 / 35.75) < tolerance
        assert cfg.ch % cfg.norm_groups == 0


def test_single_head_groups_keep_the_shared_divisor_and_else_the_nearest_one():
    from dashlib.distill.methods import single_head_groups

    assert single_head_groups(20, 8) == 4          # gcd, as before (digits' single-head run)
    assert single_head_groups(76, 32) == 4
    assert single_head_groups(78, 32) == 26        # gcd 2: nearest divisor of 78 to 32
    assert single_head_groups(18, 8) == 9
    assert single_head_groups(6, 1) == 1


def test_run_folder_depends_on_method_seed_and_config(tiny):
    a, b = distill_run(tiny, "dash"), distill_run(tiny, "dash", seed=1)
    c = distill_run(override(tiny, **{"distill.null_init": "zero"}), "dash")
    assert len({a.path, b.path, c.path}) == 3 and "distill-dash-" in a.path.name


def test_calibration_is_logged_next_to_the_loss(tiny):
    tiny = override(tiny, **{"distill.calib_every": 2, "distill.log_every": 1})
    run = distill(tiny, "composite", steps=4, progress=False)
    records = [json.loads(line) for line in run.log.read_text().splitlines()]
    with_calib = [r for r in records if "rho" in r]
    assert [r["step"] for r in with_calib] == [2, 4]
    assert all("loss" in r and "cos" in r and "gap_mse" in r for r in with_calib)


def test_unknown_method_lists_the_choices(tiny):
    from dashlib.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="choose one of:.*dash"):
        distill(tiny, "kd", progress=False)


@pytest.mark.parametrize("method, null_rows", [("dash", False), ("cond-only", False),
                                               ("cond-only", True), ("single-head", False)])
def test_precomputed_teacher_targets_change_nothing(tiny, method, null_rows, monkeypatch, tmp_path):
    """Offline teacher outputs give the same student as running the teacher each step
    (with null rows, those rows read the cached unconditional branch)."""
    from dashlib.distill.targets import targets_path
    from dashlib.presets import override

    # label dropout 0.5 so the 6 steps surely contain null rows
    tiny = override(tiny, **{"distill.null_rows": null_rows, "distill.label_dropout": 0.5})
    runs = {}
    for use in (True, False):
        monkeypatch.setenv("DASH_RUNS", str(tmp_path / str(use)))
        runs[use] = distill(tiny, method, steps=6, progress=False, targets=use)
        config = resolve_config(tiny, method, steps=6)
        assert targets_path(tiny, config).is_file() == use
    a, b = (load_checkpoint(runs[u].final)["model"] for u in (True, False))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_targets_replay_the_trainers_batches(tiny):
    """The table's entry for step k is the teacher on exactly the batch step k trains on,
    bit for bit."""
    from dashlib.batches import BatchStream
    from dashlib.distill.targets import compute_targets, load_targets
    from dashlib.guidance import branches

    teacher = load_artifact(train_teacher(tiny, progress=False))
    config = resolve_config(tiny, "dash", steps=3)
    data = load_dataset(tiny.data)
    table = load_targets(compute_targets(tiny, config, teacher.model, data.train, teacher.diffusion,
                                         progress=False))
    stream = BatchStream(data.train, teacher.diffusion, config.batch_size,
                         torch.Generator().manual_seed(config.seed),
                         torch.Generator().manual_seed(config.seed + 1))
    for step in range(3):
        batch = Batch(*stream.next(), step=step)
        x_t = teacher.diffusion.q_sample(batch.x0, batch.t, batch.eps)
        with torch.no_grad():
            cond, uncond = branches(teacher.model, x_t, batch.t, batch.y)
        half = batch.rows(slice(8, 16))  # a later rank's rows map to the same entries
        assert torch.equal(table.branches(half)[0], cond[8:16])
        assert torch.equal(table.branches(batch)[1], uncond)


def test_fitnets_adapters_depend_on_the_seed_not_on_the_global_rng(tiny, tiny_model):
    # the global RNG's seed differs between processes; the adapters must not follow it
    diffusion = Diffusion(tiny.diffusion)
    cls = METHODS.get("fitnets")

    def adapters(seed, global_seed):
        torch.manual_seed(global_seed)
        cfg = dataclasses.replace(resolve_config(tiny, "fitnets"), seed=seed)
        objective = cls.from_config(copy.deepcopy(tiny_model), tiny_model,
                                    make_weighting("uniform", diffusion), diffusion, cfg, tiny.sample)
        return torch.cat([p.detach().flatten() for p in objective.adapters.parameters()])

    assert torch.equal(adapters(0, 1), adapters(0, 2))
    assert not torch.equal(adapters(0, 1), adapters(1, 1))


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_a_methods_row_counts_are_the_rows_its_loss_runs(tiny, tiny_model, method):
    cls = METHODS.get(method)
    diffusion = Diffusion(tiny.diffusion)
    cfg = resolve_config(tiny, method)
    student = cls.build_student(tiny, cfg, tiny_model)
    objective = cls.from_config(student, tiny_model, make_weighting("uniform", diffusion), diffusion,
                                cfg, tiny.sample)  # no precomputed targets: the teacher runs
    rows = {"student": 0, "teacher": 0}

    def counter(role):
        def count(module, args):
            rows[role] += args[0].shape[0]
        return count

    student.conv_in.register_forward_pre_hook(counter("student"))
    tiny_model.conv_in.register_forward_pre_hook(counter("teacher"))
    batch = _batch(tiny)
    objective.loss(batch)
    assert rows == {"student": cls.student_rows * len(batch.y), "teacher": cls.teacher_rows * len(batch.y)}


def test_parallel_jobs_start_with_the_costliest(tiny):
    from dashlib.distill.run import job_cost, longest_first

    jobs = [(tiny, m, None, None) for m in ("dash", "single-head", "pruning", "cond-only")]
    order = [m for _, m, _, _ in longest_first(jobs)]
    assert order[0] == "pruning"  # the pruned student is teacher-sized
    assert order.index("dash") < order.index("cond-only")  # two student rows per sample, not one
    single, cond = (job_cost((tiny, m, None, None)) for m in ("single-head", "cond-only"))
    wide = single_head_config(tiny, resolve_config(tiny, "single-head").single_head_fraction)
    assert single / cond == pytest.approx(param_count(wide) / param_count(tiny.student))  # its own width
    scratch = [m for _, m, _, _ in longest_first([(tiny, m, None, None) for m in ("scratch", "cond-only")])]
    assert scratch == ["scratch", "cond-only"]  # equal cost: submission order kept
    twice = override(tiny, **{"distill.steps": 2 * tiny.distill.steps})
    assert job_cost((twice, "dash", None, None)) == 2 * job_cost((tiny, "dash", None, None))
    state = torch.random.get_rng_state()
    job_cost((tiny, "dash", None, None))
    assert torch.equal(torch.random.get_rng_state(), state)  # costing draws no random numbers


def test_a_parallel_pool_trains_what_one_process_trains(tiny, tmp_path, monkeypatch):
    """The pool computes the shared teacher targets as one of its jobs, beside the students
    that read none; the students come out as they do trained one after another."""
    from dashlib.distill.run import missing_targets, run_jobs

    jobs = [(tiny, m, None, 3) for m in ("dash", "scratch", "cond-only")]
    weights = {}
    for workers in (2, 1):
        monkeypatch.setenv("DASH_RUNS", str(tmp_path / f"runs{workers}"))
        train_teacher(tiny, progress=False)
        assert len(missing_targets(jobs)) == 1  # dash and cond-only read one table
        runs = run_jobs(jobs, workers=workers, device="cpu", progress=False)
        assert not missing_targets(jobs)
        weights[workers] = [load_artifact(r).model.state_dict() for r in runs]
    assert len(weights[2]) == len(weights[1]) == len(jobs)
    for parallel, serial in zip(weights[2], weights[1]):
        assert all(torch.equal(parallel[k], serial[k]) for k in serial)


def test_a_job_trains_alike_alone_or_in_a_pool(tiny, tmp_path, monkeypatch):
    """With workers > 1 a job trains in a one-thread worker even when it is the only one
    left (a rerun after an interruption, a pool whose other runs are done): a job's bits
    must not depend on which other runs were already trained, and a thread count changes
    the floating-point rounding of a run."""
    from dashlib.distill.run import run_jobs

    job, other = (tiny, "dash", None, 20), (tiny, "scratch", None, 20)
    weights = []
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # this process's threads: what a lone job ran on before
    try:
        for name, jobs in (("alone", [job]), ("pool", [job, other])):
            monkeypatch.setenv("DASH_RUNS", str(tmp_path / name))
            train_teacher(tiny, progress=False)
            weights.append(load_artifact(run_jobs(jobs, workers=2, device="cpu", progress=False)[0])
                           .model.state_dict())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_one_pool_for_the_ablation_and_the_widths_trains_each_run_once(tiny):
    from dashlib import pipeline

    b = pipeline.budget("tiny", workers=1, device="cpu", threads=1)
    twice = pipeline._distill_jobs(b, [("a", b.preset, "scratch"), ("b", b.preset, "cond-only"),
                                       ("c", b.preset, "scratch")], progress=False)
    assert twice["a"].path == twice["c"].path != twice["b"].path
    variants, widths = pipeline.ablation_and_width_runs(b, progress=False)
    assert widths[f"ch{tiny.student.ch}"].path == variants["+TIRT (DASH)"].path  # asked for twice
    assert all(r.finished for r in [*variants.values(), *widths.values()])
    paths = {name: r.path for name, r in {**variants, **widths}.items()}
    alone = {**pipeline.ablation_runs(b, progress=False), **pipeline.width_runs(b, progress=False)}
    assert paths == {name: r.path for name, r in alone.items()}  # the same runs, reused


def test_the_teacher_targets_follow_the_teachers_weights_not_only_its_run(tiny):
    from dashlib.distill.targets import targets_path

    run = train_teacher(tiny, progress=False)
    config = resolve_config(tiny, "dash", None, 2)
    before = targets_path(tiny, config)
    ckpt = load_checkpoint(run.final)  # a retrained teacher: same run folder, other weights
    ckpt["model"]["conv_in.weight"] += 1e-3
    torch.save(ckpt, run.final)
    assert targets_path(tiny, config) != before


def test_a_student_of_a_retrained_teacher_is_reused_with_a_note(tiny, capsys):
    run = distill(tiny, "dash", steps=2, progress=False)
    assert run.read_results()["teacher_weights"]
    mtime = run.final.stat().st_mtime_ns
    teacher = train_teacher(tiny, progress=False)
    ckpt = load_checkpoint(teacher.final)  # as a retrain with --force would leave it
    ckpt["model"]["conv_in.weight"] += 1e-3
    torch.save(ckpt, teacher.final)
    capsys.readouterr()
    assert distill(tiny, "dash", steps=2, progress=False) == run and run.final.stat().st_mtime_ns == mtime
    assert "was distilled from other teacher weights" in capsys.readouterr().err


def test_every_methods_defaults_are_distillconfigs_defaults():
    """A method built by hand (`DASH(student, teacher, ...)`) gets the knobs a preset's run
    would: its `defaults` repeat DistillConfig's, so the two must not drift apart."""
    base = dataclasses.asdict(DistillConfig())
    for name in METHODS.names():
        for knob, value in METHODS.get(name).defaults.items():
            if knob in base:
                assert value == base[knob], (name, knob)


#: sha256 of every (preset, method, distill.tirt, train.weighting) -> run folder name below, at
#: 4e0f032. A run's folder is its identity: finished runs are reused by it and checkpoints
#: resumed, so a change that moves it retrains everything. Update only for a deliberate change,
#: and say so in the commit (4e0f032's: ModelConfig.emb_silu, ADM's SiLU on the embedding, moved
#: every folder on purpose, so that no run of the linear layout is reused; 19619aa's before it).
RUN_NAMES_DIGEST = "681c1b19d4685d53be8fc60a1ff6418bb40fd4c2bf9fdcf9d34bc846927baf9e"


def test_run_folder_names_do_not_move_by_accident():
    import hashlib

    from dashlib.config import TIRT_CHOICES
    from dashlib.tirt import WEIGHTINGS

    lines = []
    for preset in ("tiny", "digits"):
        for method in METHODS.names():
            for tirt in TIRT_CHOICES:
                for weighting in WEIGHTINGS.names():
                    p = override(get_preset(preset), **{"distill.tirt": tirt, "train.weighting": weighting})
                    lines.append(f"{preset} {method} {tirt} {weighting} {distill_run(p, method).path.name}")
    assert len(lines) == 432
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == RUN_NAMES_DIGEST


def test_every_methods_default_tirt_is_a_mode_and_auto_resolves_anywhere():
    from dashlib.distill.run import TIRT_MODES, distill_payload, learns_table, student_weighting

    for name in METHODS.names():
        assert METHODS.get(name).default_tirt in TIRT_MODES, name
    auto = DistillConfig(method="dash")  # tirt="auto": DASH's TIRT Transfer
    assert (student_weighting(auto, "tirt"), learns_table(auto, "tirt")) == ("tirt", False)
    assert "table_weight_decay" not in distill_payload(get_preset("tiny"), auto)
