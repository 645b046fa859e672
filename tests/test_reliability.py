"""Reliability: non-finite steps are never applied or saved, --overwrite and --load_path never mix two
experiments, files are loaded without running code, a save is one commit, and bad input is one
clear line (exit code 2), all on a tiny synthetic subject on the CPU."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dynavatar.cli import check_dataset, exp_runner, export_ply
from dynavatar.errors import CheckpointError, DatasetError, FlameModelError
from dynavatar.evaluate.evaluator import EvalOptions, Evaluator
from dynavatar.experiment import checkpoints as ckpt
from dynavatar.flame import load_flame_model
from dynavatar.flame.model_file import load_landmark_embedding
from dynavatar.model.build import load_avatar
from dynavatar.model.row_sparse_adam import RowSparseAdam
from dynavatar.train.trainer import Trainer, TrainOptions
from tiny_experiment import DEMO, SPLIT, SUBJECT, experiment_root, rewrite_part, tiny_conf, tiny_overrides


def checkpoints_of(exps: Path, method: str = "demo") -> Path:
    return experiment_root(exps, method) / "train" / "checkpoints"


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: ")
    return last


# ---- non-finite losses and gradients -------------------------------------------------------------

def test_a_non_finite_gradient_is_not_applied_and_poisons_no_statistic(data_folder, tmp_path):
    trainer = Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1))
    batch = trainer.train_data.batch([0, 1, 2])
    trainer.train_step(batch, step_inputs=True)  # the optimisers have state now
    before = {k: v.clone() for k, v in trainer.avatar.state_dict().items()}
    inputs_before = {k: v.clone() for k, v in trainer.inputs.state_dict().items()}
    adam_before = [s["step"].clone() for s in trainer.optimizer.state.values()]
    hook = trainer.avatar.points.register_hook(lambda g: g * float("nan"))
    values = trainer.train_step(batch, step_inputs=True)
    hook.remove()
    assert not bool(values["finite"]) and int(trainer.guard.streak) == 1
    for key, value in trainer.avatar.state_dict().items():
        assert torch.equal(value, before[key]), key  # nothing moved, the inputs neither
    for key, value in trainer.inputs.state_dict().items():
        assert torch.equal(value, inputs_before[key]), key
    assert [s["step"] for s in trainer.optimizer.state.values()] == adam_before
    assert bool(trainer.train_step(batch, step_inputs=True)["finite"]) and int(trainer.guard.streak) == 0
    # An epoch with a skipped step: its means are those of the finite steps, and it says how many were skipped.
    calls = {"n": 0}

    def nan_once(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 1 else grad

    hook = trainer.avatar.points.register_hook(nan_once)
    stats = trainer.train_epoch(0)
    hook.remove()
    assert stats["skipped_steps"] == 1
    assert all(np.isfinite(v) for k, v in stats.items() if isinstance(v, float)), stats


def test_row_sparse_adam_updates_as_sparse_adam_does():
    """Three tables of different widths stepped together, rows repeated within a batch: the same
    weights and moments as torch.optim.SparseAdam, with the same state layout."""
    def run(optimizer_type):
        torch.manual_seed(0)
        tables = [torch.nn.Embedding.from_pretrained(torch.randn(6, width), freeze=False, sparse=True)
                  for width in (5, 3, 1)]
        initial = [t.weight.detach().clone() for t in tables]
        optimizer = optimizer_type([t.weight for t in tables], lr=0.05)
        for rows in ([0, 2, 2, 5], [1, 2], [5, 5, 0], [3]):
            optimizer.zero_grad()
            index = torch.tensor(rows)
            sum((t(index) ** 3).sum() * (k + 1) for k, t in enumerate(tables)).backward()
            optimizer.step()
        return initial, [t.weight.detach() for t in tables], [optimizer.state[t.weight] for t in tables]

    initial, rows_weights, rows_states = run(RowSparseAdam)
    _, sparse_weights, sparse_states = run(torch.optim.SparseAdam)
    for ours, theirs in zip(rows_weights, sparse_weights):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(rows_states, sparse_states):
        assert set(ours) == set(theirs) and int(ours["step"]) == int(theirs["step"]) == 4
        assert torch.allclose(ours["exp_avg"], theirs["exp_avg"], rtol=1e-5, atol=1e-7)
        assert torch.allclose(ours["exp_avg_sq"], theirs["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    for before, after in zip(initial, rows_weights):  # row 4 never in a batch: unchanged; the others moved
        assert torch.equal(after[4], before[4]) and not torch.equal(after[[0, 1, 2, 3, 5]], before[[0, 1, 2, 3, 5]])


def test_row_sparse_adam_honours_found_inf_as_fused_adam_does():
    def run(found_infs):
        table = torch.nn.Embedding.from_pretrained(torch.arange(12.0).reshape(4, 3), freeze=False, sparse=True)
        optimizer = RowSparseAdam(table.parameters(), lr=0.1)
        for found_inf in found_infs:
            optimizer.zero_grad()
            table(torch.tensor([0, 2, 2])).square().sum().backward()
            optimizer.found_inf = found_inf
            optimizer.step()
        return table.weight.detach(), optimizer.state[table.weight]

    plain, plain_state = run([None, None])
    flagged, flagged_state = run([torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0)])  # the middle one skipped
    assert torch.allclose(flagged, plain, rtol=0, atol=1e-6)
    assert int(flagged_state["step"]) == plain_state["step"] == 2
    assert torch.allclose(flagged_state["exp_avg_sq"], plain_state["exp_avg_sq"], rtol=1e-6, atol=0)


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(data_folder, tmp_path, capsys):
    Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1)).run()
    checkpoints = checkpoints_of(tmp_path)
    saved = digest(checkpoints)
    with pytest.raises(SystemExit) as info:
        exp_runner.main(["--conf", DEMO, "--is_continue", "--nepoch", "4", "--quiet",
                         *tiny_overrides(data_folder, tmp_path, "train.learning_rate=1e3")])
    assert info.value.code == 2
    line = one_line_error(capsys)
    assert "not finite" in line and "epoch 2" in line and "train.learning_rate" in line and "--is_continue" in line
    assert digest(checkpoints) == saved  # nothing of the diverged epochs was written
    parts, _ = ckpt.load_checkpoint(checkpoints, [ckpt.MODEL])
    assert parts[ckpt.MODEL]["epoch"] == 1


def test_evaluation_and_export_refuse_a_checkpoint_with_non_finite_parameters(data_folder, tmp_path, capsys):
    conf = tiny_conf(data_folder, tmp_path)
    Trainer(conf, TrainOptions(nepoch=1)).run()
    latest = checkpoints_of(tmp_path) / ckpt.MODEL / "latest.pth"
    part = torch.load(latest, weights_only=True)
    part["model_state_dict"]["points"][3, 1] = float("nan")
    rewrite_part(latest, part)
    with pytest.raises(CheckpointError, match=r"latest.pth holds non-finite values.*'points'"):
        load_avatar(conf, checkpoints_of(tmp_path), "latest", (32, 32), torch.device("cpu"))
    with pytest.raises(SystemExit) as info:
        export_ply.main(["--conf", DEMO, "--out", str(tmp_path / "avatar.ply"), *tiny_overrides(data_folder, tmp_path)])
    assert info.value.code == 2 and "non-finite" in one_line_error(capsys)
    assert not (tmp_path / "avatar.ply").exists()


# ---- loading a file runs no code -----------------------------------------------------------------

class Payload:
    """What a crafted file holds: unpickling it would run a shell command that writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_is_refused_before_it_runs_anything(data_folder, tmp_path, capsys):
    marker = tmp_path / "ran"
    other = tmp_path / "other" / "train" / "checkpoints"
    for part in ckpt.PARTS:
        (other / part).mkdir(parents=True)
        torch.save({"epoch": 3, "model_state_dict": {"points": Payload(marker)}}, other / part / "latest.pth")
    conf = tiny_conf(data_folder, tmp_path / "exps")
    with pytest.raises(CheckpointError, match=r"refers to 'posix.system'.*not loaded") as info:
        Trainer(conf, TrainOptions(nepoch=4, is_continue=True, load_path=str(other.parent)))
    assert "\n" not in str(info.value)
    with pytest.raises(SystemExit) as exit_info:
        exp_runner.main(["--conf", DEMO, "--is_eval", "--load_path", str(other.parent),
                         *tiny_overrides(data_folder, tmp_path / "exps")])
    assert exit_info.value.code == 2 and "posix.system" in one_line_error(capsys)
    assert not marker.exists()


