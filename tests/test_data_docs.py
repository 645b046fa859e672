"""Every command and code block of docs_data.md runs as written (in a scratch project folder, with
images shrunk to a few pixels and frames so that the test stays fast)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from dynavatar.flame import synthetic_flame_files

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs_data.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def _shrink(command: str) -> str:
    """Generation at test size: the flags stay, only their values shrink."""
    command = re.sub(r"--res \d+", "--res 24", command)
    command = re.sub(r"--frames \d+", "--frames 3", command)
    if "make_synthetic_subject" in command and "--res" not in command:
        command += " --res 24 --frames 3"
    return re.sub(r"res=\d+, frames=\d+", "res=24, frames=3", command)


def test_documented_commands_and_code_run(tmp_path, monkeypatch):
    # A scratch project: the repo's confs and scripts, a data folder, and a FLAME file where the docs
    # say one lives (the synthetic model stands in for FLAME 2020, which needs a licence).
    shutil.copytree(REPO / "confs", tmp_path / "confs")
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    (tmp_path / "data" / "datasets").mkdir(parents=True)
    synthetic_flame_files(tmp_path / "data" / "FLAME2020")

    commands = [line.strip() for block in _blocks("bash") for line in block.splitlines()
                if line.strip().startswith("python ")]
    assert len(commands) >= 6
    # Generate first, then check what was generated.
    commands.sort(key=lambda c: "check_dataset" in c)
    for command in commands:
        args = _shrink(command).split()
        result = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr[-2000:])

    monkeypatch.chdir(tmp_path)
    snippets = _blocks("python")
    assert len(snippets) >= 2
    for snippet in snippets:
        exec(compile(_shrink(snippet), str(DOC), "exec"), {})
    assert (tmp_path / "data" / "datasets" / "demo" / "demo" / "MVI_1812" / "flame_params.json").is_file()
