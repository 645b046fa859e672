"""Tile intersections without waiting: the same sorted entries and offsets as gsplat's, a capacity the
host chooses and the device checks, and training that skips a step whose intersections did not fit.

The CPU tests compare `intersect_tiles` with a plain loop written after gsplat's kernel (Gaussian by
Gaussian, tile rows then columns, a stable sort of the keys). The GPU tests (marked `gpu`) compare
gsplat's own rasterization with the one drawn from these intersections, image and gradients, and
check that after the first step nothing in the rendering waits for the device.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynavatar.render import tile_intersections
from dynavatar.render.tile_intersections import IntersectionBudget, intersect_tiles, tile_rectangles
from dynavatar.train.guard import NonFiniteGuard


def reference(means2d, radii, depths, tile_size, tile_width, tile_height):
    """gsplat's intersections by loops: sorted keys [n], flatten ids [n], offsets [I, th, tw]."""
    n_images, n = depths.shape
    tile_bits = int(math.floor(math.log2(tile_width * tile_height))) + 1
    entries = []
    for flat in range(n_images * n):
        i, g = divmod(flat, n)
        rx, ry = (int(r) for r in radii[i, g])
        if rx <= 0 or ry <= 0:
            continue
        size = np.float32(tile_size)  # float32 arithmetic, as the kernel's
        x, y = (np.float32(v) / size for v in means2d[i, g].tolist())
        lo_x, hi_x = int(np.floor(x - np.float32(rx) / size)), int(np.ceil(x + np.float32(rx) / size))
        lo_y, hi_y = int(np.floor(y - np.float32(ry) / size)), int(np.ceil(y + np.float32(ry) / size))
        lo_x, hi_x = min(max(lo_x, 0), tile_width), min(max(hi_x, 0), tile_width)
        lo_y, hi_y = min(max(lo_y, 0), tile_height), min(max(hi_y, 0), tile_height)
        depth_bits = int(np.float32(depths[i, g]).view(np.uint32))
        for row in range(lo_y, hi_y):
            for col in range(lo_x, hi_x):
                key = (i << (32 + tile_bits)) | ((row * tile_width + col) << 32) | depth_bits
                entries.append((key, flat))
    entries.sort(key=lambda e: e[0])  # stable: equal keys keep the order written
    keys = [k for k, _ in entries]
    offsets = np.zeros(n_images * tile_width * tile_height, dtype=np.int64)
    for cell in range(offsets.size):
        i, t = divmod(cell, tile_width * tile_height)
        first = (i << (32 + tile_bits)) | (t << 32)
        offsets[cell] = int(np.searchsorted(np.array(keys, dtype=np.int64), first)) if keys else 0
    return keys, [f for _, f in entries], offsets.reshape(n_images, tile_height, tile_width)


def random_projection(n_images=3, n=60, width=80, height=56, seed=0):
    """Projected Gaussians as gsplat's projection leaves them: some not drawn, some beyond the image,
    equal depths (the sort must keep their order), integer radii per axis."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([float(width), float(height)])
    means2d = torch.rand(n_images, n, 2, generator=gen) * 1.6 * size - 0.3 * size
    means2d[0, :4] = torch.tensor([[16.0, 16.0], [32.0, 15.999], [0.0, 0.0], [79.5, 55.5]])  # on tile edges
    radii = torch.randint(0, 30, (n_images, n, 2), generator=gen, dtype=torch.int32)
    radii[:, ::7, 1] = 0  # not drawn
    depths = torch.rand(n_images, n, generator=gen) * 4 + 1
    depths[1, 10:20] = 2.5  # ties
    return means2d, radii, depths


@pytest.mark.parametrize("extra", [0, 1, 777])
def test_intersections_are_gsplats_in_gsplats_order(extra):
    means2d, radii, depths = random_projection()
    tw, th = math.ceil(80 / 16), math.ceil(56 / 16)
    keys, ids, offsets = reference(means2d, radii, depths, 16, tw, th)
    assert len(keys) > 200
    found = intersect_tiles(means2d, radii, depths, 16, tw, th, capacity=len(keys) + extra)
    assert int(found.count) == len(keys)
    assert found.flatten_ids.dtype == torch.int32 and found.offsets.dtype == torch.int32
    assert found.flatten_ids.shape == (len(keys) + extra,)
    # The unused entries come first; the rest are gsplat's, and the offsets gsplat's moved past them.
    assert found.flatten_ids[extra:].tolist() == ids
    assert torch.equal(found.offsets.long(), torch.from_numpy(offsets) + extra)
    assert int(found.offsets.min()) == extra


def run(fused: bool) -> list:
    """Intersections of a random projection (with NaN means and huge radii) as lists, by either form."""
    means2d, radii, depths = random_projection(n_images=2, n=90, seed=4)
    means2d[1, 5] = float("nan")
    radii[1, 6] = 100000
    found = intersect_tiles(means2d, radii, depths, 16, 5, 4, capacity=lambda count: int(count) + 37, fused=fused)
    return [found.offsets.tolist(), found.flatten_ids.tolist(), int(found.count)]


# Runs in a fresh interpreter: Triton reads TRITON_INTERPRET when the kernels are defined.
INTERPRETED = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_tile_intersections import run
print(json.dumps(run(True)))
"""


