import math

import pytest
import torch

from dashlib.classifier import load_classifier, train_classifier
from dashlib.fidelity import (
    METRIC_KEYS,
    ClassifierFeatures,
    ImageSet,
    fidelity_metrics,
    from_uint8,
    make_extractor,
    reference_set,
    write_image_folder,
)
from dashlib.inception import InceptionWeightsError, inception_url, inception_weights_path


@pytest.fixture
def tiny_space(tiny):
    clf = train_classifier(tiny.data, tiny.eval, device="cpu", progress=False)
    return clf, make_extractor("classifier", clf), reference_set(tiny.data)


def _noisy(images, sigma, seed=0):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images.float() + sigma * noise).clamp(0, 255).round().to(torch.uint8)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(tiny_space):
    _, extractor, ref = tiny_space
    same = fidelity_metrics(ref.images, ref, extractor)
    assert abs(same["fid"]) < 1e-3
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    fids = [fidelity_metrics(_noisy(ref.images, s), ref, extractor)["fid"] for s in (8, 24, 64, 128)]
    assert fids[0] > same["fid"]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_metrics_have_every_key_and_finite_values(tiny_space):
    _, extractor, ref = tiny_space
    metrics = fidelity_metrics(_noisy(ref.images[:40], 30), ref, extractor)
    assert set(metrics) == set(METRIC_KEYS)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert 1.0 <= metrics["isc_mean"] <= 4.0 + 1e-6  # IS is bounded by the 4 synthetic classes


def test_reference_statistics_are_cached_once(tiny_space, tmp_path):
    _, extractor, ref = tiny_space
    cache = tmp_path / "cache"
    fidelity_metrics(ref.images[:20], ref, extractor, cache_root=cache)
    files = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(files) == 1 and all(ref.name in f and extractor.cache_id in f for f in files)
    fidelity_metrics(ref.images[20:40], ref, extractor, cache_root=cache)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == files  # read, not rewritten


def test_extractor_reads_one_channel_back_from_three(tiny_space):
    clf, _, ref = tiny_space
    images = ref.images[:6]
    batch = torch.stack([ImageSet(images)[i] for i in range(6)])
    assert batch.shape == (6, 3, 8, 8)
    fe = ClassifierFeatures("dash-classifier", ["features", "logits"], str(clf.final))
    features, logits = fe(batch)
    want_features, want_logits = load_classifier(clf)(from_uint8(images))
    torch.testing.assert_close(features, want_features)
    torch.testing.assert_close(logits, want_logits)


def test_too_few_samples_is_a_clear_error(tiny_space):
    from dashlib.config import ConfigError

    _, extractor, ref = tiny_space
    with pytest.raises(ConfigError, match="too few"):
        fidelity_metrics(ref.images[:3], ref, extractor)


def test_image_folder_is_a_torch_fidelity_input(tiny_space, tmp_path):
    import torch_fidelity

    clf, extractor, ref = tiny_space
    folder = write_image_folder(ref.images[:12], tmp_path / "pngs")
    assert len(list(folder.glob("*.png"))) == 12
    from_disk = torch_fidelity.calculate_metrics(
        input1=str(folder), input2=ImageSet(ref.images[:12]), fid=True, cuda=False, verbose=False,
        feature_extractor=extractor.name, feature_extractor_weights_path=extractor.weights,
        save_cpu_ram=True, cache=False)
    assert abs(from_disk["frechet_inception_distance"]) < 1e-3  # PNGs are lossless


def test_missing_inception_weights_give_one_clear_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(InceptionWeightsError) as err:
        inception_weights_path(None, download=False)
    msg = str(err.value)
    assert inception_url() in msg and "--inception-weights" in msg and str(tmp_path) in msg
    with pytest.raises(InceptionWeightsError, match="does not exist"):
        inception_weights_path(str(tmp_path / "nope.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(10, 4)}, wrong)
    with pytest.raises(InceptionWeightsError, match="not torch-fidelity's Inception-v3"):
        inception_weights_path(str(wrong))
