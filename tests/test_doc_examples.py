"""Every example of the README, BENCHMARKS.md and the documentation pages runs.

The fenced code blocks of ``README.md``, ``BENCHMARKS.md`` and ``docs/**/*.md`` are the tests:

- ``python`` blocks are executed as written, each in a fresh namespace, in a temporary folder.
- ``bash`` blocks are run by bash with ``python``, ``pip``, ``srun`` ... replaced by functions
  that record their arguments (bash still does the quoting, line continuations, variables and
  loops); each recorded command is then run or checked here, in the same temporary folder, in
  order (:class:`Commands`):

  - ``train.py`` and ``compare.py`` on data that is generated (``data.name=shapes``) on one
    CPU process run for real, with :func:`tiny` overrides appended (and a comparison's seeds
    cut to the first); any other data (CIFAR downloads, JPEG folders, ImageNet, streams), GPUs,
    DDP or SLURM: the recipe and every override are loaded and validated by ``load_config``,
    as the run would before any work;
  - ``python -m distill.export|explain|data.stream`` and ``python -c`` run for real;
  - ``benchmarks/*.py`` and ``benchmarks/gpu_check.sh``: their arguments are parsed by the
    script's own parser (the benchmarks are timed, not tested, here);
  - ``pip install``: the extras named exist in ``pyproject.toml``; ``python -m pytest``: it is
    the command ``.ci/run`` runs.

  Placeholders: ``runs/<name>/<run>`` is a finished tiny quickstart run, ``photos/`` (and
  ``~/photos``) a small ImageFolder tree with ``train/`` and ``test/``.
- ``text`` blocks are output or a synopsis and are not run. Any other language fails
  :func:`test_every_block_has_a_known_language`.

A block after a ``<!-- doc-test: slow: REASON -->`` line runs only with ``-m slow``; the
default suite still checks its commands as above without training anything (configs loaded and
validated, arguments parsed, ``python -c`` compiled), and compiles a slow Python block.
Checking only, a ``teacher.checkpoint`` the example names is an empty stand-in (an earlier step
writes it); running, a tiny teacher is trained there first when an earlier example writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]
LANGUAGES = {"python", "bash", "text"}
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
DIRECTIVE = re.compile(r"<!-- doc-test: slow: (?P<reason>.+?) -->\s*$")
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q'


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    slow: str | None  # the reason, for blocks marked slow

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in SOURCES:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            directive = DIRECTIVE.search(before)
            indent = len(match["indent"])
            body = "".join(row[indent:] for row in match["body"].splitlines(keepends=True))
            found.append(
                Block(path, line, match["lang"], body, directive["reason"] if directive else None)
            )
    return found


BLOCKS = blocks()


def _params(lang: str) -> list:
    return [
        pytest.param(block, id=block.id, marks=[pytest.mark.slow] if block.slow else [])
        for block in BLOCKS
        if block.lang == lang
    ]


def _slow(lang: str) -> list:
    return [
        pytest.param(block, id=block.id) for block in BLOCKS if block.lang == lang and block.slow
    ]


def _extras() -> set[str]:
    """The extras of ``pyproject.toml`` (Python 3.10 has no tomllib)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^(\w+) = \[", section, flags=re.M))


def tiny(cfg, wandb: str = "disabled") -> list[str]:
    """Overrides that make a run on generated shapes take seconds (``tests/conftest.py``'s
    sizes); the models, losses and everything else the example sets stay as written."""
    out = [
        "data.shapes.num_train=192",
        "data.shapes.num_val=64",
        "data.batch_size=64",
        "data.num_workers=0",
        "trainer.accelerator=cpu",
        "trainer.check_val_every_n_epoch=1",
        "trainer.enable_progress_bar=false",
        f"logging.wandb={wandb}",
        "logging.map_images=4",
        "logging.map_every_n_epochs=1",
    ]
    out += [f"{stage}.epochs=1" for stage in ("teacher", "student") if cfg[stage].epochs > 1]
    return out


def runnable(cfg) -> bool:
    """Generated data, one CPU process, no file to download: a tiny run can do it here."""
    trainer = cfg.trainer
    return (
        cfg.data.name == "shapes"
        and str(trainer.devices) in ("1", "auto")
        and trainer.num_nodes == 1
        and trainer.strategy == "auto"
        and trainer.accelerator in ("auto", "cpu")
        and all(cfg[stage].weights in (None, "") for stage in ("teacher", "student"))
    )


def _wandb_mode(overrides: list[str]) -> str:
    """``offline`` when the example asks for a wandb mode (the wandb path runs, offline),
    else ``disabled``."""
    asked = any(re.match(r"logging\.wandb=(online|offline)$", item) for item in overrides)
    return "offline" if asked else "disabled"


def _expand(args: list[str]) -> list[str]:
    """Re-expand the globs bash left alone: what they match exists only once the commands
    before them have run here."""
    out = []
    for arg in args:
        matches = sorted(glob.glob(arg)) if any(c in arg for c in "*?[") else []
        out += matches or [arg]
    return out


class _Parsed(Exception):
    """Raised by a patched ``ArgumentParser`` once a script's arguments are parsed."""


@contextlib.contextmanager
def _stop_after_parsing():
    original = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_intermixed_args

    def parse(self, *args, **kwargs):
        namespace = original[0](self, *args, **kwargs)
        raise _Parsed(namespace)

    def parse_intermixed(self, *args, **kwargs):
        namespace = original[1](self, *args, **kwargs)
        raise _Parsed(namespace)

    argparse.ArgumentParser.parse_args = parse
    argparse.ArgumentParser.parse_intermixed_args = parse_intermixed
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_intermixed_args = original


class Commands:
    """Run or check the commands a bash block recorded, in order, in the current folder.

    With ``check_only`` nothing trains: configs are loaded and validated, arguments parsed,
    ``python -c`` code compiled.
    """

    ran: set[tuple[str, ...]] = set()  # train.py arguments already run in this session

    def __init__(self, check_only: bool = False) -> None:
        self.check_only = check_only
        self.train_cli = load_script(ROOT / "train.py")
        self.compare_cli = load_script(ROOT / "compare.py")
        self.done: list[str] = []  # what happened to each command, for failure messages

    def run(self, argv: list[str]) -> None:
        name, args = argv[0], argv[1:]
        if name == "srun":  # SLURM: never run here; what it starts is checked
            assert args[0] == "python", argv
            return self.python(args[1:], check_only=True)
        if name == "python":
            return self.python(args, self.check_only)
        if name == "python3":
            assert args[:2] == ["-m", "venv"], f"unexpected python3 command: {argv}"
            return
        if name == "pip":
            return self.pip(args)
        if name == "benchmarks/gpu_check.sh":
            return self.parse_script(ROOT / "benchmarks" / "gpu_check.py", args)
        if name in ("mkdir", "tar"):  # shell utilities preparing data for a GPU machine
            self.done.append(f"{name}: not checked")
            return
        raise AssertionError(f"the doc test does not know the command {argv}: teach it")

    def python(self, args: list[str], check_only: bool) -> None:
        if args[0] == "train.py":
            return self.train(args[1:], check_only)
        if args[0] == "compare.py":
            return self.compare(args[1:], check_only)
        if args[0].startswith("benchmarks/"):
            return self.parse_script(ROOT / args[0], args[1:])
        if args[0] == "-c":
            code = compile(args[1], "<python -c>", "exec")
            if not check_only:
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(code, {"__name__": "__main__"})
            self.done.append(f"python -c: {'compiled' if check_only else 'ran'}")
            return
        if args[:2] == ["-m", "pytest"]:
            # The suite cannot run itself; test_ci_runs_the_readme_test_command checks that CI
            # runs exactly this command.
            assert args[2:] == ["-q"], args
            return
        if args[0] == "-m" and args[1].startswith("distill."):
            module = importlib.import_module(args[1])
            argv = _expand(args[2:])
            source = argv[1] if args[1] == "distill.data.stream" else argv[0]
            if check_only or not Path(source).exists():  # or a checkpoint that is not here
                with _stop_after_parsing(), pytest.raises(_Parsed):
                    module.main(argv)
                self.done.append(f"python -m {args[1]}: arguments parsed")
                return
            if args[1] == "distill.data.stream" and "--workers" in argv:
                argv[argv.index("--workers") + 1] = "1"  # tiny: one encoding process
            rc = module.main(argv)
            assert rc in (0, None), f"python -m {args[1]} {argv} exited {rc}"
            self.done.append(f"python -m {args[1]}: ran")
            return
        raise AssertionError(f"the doc test does not know the command python {args}: teach it")

    def train(self, args: list[str], check_only: bool) -> None:
        parsed = self.train_cli.parse_args(args)
        if parsed.resume:  # a finished tiny run: the resume says so and changes nothing
            if check_only:
                self.load_config(str(Path(parsed.resume) / "config.yaml"), parsed.overrides)
                self.done.append("train.py --resume: config checked")
                return
            rc = self.train_cli.main(args)
            assert rc == 0, f"train.py {args} exited {rc}"
            self.done.append("train.py --resume: ran")
            return
        if not check_only and "stage=student" in parsed.overrides:
            self.produce_teacher(parsed.config, parsed.overrides)
        cfg = self.load_config(parsed.config, parsed.overrides)
        if check_only or not runnable(cfg):
            self.done.append(f"train.py --config {parsed.config}: config checked")
            return
        key = (parsed.config, *parsed.overrides)
        if key in Commands.ran:  # the same tiny run, reading and writing no named file
            self.done.append(f"train.py --config {parsed.config}: ran earlier in this session")
            return
        rc = self.train_cli.main([*args, *tiny(cfg, _wandb_mode(parsed.overrides))])
        assert rc == 0, f"train.py {args} exited {rc}"
        if not any("/" in item or "checkpoint" in item for item in parsed.overrides):
            Commands.ran.add(key)
        self.done.append(f"train.py --config {parsed.config}: ran (tiny)")

    def compare(self, args: list[str], check_only: bool) -> None:
        main = self.compare_cli.main
        args = _expand(args)
        namespace = self._namespace(main, args)
        if namespace.merge:
            if all(Path(folder).is_dir() for folder in namespace.merge) and not check_only:
                assert main(args) == 0, f"compare.py {args} failed"
                self.done.append("compare.py --merge: ran")
            else:
                self.done.append("compare.py --merge: arguments parsed (nothing to merge here)")
            return
        if not check_only:
            self.produce_teacher(namespace.config, namespace.overrides)
        cfg = self.load_config(namespace.config, namespace.overrides)
        if check_only or not runnable(cfg):
            module = sys.modules[main.__module__]

            def checked(*_args, **_kwargs):
                raise _Parsed(None)

            with pytest.MonkeyPatch.context() as patch, pytest.raises(_Parsed):
                patch.setattr(module, "compare", checked)
                main(args)  # the checks main runs before any training, then compare()
            self.done.append(f"compare.py --config {namespace.config}: configs checked")
            return
        first_seed = namespace.seeds.split(",")[0]
        argv = list(args)
        if "--seeds" in argv:
            argv[argv.index("--seeds") + 1] = first_seed
        argv += tiny(cfg, _wandb_mode(namespace.overrides))
        assert main(argv) == 0, f"compare.py {argv} failed"
        self.done.append(f"compare.py --config {namespace.config}: ran (tiny, seed {first_seed})")

    def produce_teacher(self, config: str, overrides: list[str]) -> None:
        """A ``teacher.checkpoint`` the example names but an earlier example writes (the
        evidence's ``runs/evidence/shapes_teacher.ckpt``): a tiny teacher is trained there first,
        on runnable data, as that earlier step would."""
        given = [
            item.partition("=")[2] for item in overrides if item.startswith("teacher.checkpoint=")
        ]
        if not given or not given[-1] or Path(given[-1]).exists():
            return
        extra = ["stage=teacher", "teacher.epochs=1", "trainer.check_val_every_n_epoch=1"]
        cfg = self.load_config(config, [*overrides, *extra])
        if not runnable(cfg):
            return
        rc = self.train_cli.main(["--config", config, *overrides, *extra, *tiny(cfg)])
        assert rc == 0, f"the tiny teacher for {given[-1]} failed"
        self.done.append(f"a tiny teacher for {given[-1]}, which an earlier example writes")

    def load_config(self, config: str, overrides: list[str]):
        """``load_config``, with an empty stand-in for each weights file that lives outside the
        repository (``../shared/teachers/...``): the check is of the config, not of the file.
        Checking only, a ``teacher.checkpoint`` is a file the example's earlier steps write,
        so it gets a stand-in too (which stages train, and so validate, depends on it)."""
        for item in overrides if self.check_only else ():
            key, _, value = item.partition("=")
            if key == "teacher.checkpoint" and value and not Path(value).exists():
                Path(value).parent.mkdir(parents=True, exist_ok=True)
                Path(value).touch()
                self.done.append(f"stand-in for {value}")
        for _ in range(4):
            try:
                return self.train_cli.load_config(config, overrides)
            except ValueError as error:
                missing = re.search(r"weights file (\S+) does not exist", str(error))
                if not missing:
                    raise
                Path(missing[1]).parent.mkdir(parents=True, exist_ok=True)
                Path(missing[1]).touch()
                self.done.append(f"stand-in for {missing[1]}")
        raise AssertionError(f"{config} {overrides}: too many missing files")

    @staticmethod
    def _namespace(main, args: list[str]) -> argparse.Namespace:
        with _stop_after_parsing():
            try:
                main(args)
            except _Parsed as parsed:
                return parsed.args[0]
        raise AssertionError("compare.py's main did not parse its arguments")

    def parse_script(self, script: Path, args: list[str]) -> None:
        assert script.is_file(), f"{script} does not exist"
        with pytest.MonkeyPatch.context() as patch, _stop_after_parsing():
            patch.syspath_prepend(str(script.parent))  # as python runs a script: its helpers
            module = load_script(script)
            patch.setattr(sys, "argv", [str(script), *args])
            with pytest.raises(_Parsed):
                module.main()
        self.done.append(f"{script.name}: arguments parsed")

    def pip(self, args: list[str]) -> None:
        assert args[0] == "install", args
        extras = _extras()
        for target in args[1:]:
            if target == "-e":
                continue
            match = re.fullmatch(r"(?:\.|distill)(?:\[(?P<extras>[\w,]+)\])?", target)
            assert match, f"pip install {target}: not this package"
            for extra in filter(None, (match["extras"] or "").split(",")):
                assert extra in extras, f"pip install {target}: no extra {extra!r}"
        self.done.append("pip install: extras exist")


SHIMS = r"""
set -euo pipefail
_rec() { for a in "$@"; do printf '%s\0' "$a"; done >> "$DOC_LOG"; printf '\036\0' >> "$DOC_LOG"; }
python() { _rec python "$@"; }
python3() {
  if [ "${1-}" = -m ] && [ "${2-}" = venv ]; then /bin/mkdir -p "$3/bin" && : > "$3/bin/activate"; fi
  _rec python3 "$@"
}
pip() { _rec pip "$@"; }
srun() { _rec srun "$@"; }
mkdir() { /bin/mkdir "$@"; _rec mkdir "$@"; }
tar() { _rec tar "$@"; }
benchmarks/gpu_check.sh() { _rec benchmarks/gpu_check.sh "$@"; }
command_not_found_handle() { _rec UNKNOWN "$@"; }
PATH=/nonexistent
"""


def record(code: str, folder: Path) -> list[list[str]]:
    """The commands a bash block runs, as argument lists, in order."""
    log = folder / ".doc_commands"
    log.unlink(missing_ok=True)
    env = {"DOC_LOG": str(log), "HOME": str(folder), "LANG": "C.UTF-8"}
    done = subprocess.run(
        ["/bin/bash", "-c", SHIMS + code], cwd=folder, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"bash failed:\n{done.stderr}"
    fields = log.read_bytes().decode().split("\0") if log.exists() else []
    commands, current = [], []
    for field in fields[:-1]:
        if field == "\036":
            commands.append(current)
            current = []
        else:
            current.append(field)
    return commands


def make_photos(folder: Path, classes=("cat", "dog"), per_split=(6, 2)) -> None:
    """A small ImageFolder tree, ``folder/{train,test}/<class>/*.png``."""
    from PIL import Image

    for split, count in zip(("train", "test"), per_split, strict=True):
        for k, name in enumerate(classes):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                color = (40 + 150 * k, 60 + 20 * i, 200 - 150 * k)
                Image.new("RGB", (40, 36), color).save(folder / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny quickstart run: what ``runs/<name>/<run>`` stands for."""
    folder = tmp_path_factory.mktemp("finished")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        train_cli = load_script(ROOT / "train.py")
        cfg = train_cli.load_config("quickstart")
        assert train_cli.main(["--config", "quickstart", *tiny(cfg)]) == 0
        Commands.ran.add(("quickstart",))
    finally:
        os.chdir(cwd)
    (run,) = (folder / "runs" / "quickstart").iterdir()
    return run


def _placeholders(code: str, workspace: Path, finished: Path) -> str:
    for name in sorted(set(re.findall(r"runs/(\w+)/<run>", code))):
        target = workspace / "runs" / name / "tiny-run"
        if not target.exists():
            shutil.copytree(finished, target)
    return code.replace("<run>", "tiny-run")


@pytest.mark.parametrize("block", _params("python"))
def test_python_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block.code, block.id, "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("block", _slow("python"))
def test_slow_python_example_compiles(block):
    compile(block.code, block.id, "exec")


def _shell(block: Block, folder: Path, monkeypatch, finished: Path, check_only: bool) -> None:
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    workspace = folder / "repo"  # ../shared/... of the examples lands in the temporary folder
    workspace.mkdir()
    monkeypatch.chdir(workspace)
    code = _placeholders(block.code, workspace, finished)
    if "photos" in code:
        make_photos(workspace / "photos")
    commands = record(code, workspace)
    assert commands, f"{block.id}: no command recorded"
    runner = Commands(check_only)
    for argv in commands:
        try:
            runner.run(argv)
        except BaseException as error:
            raise AssertionError(
                f"{block.id}: {' '.join(argv)}\nbefore it: {runner.done}\n{error!r}"
            ) from error
    print(f"{block.id}: {'; '.join(runner.done)}")  # what was run and what was checked (-s)


@pytest.mark.parametrize("block", _params("bash"))
def test_shell_example_runs(block, tmp_path, monkeypatch, finished_run):
    _shell(block, tmp_path, monkeypatch, finished_run, check_only=False)


@pytest.mark.parametrize("block", _slow("bash"))
def test_slow_shell_example_checks(block, tmp_path, monkeypatch, finished_run):
    """The default suite checks a slow block's commands (configs, arguments) without training."""
    _shell(block, tmp_path, monkeypatch, finished_run, check_only=True)


def test_every_block_has_a_known_language():
    unknown = [f"{b.id} ```{b.lang}" for b in BLOCKS if b.lang not in LANGUAGES]
    assert not unknown, f"blocks the doc test would not run: {unknown}"
    assert len([b for b in BLOCKS if b.lang == "python"]) >= 10
    assert len([b for b in BLOCKS if b.lang == "bash"]) >= 20


def test_slow_blocks_say_why():
    for block in BLOCKS:
        if block.slow is not None:
            assert len(block.slow) > 20, f"{block.id}: say why it is slow"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in readme.splitlines() if line.endswith(TEST_COMMAND))
    assert command in ci, f".ci/run does not run the README's test command: {command}"