@pytest.mark.skipif(tile_intersections.triton is None, reason="Triton is not installed (its CPU interpreter runs the "
                                                              "kernels here)")
def test_the_interpreted_kernels_make_the_same_intersections():
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(repo / "code"), *sys.path]))
    done = subprocess.run([sys.executable, "-c", INTERPRETED, str(Path(__file__).parent)], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    fused = json.loads(done.stdout.strip().splitlines()[-1])
    assert fused == run(False) and fused[2] > 100


def test_a_capacity_from_a_function_of_the_count_and_an_overflow_seen_on_the_device():
    means2d, radii, depths = random_projection(seed=1)
    tw, th = 5, 4
    keys, _, _ = reference(means2d, radii, depths, 16, tw, th)
    seen = []
    found = intersect_tiles(means2d, radii, depths, 16, tw, th, capacity=lambda count: seen.append(int(count)) or 64)
    assert seen == [len(keys)] and found.flatten_ids.numel() == 64 and int(found.count) > 64
    budget = IntersectionBudget(margin=1.5, smallest=16)
    budget.reset()
    budget.record(found.count, depths.numel(), 64)
    assert not bool(budget.complete)
    budget.record(torch.tensor(10), depths.numel(), 64)
    assert not bool(budget.complete)  # one incomplete rendering makes the step incomplete
    assert budget.take_incomplete() == 1 and budget.take_incomplete() == 0


def test_the_budget_follows_the_latest_count_with_its_margin():
    budget = IntersectionBudget(margin=1.5, smallest=16)
    first = budget.capacity(torch.tensor(1000), 100)  # the first call reads the count
    assert 1500 <= first < 1500 * 1.13
    budget.record(torch.tensor(4000), 100, first)
    grown = budget.capacity(torch.tensor(0), 100)  # the count given now is not read again
    assert 6000 <= grown < 6000 * 1.13
    budget.record(torch.tensor(300), 100, grown)  # the Gaussians shrank: so does the buffer
    assert budget.capacity(torch.tensor(0), 200) == budget.capacity(torch.tensor(0), 200) >= 900
    assert budget.capacity(torch.tensor(0), 200) < 1000
    assert budget.capacity(torch.tensor(0), 1) == 16  # never below the smallest


def test_rectangles_of_gaussians_beyond_the_image_or_not_finite():
    means2d = torch.tensor([[-100.0, -100.0], [1000.0, 10.0], [float("nan"), 8.0], [40.0, 20.0], [40.0, 20.0],
                            [-20.0, 70.0]])
    radii = torch.tensor([[5, 5], [5, 5], [5, 5], [0, 9], [9, 9], [30, 30]], dtype=torch.int32)
    (column, row), (width, height) = (t.unbind(-1) for t in tile_rectangles(means2d, radii, 16, 5, 4))
    # NaN converts to 0 at both ends, as gsplat's conversion to unsigned does; the grid clamps the rest.
    assert (width * height).tolist() == [0, 0, 0, 0, 6, 2]
    assert column.tolist()[4:] == [1, 0] and row.tolist()[4:] == [0, 2]


def test_a_guard_skips_an_incomplete_step_without_calling_it_non_finite():
    layer = torch.nn.Linear(3, 2)
    adam = torch.optim.Adam(layer.parameters(), lr=0.1)
    guard = NonFiniteGuard(3, torch.device("cpu"))
    before = layer.weight.detach().clone()
    loss = layer(torch.ones(4, 3)).square().sum()
    loss.backward()
    stepped = guard.step(loss, [adam], complete=torch.tensor(False))
    assert not bool(stepped) and int(guard.streak) == 0 and int(guard.skipped) == 0
    assert torch.equal(before, layer.weight)
    assert bool(guard.step(loss, [adam], complete=torch.tensor(True))) and not torch.equal(before, layer.weight)


def test_which_steps_draw_without_waiting_and_a_wrong_setting_is_one_error(data_folder, tmp_path):
    from dynavatar.errors import ConfigError
    from dynavatar.train.trainer import Trainer, TrainOptions
    from tiny_experiment import tiny_conf

    def modes(setting):
        trainer = Trainer(tiny_conf(data_folder, tmp_path / setting, f"train.wait_free_intersections={setting}"),
                          TrainOptions(nepoch=1))
        return [trainer.draws_without_wait(frames) for frames in (1, 8)]

    assert modes("auto") == [True, False] and modes("on") == [True, True] and modes("off") == [False, False]
    with pytest.raises(ConfigError, match="wait_free_intersections"):
        modes("sometimes")


# ---- on a GPU, beside gsplat's own rasterization ---------------------------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gsplat_or_skip():
    from dynavatar.render.backends import get_backend, is_installed

    if not is_installed("gsplat"):
        pytest.skip(f"gsplat not installed: {get_backend('gsplat').install_hint}")


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("n,frames", [(400, 8), (20000, 3)])
def test_gsplat_draws_the_same_images_and_gradients_without_waiting(n, frames):
    gsplat_or_skip()
    from dynavatar.render import rasterize_frames
    from dynavatar.render.random_scenes import random_scene

    scenes = [random_scene(n, 128, 96, device="cuda", seed=s) for s in range(frames)]
    weights = torch.rand(frames, 96, 128, 4, device="cuda", generator=torch.Generator("cuda").manual_seed(3))

    def draw(budget):
        leaves = [s.detached_leaves() for s in scenes]
        stacked = [torch.stack([getattr(leaf, name) for leaf in leaves]).detach().requires_grad_(True)
                   for name in ("means", "quats", "scales", "opacities", "colors")]
        cameras = [s.camera for s in scenes]

        def go():
            return rasterize_frames(*stacked, cameras, scenes[0].background, backend="gsplat", depth=True)
        out = go() if budget is None else _within(budget, go)
        loss = (out.image * weights[..., :3]).sum() + (out.alpha * weights[..., 3]).sum() + 0.01 * out.depth.sum()
        loss.backward()
        return [out.image, out.alpha, out.depth, out.radii, out.means2d.grad] + [t.grad for t in stacked]

    budget = IntersectionBudget()
    waited, again_waited = draw(None), draw(None)
    budget.reset()
    drawn = draw(budget)
    assert bool(budget.complete)
    names = ["image", "alpha", "depth", "radii", "means2d.grad", "means.grad", "quats.grad", "scales.grad",
             "opacities.grad", "colors.grad"]
    for name, a, b, c in zip(names, waited, drawn, again_waited):
        if not name.endswith("grad"):
            assert torch.equal(a, b), (name, float((a.double() - b.double()).abs().max()))  # the same entries, order
        else:  # gsplat adds the gradients up with atomics: as close as two of its own runs
            spread = float((a.double() - c.double()).abs().max())
            assert float((a.double() - b.double()).abs().max()) <= 4 * spread + 1e-6 * float(a.abs().max()), name
    # From the second rendering on nothing waits for the device.
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        budget.reset()
        again = draw(budget)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(budget.complete) and torch.equal(again[0], waited[0])


def _within(budget, fn):
    with budget.use():
        return fn()


@pytest.mark.gpu
@cuda_only
def test_training_skips_a_step_whose_intersections_outgrew_the_buffer(data_folder, tmp_path):
    gsplat_or_skip()
    from dynavatar.train.trainer import Trainer, TrainOptions
    from tiny_experiment import tiny_conf

    trainer = Trainer(tiny_conf(data_folder, tmp_path, "train.device=cuda", "model.rasterizer=gsplat",
                                "train.wait_free_intersections=on"), TrainOptions(nepoch=1))
    batch = trainer.train_data.batch([0, 1, 2]).to(trainer.device)
    assert bool(trainer.train_step(batch, step_inputs=True)["finite"])
    before = {k: v.clone() for k, v in trainer.avatar.state_dict().items()}
    trainer.intersections.margin, trainer.intersections.smallest = 0.01, 1  # far too small a buffer
    assert not bool(trainer.train_step(batch, step_inputs=True)["finite"])
    for key, value in trainer.avatar.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert int(trainer.guard.streak) == 0 and trainer.intersections.take_incomplete() == 1
