"""VGG16 perceptual loss: weight-file layout, the missing-weights error, and the loss itself."""

import pytest
import torch

from dynavatar.errors import ConfigError
from dynavatar.losses import vgg as V


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """Random conv weights up to conv4_3 in torchvision's `features.N.*` layout, plus later keys."""
    torch.manual_seed(0)
    feats = V.vgg16_features_to_relu4_3()
    state = {f"features.{k}": v.clone() for k, v in feats.state_dict().items()}
    state["features.24.weight"] = torch.zeros(2, 2)  # layers past relu4_3 and the classifier: ignored
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path_factory.mktemp("vgg") / V.VGG16_FILE
    torch.save(state, path)
    return path, state


def test_missing_weights_say_how_to_supply_them(torch_hub):
    with pytest.raises(ConfigError) as err:
        V.load_vgg_perceptual()
    msg = str(err.value)
    assert V.VGG16_FILE in msg and str(torch_hub) in msg
    assert "loss.vgg_weights_path" in msg and "loss.vgg_feature_weight = 0" in msg
    with pytest.raises(ConfigError, match="nowhere.pth"):
        V.load_vgg_perceptual("nowhere.pth")


def test_wrong_layout_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(ConfigError, match="features.0.weight"):
        V.load_vgg_perceptual(bad)


def test_architecture_blocks():
    feats = V.vgg16_features_to_relu4_3()
    assert len(feats) == 23 and isinstance(feats[22], torch.nn.ReLU)
    assert feats[21].out_channels == 512 and feats[0].in_channels == 3
    assert [type(feats[i - 1]).__name__ for i in V.BLOCK_ENDS] == ["ReLU"] * 4


def test_loads_from_hub_and_path(torch_hub, random_weights):
    path, state = random_weights
    (torch_hub / V.VGG16_FILE).write_bytes(path.read_bytes())
    for model in (V.load_vgg_perceptual(), V.load_vgg_perceptual(path)):
        loaded = model.features.state_dict()
        assert len(loaded) == 20  # 10 convs up to conv4_3
        for k, v in loaded.items():
            assert torch.equal(v, state[f"features.{k}"])
        assert all(not p.requires_grad for p in model.parameters())


def test_loss_values_and_gradient(random_weights):
    model = V.load_vgg_perceptual(random_weights[0])
    g = torch.Generator().manual_seed(3)
    gt = torch.rand(2, 40, 30, 3, generator=g)
    pred = torch.rand(2, 40, 30, 3, generator=g).requires_grad_(True)
    assert model(gt, gt).item() == 0.0
    loss = model(pred, gt)
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    model.train()
    assert not model.training  # frozen extractor stays in eval mode
