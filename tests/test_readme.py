"""Every command and code block of README.md and docs/*.md runs as documented, and the documents'
links and the docs the code cites exist.

The commands of all documents run once each (a command written in two documents runs once), in a
scratch project (the repository's confs and scripts, a data folder, and the synthetic FLAME-format
model where the README says FLAME 2020 goes), with sizes shrunk so that the suite stays fast: flags
stay as written, only image sizes, frame counts and epoch counts shrink, and a few small overrides
are appended (listed in `SMALL`). Commands that need CUDA run only where a CUDA device is present
(tests marked gpu).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from dynavatar.subject_generator.subject import generate_subject
from dynavatar.flame import synthetic_flame_files

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
DOCUMENTS = [README, *DOCS]  # README first: its training commands make the experiment the docs' commands use
README_MAX_LINES = 210  # the README stays an overview; details belong in docs/
SMALL = ["dataset.train.img_res=[24, 24]", "dataset.test.img_res=[24, 24]", "dataset.synthetic_frames=3",
         "model.point_cloud.n_init_points=100", "model.point_cloud.max_points=200",
         "evaluation.turntable_frames=3", "evaluation.test_fit_steps=1", "train.device=cpu",
         "train.frames_per_epoch=0"]
NO_VGG = "loss.vgg_feature_weight=0"  # no pretrained VGG16 weights here (see test_subject_conf_asks_for_vgg)


def _blocks(language: str, documents: list[Path] = DOCUMENTS) -> list[tuple[Path, str]]:
    """(document, code) of every ```language block of the documents, in order."""
    return [(doc, block) for doc in documents
            for block in re.findall(rf"```{language}\n(.*?)```", doc.read_text(), flags=re.S)]


def _commands(documents: list[Path] = DOCUMENTS) -> list[str]:
    """Command lines of the bash blocks, trailing comments removed, each once (first occurrence first)."""
    out: list[str] = []
    for _, block in _blocks("bash", documents):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and line not in out:
                out.append(line)
    return out


def _shrink_generation(command: str) -> str:
    command = re.sub(r"--res \d+", "--res 24", command)
    command = re.sub(r"--frames \d+", "--frames 3", command)
    if "make_synthetic_subject" in command and "--res" not in command:
        command += " --res 24 --frames 3"
    return re.sub(r"res=\d+, frames=\d+", "res=24, frames=3", command)


def _shrink_runner(args: list[str]) -> list[str]:
    """exp_runner / export_ply arguments at test size."""
    args = list(args)
    for flag, small in (("--nepoch", "2" if "--is_continue" in args else "1"), ("--checkpoint", "1"),
                        ("--frame", "2")):
        if flag in args:
            args[args.index(flag) + 1] = small
    runner = any(a.endswith("exp_runner.py") for a in args)
    if runner and "--nepoch" not in args and not {"--is_eval", "--drive"} & set(args):
        args += ["--nepoch", "2" if "--is_continue" in args else "1"]
    return args + SMALL + [NO_VGG]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """One script at test size on one thread (two run at once, see test_every_readme_command_runs)."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "confs", root / "confs")
    shutil.copytree(REPO / "scripts", root / "scripts")
    (root / "data" / "datasets").mkdir(parents=True)
    synthetic_flame_files(root / "data" / "FLAME2020")  # stands in for the licensed FLAME 2020 files
    # subject2 is only read (reenactment drives the avatar with its test video).
    generate_subject(root / "data" / "datasets", "subject2", res=24, frames=3,
                     train_videos=("MVI_1797", "MVI_1801"), test_videos=("MVI_1802",))
    return root


def test_setup_commands_are_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    setup = [c for c in _commands([README]) if c.startswith(("python3 -m venv", "python -m pip", "python -m pytest"))]
    assert len(setup) == 4
    for command in setup:
        assert command in ci, command
    assert "bash .ci/run" in _commands([README])


def _test_size(command: str) -> list[str] | None:
    """A document's command as arguments at test size; None for one left to the GPU run."""
    args = shlex.split(_shrink_generation(command))[1:]
    if "--device" in args and args[args.index("--device") + 1] == "cuda" and not torch.cuda.is_available():
        return None  # exercised by the GPU run (tests marked gpu), see test_gpu_readme_commands
    if args[0] in ("scripts/exp_runner.py", "scripts/export_ply.py"):
        args = _shrink_runner(args)
    if args[0] == "scripts/bench_rasterizer.py":
        args += ["--warmup", "0", "--repeat", "1"]
    if args[0] == "scripts/quality_vs_time.py":  # seconds instead of minutes, one epoch
        args = [args[0], "--nepoch", "1"] + args[1:]
        if "--budgets" in args:
            args[args.index("--budgets") + 1] = "0.001"
        args = _shrink_runner(args) + ["evaluation.test_fit_steps=1"]
    return args


def _run_in_order(commands: list[str], cwd: Path) -> list[str]:
    """Run the commands one after the other (one thread each); the failures, described."""
    failures = []
    for command in commands:
        args = _test_size(command)
        if args is None:
            continue
        result = _run(args, cwd)
        if result.returncode != 0:
            failures.append(f"{command}\n{args}\n{result.stderr[-3000:]}")
    return failures


def _trains_what_is_loaded(command: str, chain: list[str]) -> bool:
    """Whether `command` is a quality_vs_time run whose experiments a command of `chain` loads: one
    with `--seeds` and `dataset.subject_name` (its experiments are <subject>-seed<N>/), as the
    documents' runs that are loaded afterwards are."""
    subject = re.search(r"dataset\.subject_name=(\S+)", command)
    return ("scripts/quality_vs_time.py" in command and subject is not None
            and any(f"/{subject.group(1)}-seed" in c for c in chain))


def test_every_readme_command_runs(project):
    """Every bash command of README.md and docs/*.md, once, at test size."""
    commands = _commands()
    handled = [c for c in commands if c.startswith(("python scripts/", "python -c"))]
    others = [c for c in commands if c not in handled and not c.startswith(("python3 -m venv", "python -m pip",
                                                                            "python -m pytest", "bash .ci/run"))]
    assert not others, f"document commands this test does not know how to exercise: {others}"
    assert len(handled) >= 15
    # Generate and check the data first, with the first training (it writes the synthetic FLAME model);
    # then two lanes at once: the commands that train, resume, evaluate and export the documents'
    # experiments, in document order (README first), and every other command, none of which reads them.
    first = sorted((c for c in handled if "make_synthetic_subject" in c or "check_dataset" in c),
                   key=lambda c: "check_dataset" in c)
    first.append(next(c for c in handled if "exp_runner" in c))
    rest = [c for c in handled if c not in first]
    chain = [c for c in rest if "scripts/exp_runner.py" in c or "scripts/export_ply.py" in c]
    # A quality_vs_time command whose experiments (<subject>-seed<N>) a chained command loads runs in
    # the chain too, before it (document order), never beside it.
    chain = [c for c in rest if c in chain or _trains_what_is_loaded(c, chain)]
    for index, command in enumerate(chain):
        if "scripts/quality_vs_time.py" in command:
            assert _trains_what_is_loaded(command, chain[index + 1:]), f"loaded before it is trained: {command}"
    failures = _run_in_order(first, project)
    assert not failures, failures
    with ThreadPoolExecutor(2) as pool:
        lanes = pool.map(lambda lane: _run_in_order(lane, project), (chain, [c for c in rest if c not in chain]))
        failures = [f for lane in lanes for f in lane]
    assert not failures, "\n\n".join(failures)
    experiment = project / "data" / "experiments" / "subject1" / "dynavatar" / "MVI_1810+MVI_1814"
    assert (experiment / "eval" / "MVI_1812" / "epoch_1" / "metrics.json").is_file()
    assert list((experiment / "eval" / "reenact_MVI_1802").glob("epoch_*/video.mp4"))
    assert (project / "avatar.ply").is_file() and (project / "frame_40.ply").is_file()
    demo = project / "data" / "experiments" / "demo_subject" / "demo" / "MVI_1810+MVI_1814"
    assert (demo / "eval" / "MVI_1812" / "epoch_1" / "turntable.mp4").is_file()
    # The README's TensorBoard command reads what training logged (the environment's own script, also
    # where the test's Python runs from a virtual environment that is not activated).
    beside = Path(sys.executable).with_name("tensorboard")
    tensorboard = str(beside) if beside.is_file() else "tensorboard"
    inspect = subprocess.run([tensorboard, "--inspect", "--logdir", "data/experiments"], cwd=project,
                             capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 0 and "train/loss" in inspect.stdout + inspect.stderr
    assert "tensorboard --logdir data/experiments" in README.read_text()


def test_readme_python_blocks_run(project, monkeypatch):
    """Every ```python block of README.md and docs/*.md, in the scratch project."""
    monkeypatch.chdir(project)
    snippets = _blocks("python")
    assert len(snippets) >= 4
    if not (project / "data" / "datasets" / "subject1").is_dir():  # normally made by the documents' own command
        generate_subject(project / "data" / "datasets", "subject1", res=24, frames=3)
    for doc, snippet in snippets:  # (```py blocks would be sketches with placeholders and are not run)
        exec(compile(_shrink_generation(snippet), str(doc), "exec"), {})


def test_subject_conf_asks_for_vgg(project):
    """Without VGG16 weights, the paper's conf (vgg_feature_weight 0.1) stops with one clear message."""
    result = _run(["scripts/exp_runner.py", "--conf", "confs/subject1.conf", "--nepoch", "1", *SMALL,
                   "train.exps_folder=./data/experiments_vgg"], project)
    if result.returncode == 0:
        pytest.skip("VGG16 weights are installed on this machine")
    assert result.returncode == 2
    assert "vgg16-397923af.pth" in result.stderr and "vgg_feature_weight" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.gpu
def test_gpu_readme_commands(project):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    for command in _commands():
        # The benchmarks, shortened; the other GPU commands need a trained avatar or a long run.
        if "--device cuda" in command and re.search(r"scripts/bench\w*\.py", command):
            args = shlex.split(command)[1:] + ["--warmup", "1", "--repeat", "2"]
            result = _run(args, project)
            assert result.returncode == 0, (command, result.stderr[-3000:])


def test_gpu_marker_command_runs():
    """`python -m pytest -q tests -m gpu` (README): on a CPU machine every GPU test is skipped, not failed."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the GPU tests run for real in the main session")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests", "-m", "gpu", "-p", "no:cacheprovider"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "skipped" in result.stdout and "failed" not in result.stdout
    assert "python -m pytest -q tests -m gpu" in README.read_text()


# ---- the documents themselves -------------------------------------------------------------------

CITED_DOC = re.compile(r"docs/[A-Z_]+\.md")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```[^\n]*$", flags=re.S | re.M)


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated heading numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", path.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_docs_the_code_cites_exist():
    """Comments and docstrings of code/, tests/ and scripts/ cite docs/*.md: each of those files exists."""
    cited: dict[str, list[str]] = {}
    for folder in ("code", "tests", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for name in set(CITED_DOC.findall(path.read_text())):
                cited.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert {"docs/METHOD.md", "docs/DATA_FORMAT.md"} <= set(cited), sorted(cited)
    missing = {name: files for name, files in cited.items() if not (REPO / name).is_file()}
    assert not missing, f"cited but not in the repository: {missing}"


def test_document_links_point_to_files_and_headings():
    """Every relative link of README.md and docs/*.md names an existing file, and its #anchor a heading there."""
    broken = []
    checked = 0
    for doc in DOCUMENTS:
        for target in LINK.findall(_prose(doc.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            checked += 1
            path_part, _, anchor = target.partition("#")
            path = (doc.parent / path_part).resolve() if path_part else doc
            if not path.exists() or REPO not in [path, *path.parents]:
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and (path.suffix != ".md" or anchor not in _anchors(path)):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert checked >= 20
    assert not broken, "\n".join(broken)


def test_readme_is_an_overview_that_links_every_doc():
    text = README.read_text()
    lines = len(text.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/ (limit {README_MAX_LINES})"
    assert len(DOCS) >= 5
    for doc in DOCS:
        assert f"](docs/{doc.name})" in text, f"README.md does not link docs/{doc.name}"