def test_a_crafted_flame_model_or_landmark_file_is_refused_before_it_runs_anything(tmp_path):
    marker = tmp_path / "ran"
    model = tmp_path / "generic_model.pkl"
    model.write_bytes(pickle.dumps({"v_template": np.zeros((3, 3)), "f": Payload(marker)}, protocol=2))
    with pytest.raises(FlameModelError, match=r"generic_model.pkl names 'posix.system'.*not loaded"):
        load_flame_model(model)
    landmarks = tmp_path / "landmark_embedding.npy"
    np.save(landmarks, np.array({"full_lmk_faces_idx": Payload(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(FlameModelError, match=r"landmark_embedding.npy names 'posix.system'"):
        load_landmark_embedding(landmarks)
    # Any other callable is refused as well (Python 2 names included), not only os.system.
    model.write_bytes(b"\x80\x02c__builtin__\neval\nX\x03\x00\x00\x001+1\x85R.")
    with pytest.raises(FlameModelError, match="names 'builtins.eval'"):
        load_flame_model(model)
    assert not marker.exists()


def test_deca_landmark_file_with_torch_tensors_still_loads(tmp_path):
    """DECA's landmark_embedding.npy pickles some entries as torch tensors: they are read with weights_only."""
    path = tmp_path / "landmark_embedding.npy"
    faces, bary = torch.arange(68)[None], torch.rand(1, 68, 3, dtype=torch.float64)
    np.save(path, np.array({"full_lmk_faces_idx": faces, "full_lmk_bary_coords": bary,
                            "static_lmk_faces_idx": np.arange(51)}, dtype=object), allow_pickle=True)
    embedding = load_landmark_embedding(path)
    assert np.array_equal(embedding.faces_idx, np.arange(68)) and np.allclose(embedding.bary_coords, bary[0].numpy())


# ---- --overwrite and --load_path never mix two experiments ---------------------------------------

def test_overwrite_moves_the_whole_old_experiment_aside_before_writing_anything(data_folder, tmp_path, caplog):
    conf = tiny_conf(data_folder, tmp_path)
    Trainer(conf, TrainOptions(nepoch=1)).run()
    root = checkpoints_of(tmp_path).parents[1]
    (root / "eval" / "MVI_1812").mkdir(parents=True)
    (root / "eval" / "MVI_1812" / "old.txt").write_text("the old run's result")
    old = digest(root)
    caplog.set_level("WARNING")
    trainer = Trainer(conf, TrainOptions(nepoch=1, overwrite=True))
    assert not root.exists()  # a kill now leaves no old checkpoint beside the new conf
    aside, = [p for p in root.parent.iterdir() if p.name.startswith(f"{SPLIT}.replaced-")]
    assert digest(aside) == old and f"moved aside, whole, to {aside}" in caplog.text
    trainer.run()
    assert sorted(p.name for p in root.iterdir()) == ["train"]  # nothing of the old run beside the new one


def test_evaluating_another_experiments_checkpoint_writes_under_that_experiment(data_folder, tmp_path):
    conf_a = tiny_conf(data_folder, tmp_path, "train.methodname=a")
    conf_b = tiny_conf(data_folder, tmp_path, "train.methodname=b", "train.learning_rate=2e-3")
    Trainer(conf_a, TrainOptions(nepoch=1)).run()
    Trainer(conf_b, TrainOptions(nepoch=1)).run()
    root_a, root_b = checkpoints_of(tmp_path, "a").parents[1], checkpoints_of(tmp_path, "b").parents[1]
    folders = Evaluator(conf_a, EvalOptions(load_path=str(root_b / "train"), videos=False)).evaluate()
    assert not (root_a / "eval").exists()  # a's results are never overwritten by b's model
    folder, = folders.values()
    assert folder == root_b / "eval" / "MVI_1812" / "epoch_1"
    report = json.loads((folder / "metrics.json").read_text())
    assert report["checkpoint"] == str(root_b / "train" / "checkpoints" / ckpt.MODEL / "1.pth")
    assert report["conf"] == str(root_b / "train" / "runconf.conf")
    assert (root_b / "train" / "checkpoints" / ckpt.TEST_INPUTS / "1.pth").is_file()


# ---- a save is one commit ------------------------------------------------------------------------

class Killed(BaseException):
    """A kill -9 between two file operations of a save (nothing after it runs)."""


def _interrupt_after(monkeypatch, operations: int) -> None:
    """Make the save stop after `operations` file writes and renames, as a kill would."""
    count = {"n": 0}
    write, replace = ckpt._write_bytes, os.replace

    def counted(function):
        def wrapper(*args, **kwargs):
            if count["n"] >= operations:
                raise Killed()
            count["n"] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(ckpt, "_write_bytes", counted(write))
    monkeypatch.setattr(ckpt.os, "replace", counted(replace))


def _saved_points(trainer: Trainer) -> torch.Tensor:
    """The points a save writes as the model's: the weights' average where the recipe keeps one."""
    return (trainer.avatar.points if trainer.average is None else trainer.average.average["points"]).detach().clone()


def test_a_save_interrupted_anywhere_leaves_one_whole_checkpoint(data_folder, tmp_path, monkeypatch):
    trainer = Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1))
    checkpoints, names = trainer.paths.checkpoints, list(ckpt.PARTS)
    trainer.save(1, numbered=False)
    shutil.copytree(checkpoints, tmp_path / "epoch1")
    points = {1: _saved_points(trainer)}
    trainer.train_epoch(1)
    points[2] = _saved_points(trainer)  # epoch 2's state differs from epoch 1's
    outcomes = set()
    # Cut before each part of `latest` is written, each numbered part written and renamed, the numbered
    # record, the commit, each part of `latest` renamed.
    for operations in range(4 * len(names) + 2):
        shutil.rmtree(checkpoints)
        shutil.copytree(tmp_path / "epoch1", checkpoints)
        with monkeypatch.context() as patch:
            _interrupt_after(patch, operations)
            with pytest.raises(Killed):
                trainer.save(2, numbered=True)
        parts, tag = ckpt.load_checkpoint(checkpoints, names)
        epoch, = {int(p["epoch"]) for p in parts.values()}  # all parts of one epoch, never a mix
        assert tag == "latest" and torch.equal(parts[ckpt.MODEL]["model_state_dict"]["points"], points[epoch])
        outcomes.add(epoch)
        for numbered in ckpt.available_epochs(checkpoints):  # a numbered checkpoint is listed once whole
            assert {int(p["epoch"]) for p in ckpt.load_checkpoint(checkpoints, names, numbered)[0].values()} == {2}
        trainer.save(3, numbered=False)  # the next save completes or discards what the kill left
        assert {int(p["epoch"]) for p in ckpt.load_checkpoint(checkpoints, names)[0].values()} == {3}
        assert not list(checkpoints.rglob("*.tmp"))
    assert outcomes == {1, 2}  # before the commit the old checkpoint, after it the new one


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_leaves_no_temporary(data_folder, tmp_path,
                                                                                         monkeypatch):
    trainer = Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=3))
    trainer.save(1, numbered=True)
    before = digest(trainer.paths.checkpoints)
    write = ckpt._write_bytes
    calls = {"n": 0}

    def disk_full_on_third(data, path):
        calls["n"] += 1
        if calls["n"] == 3:
            path.write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(data, path)

    monkeypatch.setattr(ckpt, "_write_bytes", disk_full_on_third)
    with pytest.raises(CheckpointError, match="cannot write .*No space left on device.*previous checkpoint is kept"):
        trainer.save(2, numbered=True)
    assert digest(trainer.paths.checkpoints) == before and not list(trainer.paths.checkpoints.rglob("*.tmp"))
    assert ckpt.load_checkpoint(trainer.paths.checkpoints, [ckpt.MODEL])[0][ckpt.MODEL]["epoch"] == 1


