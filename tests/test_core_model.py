"""Tests of the conditioned UNet, the loss, sampling and the sampler folder."""

from __future__ import annotations

import json

import pytest
import torch

from medi_core.artifact import MediSampler
from medi_core.config import DiffusionConfig, ModelConfig, model_preset
from medi_core.diffusion import GaussianDiffusion
from medi_core.errors import ConfigError, MetadataError, SamplerLoadError
from medi_core.metadata import CategoricalField, ContinuousField, MetadataSpec
from medi_core.model import build_model

SPEC = MetadataSpec(
    (CategoricalField("class", ("stromal", "tumor")), CategoricalField("site", ("A7", "A8", "AC"))),
    (ContinuousField("age", 20.0, 90.0),),
)
STEPS = 4  # sampler steps: enough to exercise the loop, cheap on CPU


@pytest.fixture(scope="module")
def sampler() -> MediSampler:
    torch.manual_seed(0)
    model = build_model(model_preset("tiny"), SPEC)
    # A freshly initialised UNet zeroes its output conv, which hides the conditioning; randomise it.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return MediSampler(model, DiffusionConfig(), {"sites": ["A7", "A8", "AC"]})


def _generate(sampler, conditions, seeds, **kw):
    kw.setdefault("num_steps", STEPS)
    return sampler.generate(conditions, seeds, progress=False, **kw)


def test_site_changes_output_for_same_seed_and_class(sampler):
    images = _generate(sampler, [{"class": "tumor", "site": "A7"}, {"class": "tumor", "site": "AC"}], [3, 3])
    assert (images[0] - images[1]).abs().mean() > 1e-3


def test_same_condition_and_seed_is_reproducible(sampler):
    a = _generate(sampler, [{"class": "tumor", "site": "A7"}], [5])
    b = _generate(sampler, [{"class": "tumor", "site": "A7"}], [5])
    assert torch.equal(a, b)


def test_guidance_zero_and_three_differ(sampler):
    cond = [{"class": "tumor", "site": "A8"}]
    a = _generate(sampler, cond, [1], guidance_scale=0.0)
    b = _generate(sampler, cond, [1], guidance_scale=3.0)
    assert (a - b).abs().mean() > 1e-3


def test_bf16_sampling_close_and_reproducible(sampler):
    cond = [{"class": "tumor", "site": "A7"}, {"class": "stromal", "site": "AC"}]
    full = _generate(sampler, cond, [2, 3])
    half = _generate(sampler, cond, [2, 3], precision="bf16")
    again = _generate(sampler, cond, [2, 3], precision="bf16")
    assert torch.equal(half, again)
    assert half.dtype == torch.float32
    other_seeds = _generate(sampler, cond, [4, 5])
    # This randomised, untrained network amplifies rounding (0.045 mean against 0.79 between seeds).
    difference = (half - full).abs().mean()
    assert difference > 0
    assert difference < 0.2 * (other_seeds - full).abs().mean()


def test_unknown_sampling_precision_rejected(sampler):
    with pytest.raises(ConfigError, match="sampling precision must be one of"):
        _generate(sampler, [{"class": "tumor"}], [0], precision="fp16")


def test_output_shape_and_range(sampler):
    images = _generate(sampler, [{"class": "stromal"}] * 3, [0, 1, 2], batch_size=2)
    assert images.shape == (3, 3, 32, 32)
    assert images.min() >= -1.0
    assert images.max() <= 1.0


def test_dpmsolver_runs(sampler):
    images = _generate(sampler, [{"class": "tumor", "site": "A7", "age": 60}], [0], scheduler="dpmsolver++")
    assert torch.isfinite(images).all()


def test_unspecified_fields_allowed(sampler):
    images = _generate(sampler, [{}], [0])
    assert images.shape == (1, 3, 32, 32)


def test_save_load_bit_identical_samples(sampler, tmp_path):
    cond = [{"class": "tumor", "site": "AC"}, {"class": "stromal", "site": "A7", "age": 40}]
    before = _generate(sampler, cond, [11, 12], guidance_scale=1.5)
    sampler.save_pretrained(tmp_path / "s")
    loaded = MediSampler.from_pretrained(tmp_path / "s")
    after = _generate(loaded, cond, [11, 12], guidance_scale=1.5)
    assert torch.equal(before, after)


