import dataclasses
import os
import time

import pytest
import torch

from dashlib.classifier import Classifier, load_classifier, random_shift, train_classifier
from dashlib.config import ConfigError
from dashlib.data import load_dataset, to_uint8
from dashlib.evaluate import guidance_fidelity
from dashlib.presets import get_preset


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    """The digits preset's classifier, trained once for this module (its own runs/ folder)."""
    old = os.environ.get("DASH_RUNS")
    os.environ["DASH_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    try:
        preset = get_preset("digits")
        start = time.perf_counter()
        run = train_classifier(preset.data, preset.eval, device="cpu", progress=False)
        return run, time.perf_counter() - start, preset
    finally:
        if old is None:
            del os.environ["DASH_RUNS"]
        else:
            os.environ["DASH_RUNS"] = old


def test_digits_classifier_reaches_95_percent_quickly(digits_classifier):
    run, seconds, _ = digits_classifier
    results = run.read_results()
    assert results["test_accuracy"] >= 0.95, results
    assert results["n_test"] == 359 and results["dataset"] == "digits"
    assert seconds < 45, f"training took {seconds:.0f} s"


def test_trained_classifier_is_reused_not_retrained(digits_classifier, monkeypatch):
    run, _, preset = digits_classifier
    monkeypatch.setenv("DASH_RUNS", str(run.path.parent.parent))
    before = run.final.stat().st_mtime_ns
    assert train_classifier(preset.data, preset.eval, device="cpu", progress=False) == run
    assert run.final.stat().st_mtime_ns == before
    # a device that does not exist is refused even where the classifier would be reused
    with pytest.raises(ConfigError, match="device 'bogus' is not a device name"):
        train_classifier(preset.data, preset.eval, device="bogus", progress=False)


def test_guidance_fidelity_of_a_perfect_sampler_is_about_one(digits_classifier):
    run, _, preset = digits_classifier
    test = load_dataset(preset.data).test
    model = load_classifier(run)
    perfect = guidance_fidelity(model, to_uint8(test.x), test.y, 10)
    assert perfect["accuracy"] >= 0.95
    assert min(perfect["accuracy_per_class"]) >= 0.85
    wrong = guidance_fidelity(model, to_uint8(test.x), (test.y + 1) % 10, 10)  # asks for another class
    assert wrong["accuracy"] <= 0.05
    # generate()'s float samples in [-1, 1] used to score chance (0.1) silently
    with pytest.raises(ValueError, match="to_uint8"):
        guidance_fidelity(model, test.x.float(), test.y, 10)
    with pytest.raises(ValueError, match="one label per image"):
        guidance_fidelity(model, to_uint8(test.x), test.y[:-1], 10)


def test_classifier_shapes_follow_the_image_size():
    for size, channels in ((8, 1), (16, 1), (32, 3)):
        model = Classifier(channels, size, 7, width=4).eval()
        features, logits = model(torch.zeros(2, channels, size, size))
        assert features.shape == (2, 16) and logits.shape == (2, 7)


def test_random_shift_moves_pixels_but_keeps_shape():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    shifted = [random_shift(x, g) for _ in range(8)]
    assert all(s.shape == x.shape for s in shifted)
    assert any(not torch.equal(s, x) for s in shifted)
    assert torch.equal(random_shift(x, g, max_shift=0), x)


def test_the_classifier_stops_widening_at_the_cap_and_reads_older_files(tmp_path):
    from dashlib.classifier import MAX_WIDTH_FACTOR, capped, stage_widths

    assert stage_widths(8, 32) == [32, 64] and stage_widths(32, 32) == [32, 64, 128, 256]
    assert max(stage_widths(256, 32)) == MAX_WIDTH_FACTOR * 32 and len(stage_widths(256, 32)) == 7
    assert not capped(32, 32) and capped(64, 32)
    big = Classifier(3, 128, 5)
    assert sum(p.numel() for p in big.parameters()) < 5_000_000  # 19M without the cap
    features, logits = big(torch.zeros(2, 3, 128, 128))
    assert features.shape == (2, 128) and logits.shape == (2, 5)
    # a file written before the cap (no max_width_factor in its spec) loads uncapped
    old = Classifier(1, 64, 3, width=4, max_width_factor=None)
    spec = {k: v for k, v in old.spec().items() if k != "max_width_factor"}
    torch.save({"kind": "classifier", "spec": spec, "model": old.state_dict()}, tmp_path / "old.pt")
    loaded = load_classifier(tmp_path / "old.pt")
    assert loaded.max_width_factor is None
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    assert torch.equal(loaded(x)[1], old.eval()(x)[1])


def test_classifier_runs_of_images_the_cap_does_not_touch_keep_their_identity():
    from dashlib.classifier import classifier_payload

    p = get_preset("digits")
    assert "max_width_factor" not in classifier_payload(p.data, p.eval)
    big = dataclasses.replace(p.data, image_size=64)
    assert classifier_payload(big, p.eval)["max_width_factor"] == 8


def test_a_classifier_naming_one_class_for_everything_is_judged_at_chance_on_an_imbalanced_split():
    """200:2 test images: plain accuracy 0.98 hid a constant classifier from the warning."""
    from dashlib.adequacy import warning
    from dashlib.classifier import accuracy, balanced_accuracy, predict
    from dashlib.data import Split

    class Constant(Classifier):
        def forward(self, x):
            logits = torch.zeros(len(x), 2)
            logits[:, 0] = 1.0
            return logits, logits

    model = Constant(1, 8, 2, 4)
    split = Split(torch.zeros(202, 1, 8, 8), torch.tensor([0] * 200 + [1] * 2))
    predicted = predict(model, split.x)
    assert accuracy(predicted, split.y) == pytest.approx(200 / 202)
    assert balanced_accuracy(predicted, split.y) == pytest.approx(0.5)
    assert warning(balanced_accuracy(predicted, split.y)) is not None


def test_evaluations_judge_by_the_lower_of_plain_and_balanced_accuracy(digits_classifier):
    run, _, _ = digits_classifier
    results = run.read_results()
    assert 0.9 < results["balanced_test_accuracy"] <= 1
    from dashlib.evaluate import Space

    described = Space(classifier=run, extractors=(), reference="", real={}).describe()
    assert described["test_accuracy"] == min(results["test_accuracy"], results["balanced_test_accuracy"])