# ---- bad input: before the first epoch, one line, exit code 2 ------------------------------------

def test_a_broken_test_frame_is_reported_before_the_first_epoch(data_folder, tmp_path):
    broken = tmp_path / "datasets"
    shutil.copytree(data_folder, broken)
    video = broken / SUBJECT / SUBJECT / "MVI_1812"
    conf = tiny_conf(broken, tmp_path / "exps", "dataset.test.subsample=4")  # the plots read frame 1 only
    (video / "mask" / "3.png").unlink()
    with pytest.raises(DatasetError, match=r"MVI_1812/mask/3.png \(MVI_1812 frame 3\): mask not found"):
        Trainer(conf, TrainOptions(nepoch=1))
    shutil.copy(video / "mask" / "2.png", video / "mask" / "3.png")
    (video / "image" / "4.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"MVI_1812/image/4.png \(MVI_1812 frame 4\): cannot read the image"):
        Trainer(conf, TrainOptions(nepoch=1))
    assert not (tmp_path / "exps").exists()


def test_overrides_anywhere_and_nepoch_below_one(data_folder, tmp_path, capsys):
    args = exp_runner.build_parser().parse_intermixed_args(
        ["--conf", DEMO, "train.max_batch=2", "--nepoch", "10", "train.seed=3", "--quiet"])
    assert args.overrides == ["train.max_batch=2", "train.seed=3"] and args.nepoch == 10 and args.quiet
    args = export_ply.build_parser().parse_intermixed_args(["--conf", DEMO, "a=1", "--out", "x.ply", "b=2"])
    assert args.overrides == ["a=1", "b=2"] and args.out == "x.ply"
    assert check_dataset.main(["--conf", DEMO, *tiny_overrides(data_folder, tmp_path)[:2], "-q",
                               *tiny_overrides(data_folder, tmp_path)[2:]]) == 0
    for nepoch in ("0", "-3"):
        with pytest.raises(SystemExit) as info:
            exp_runner.main(["--conf", DEMO, *tiny_overrides(data_folder, tmp_path)[:3], "--nepoch", nepoch,
                             *tiny_overrides(data_folder, tmp_path)[3:]])
        assert info.value.code == 2 and f"--nepoch {nepoch}" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_export_to_a_folder_or_an_unwritable_place_is_one_line(data_folder, tmp_path, capsys):
    Trainer(tiny_conf(data_folder, tmp_path), TrainOptions(nepoch=1)).run()
    (tmp_path / "a_file").write_text("")
    for out, expected in ((tmp_path, "is a folder"), (tmp_path / "a_file" / "avatar.ply", "cannot write")):
        with pytest.raises(SystemExit) as info:
            export_ply.main(["--conf", DEMO, "--out", str(out), *tiny_overrides(data_folder, tmp_path)])
        assert info.value.code == 2 and expected in one_line_error(capsys)


# ---- on CUDA: skipped on the device, without waiting for it ----------------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="needs a CUDA device (torch.cuda.is_available() is False)")


@pytest.mark.gpu
@cuda_only
def test_on_cuda_a_non_finite_step_changes_nothing_and_waits_for_nothing():
    from dynavatar.train.guard import NonFiniteGuard

    device = torch.device("cuda")
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3).to(device)
    table = torch.nn.Embedding(6, 3, sparse=True).to(device)
    adam = torch.optim.Adam(layer.parameters(), lr=0.1, fused=True)
    row_adam = RowSparseAdam(table.parameters(), lr=0.1)
    guard = NonFiniteGuard(3, device)
    x, rows = torch.randn(5, 4, device=device), torch.tensor([0, 2, 2, 5], device=device)

    def backward(poison: bool) -> torch.Tensor:
        adam.zero_grad(set_to_none=True)
        row_adam.zero_grad(set_to_none=True)
        loss = layer(x).square().mean() + table(rows).square().mean()
        loss = loss * float("nan") if poison else loss
        loss.backward()
        return loss

    guard.step(backward(False), [adam, row_adam])  # the optimisers' state exists from here on
    before = [t.detach().clone() for t in (*layer.parameters(), table.weight)]
    moments = [v.clone() for s in (*adam.state.values(), *row_adam.state.values()) for v in s.values()]
    loss = backward(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation in the guard raises
    try:
        finite = guard.step(loss, [adam, row_adam])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not bool(finite) and int(guard.streak) == 1
    for a, b in zip(before, (*layer.parameters(), table.weight)):
        assert torch.equal(a, b)
    after = [v for s in (*adam.state.values(), *row_adam.state.values()) for v in s.values()]
    for a, b in zip(moments, after):  # moments and step counts (tensors, or RowSparseAdam's int before)
        assert torch.equal(torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu())
    loss = backward(False)
    torch.cuda.set_sync_debug_mode("error")
    try:
        finite = guard.step(loss, [adam, row_adam])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(finite) and int(guard.streak) == 0 and int(guard.skipped) == 1
    assert not torch.equal(before[0], layer.weight) and not torch.equal(before[-1], table.weight)
    assert int(row_adam.state[table.weight]["step"]) == 2


@pytest.mark.gpu
@cuda_only
def test_on_cuda_training_skips_a_non_finite_step(data_folder, tmp_path):
    trainer = Trainer(tiny_conf(data_folder, tmp_path, "train.device=cuda", "model.rasterizer=torch"),
                      TrainOptions(nepoch=1))
    batch = trainer.train_data.batch([0, 1, 2]).to(trainer.device)
    trainer.train_step(batch, step_inputs=True)
    before = {k: v.clone() for k, v in trainer.avatar.state_dict().items()}
    hook = trainer.avatar.points.register_hook(lambda g: g * float("nan"))
    assert not bool(trainer.train_step(batch, step_inputs=True)["finite"])
    hook.remove()
    for key, value in trainer.avatar.state_dict().items():
        assert torch.equal(value, before[key]), key
    stats = trainer.train_epoch(0)
    assert stats["skipped_steps"] == 0 and np.isfinite(stats["loss"])