def test_saved_folder_has_model_card(sampler, tmp_path):
    sampler.save_pretrained(tmp_path / "s")
    card = (tmp_path / "s" / "README.md").read_text()
    assert "`site` (categorical, 3 values): A7, A8, AC" in card


def test_load_missing_weights_names_file(sampler, tmp_path):
    sampler.save_pretrained(tmp_path / "s")
    (tmp_path / "s" / "model.safetensors").unlink()
    with pytest.raises(SamplerLoadError, match=r"model\.safetensors is missing"):
        MediSampler.from_pretrained(tmp_path / "s")


def test_load_missing_config_names_file(sampler, tmp_path):
    sampler.save_pretrained(tmp_path / "s")
    (tmp_path / "s" / "config.json").unlink()
    with pytest.raises(SamplerLoadError, match=r"config\.json is missing"):
        MediSampler.from_pretrained(tmp_path / "s")


def test_load_mismatching_vocabulary_names_tensor(sampler, tmp_path):
    sampler.save_pretrained(tmp_path / "s")
    config_path = tmp_path / "s" / "config.json"
    config = json.loads(config_path.read_text())
    config["metadata"]["categorical"][1]["values"].append("ZZ")  # one more site than the weights hold
    config_path.write_text(json.dumps(config))
    with pytest.raises(SamplerLoadError, match=r"encoder\.categorical\.site\.weight has shape"):
        MediSampler.from_pretrained(tmp_path / "s")


def test_load_corrupt_weights_names_file(sampler, tmp_path):
    sampler.save_pretrained(tmp_path / "s")
    (tmp_path / "s" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SamplerLoadError, match=r"model\.safetensors cannot be read"):
        MediSampler.from_pretrained(tmp_path / "s")


def test_generate_rejects_unknown_field(sampler):
    with pytest.raises(MetadataError, match="unknown metadata fields"):
        _generate(sampler, [{"class": "tumor", "scanner": "x"}], [0])


def test_per_sample_loss_shape():
    model = build_model(model_preset("tiny"), SPEC)
    diffusion = GaussianDiffusion(DiffusionConfig())
    x0 = torch.rand(5, 3, 32, 32) * 2 - 1
    cond = SPEC.encode([{"class": "tumor", "site": "A7"}] * 5)
    assert diffusion.per_sample_loss(model, x0, cond).shape == (5,)


def test_v_prediction_target_hand_computed():
    diffusion = GaussianDiffusion(DiffusionConfig(prediction_type="v_prediction"))
    x0, noise, t = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.tensor([0])
    # t = 0: alpha_bar = 1 - beta_start = 0.9999, so v = -sqrt(1 - 0.9999) * x0 = -0.01
    assert diffusion.target(x0, noise, t)[0, 0, 0, 0].item() == pytest.approx(-0.01, rel=1e-3)


def test_concat_conditioning_builds_and_runs():
    config = model_preset("tiny")
    config.conditioning = "concat"
    model = build_model(config, SPEC)
    out = model(torch.zeros(2, 3, 32, 32), torch.tensor([1, 2]), SPEC.encode([{"class": "tumor"}] * 2))
    assert out.shape == (2, 3, 32, 32)


def test_medi_paper_preset_parameter_count():
    with torch.device("meta"):
        model = build_model(model_preset("medi-paper"), SPEC)
    # 415.0 M for the reference channels; the metadata tables add a few thousand.
    assert model.num_parameters() == pytest.approx(415.0e6, rel=1e-3)


def test_preset_unknown_name():
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        model_preset("huge")


def test_model_config_rejects_mismatched_levels():
    with pytest.raises(ConfigError, match="must have the same length"):
        ModelConfig(block_out_channels=[32, 64])


def test_build_model_with_weights_matches_source():
    source = build_model(model_preset("tiny"), SPEC)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    rebuilt = build_model(model_preset("tiny"), SPEC, weights=state)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 500])
    cond = SPEC.encode([{"class": "tumor", "site": "A7"}] * 2)
    assert torch.equal(source(x, t, cond), rebuilt(x, t, cond))
