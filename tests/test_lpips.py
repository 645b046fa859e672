"""LPIPS without torchvision: the unavailable path, weight-file layouts, and the distance itself."""

import pytest
import torch
import torch.nn.functional as F

from dynavatar.metrics import lpips as L


def _write_random_weights(alex_file, lin_file, seed=0):
    """Random weights in torchvision's alexnet and lpips' v0.1/alex.pth layouts."""
    torch.manual_seed(seed)
    feats = L.alexnet_features()
    state = {f"features.{k}": v.clone() for k, v in feats.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4, 4)  # the real file has a classifier: ignored
    torch.save(state, alex_file)
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(L.TAP_CHANNELS)}
    torch.save(lins, lin_file)
    return state, lins


def test_unavailable_names_missing_trunk(torch_hub):
    result = L.load_lpips()
    assert isinstance(result, L.Unavailable)
    assert "alexnet-owt-7be5be79.pth" in result.reason and str(torch_hub) in result.reason
    result = L.load_lpips(alexnet_path=torch_hub / "nope.pth")
    assert isinstance(result, L.Unavailable) and "nope.pth" in result.reason


def test_unavailable_names_missing_heads(torch_hub, tmp_path, monkeypatch):
    _write_random_weights(torch_hub / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth")
    monkeypatch.setattr(L, "default_lin_path", lambda: None)
    result = L.load_lpips()
    assert isinstance(result, L.Unavailable)
    assert "alex.pth" in result.reason and "pip install lpips" in result.reason
    result = L.load_lpips(lin_path=tmp_path / "missing_alex.pth")
    assert isinstance(result, L.Unavailable) and "missing_alex.pth" in result.reason
    assert isinstance(L.lpips_metric(result, torch.zeros(8, 8, 3), torch.zeros(8, 8, 3)), L.Unavailable)


def test_wrong_layout_is_unavailable(torch_hub, tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 11, 11)}, torch_hub / "alexnet-owt-7be5be79.pth")
    torch.save({}, tmp_path / "alex.pth")
    result = L.load_lpips(lin_path=tmp_path / "alex.pth")
    assert isinstance(result, L.Unavailable) and "could not be loaded" in result.reason
    _write_random_weights(torch_hub / "alexnet-owt-7be5be79.pth", tmp_path / "ok.pth")
    result = L.load_lpips(lin_path=tmp_path / "alex.pth")
    assert isinstance(result, L.Unavailable) and "lin0.model.1.weight" in result.reason


def test_loads_both_layouts_and_measures(torch_hub, tmp_path):
    state, lins = _write_random_weights(torch_hub / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth")
    model = L.load_lpips(lin_path=tmp_path / "alex.pth")
    assert isinstance(model, L.LPIPS)
    loaded = model.state_dict()
    for k, v in state.items():
        if k.startswith("features."):
            assert torch.equal(loaded[k], v)
    for k, v in lins.items():
        assert torch.equal(loaded[k], v)

    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 64, 72, 3, generator=g)
    b = torch.rand(2, 64, 72, 3, generator=g)
    same = model(a, a)
    assert same.shape == (2,) and torch.equal(same, torch.zeros(2))
    diff = model(a, b)
    assert (diff > 0).all()
    assert model(a[0], b[0]).shape == ()
    assert torch.allclose(model(a[0], b[0]), diff[0], rtol=1e-5, atol=1e-7)
    # Differences only where the mask excludes them do not count.
    mask = torch.zeros(64, 72)
    c = a.clone()
    c[:, mask == 0] = b[:, mask == 0]
    assert torch.equal(L.lpips_metric(model, a, c, mask), torch.zeros(2))


def test_matches_step_by_step_formula(torch_hub, tmp_path):
    state, lins = _write_random_weights(torch_hub / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth")
    model = L.load_lpips(lin_path=tmp_path / "alex.pth")
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 80, 64, 3, generator=g), torch.rand(1, 80, 64, 3, generator=g)

    def taps(img):
        x = img.permute(0, 3, 1, 2) * 2 - 1
        x = (x - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        w = lambda i: (state[f"features.{i}.weight"], state[f"features.{i}.bias"])  # noqa: E731
        out = []
        x = F.relu(F.conv2d(x, *w(0), stride=4, padding=2)); out.append(x)
        x = F.relu(F.conv2d(F.max_pool2d(x, 3, 2), *w(3), padding=2)); out.append(x)
        x = F.relu(F.conv2d(F.max_pool2d(x, 3, 2), *w(6), padding=1)); out.append(x)
        x = F.relu(F.conv2d(x, *w(8), padding=1)); out.append(x)
        x = F.relu(F.conv2d(x, *w(10), padding=1)); out.append(x)
        return out

    expected = 0.0
    for k, (fa, fb) in enumerate(zip(taps(a), taps(b))):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        expected = expected + (F.conv2d((na - nb) ** 2, lins[f"lin{k}.model.1.weight"])).mean()
    assert model(a, b).item() == pytest.approx(float(expected), rel=1e-5)


def test_heads_found_in_installed_lpips_without_importing_it(torch_hub, tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "lpips"
    (pkg / "weights" / "v0.1").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('lpips must not be imported')\n")
    _write_random_weights(torch_hub / "alexnet-owt-7be5be79.pth", pkg / "weights" / "v0.1" / "alex.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert L.default_lin_path() == pkg / "weights" / "v0.1" / "alex.pth"
    assert isinstance(L.load_lpips(), L.LPIPS)
