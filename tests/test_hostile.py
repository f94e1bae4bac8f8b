"""The hostile-input suite: files, data, options, paths, signals and concurrent runs, each with its
exit code, a fragment of its message, and the files that must be left as they were.

Cases run ``smof_onnx.cli.main`` in-process (fast); signals are sent from inside the commit
(``smof_onnx.commit._step_hook``) and, once, to a real ``python -m smof_onnx`` process.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import smof_onnx.methods
from smof_onnx import cli, commit
from smof_onnx.cli import main
from smof_onnx.passes import graph as pgraph
from tests.hostile_cases import build
from tests.helpers import assert_equivalent

ALL_INPUTS = ("m.onnx", "calib.npz", "nan.onnx", "eight.onnx", "ext_ok.onnx", "ok.data", "target.data", "hard.data",
              "big.npy", "imgs/a0.png", "bomb/huge.png")

# (id, argv with {d} for the case folder, exit code, message fragment, outputs that must not exist after)
CASES = [
    # Outputs aliasing what the run reads, or not regular files.
    ("o-is-the-data", "cut {d}/m.onnx -o {d}/calib.npz --data {d}/calib.npz", 2, "is --data", []),
    ("report-is-the-data", "compress {d}/m.onnx -o {d}/o.onnx --data {d}/calib.npz --report {d}/calib.npz --method l2",
     2, "--report {d}/calib.npz is --data", ["o.onnx"]),
    ("o-is-a-data-folder-file", "cut {d}/m.onnx -o {d}/imgs/a0.png --data {d}/imgs", 2, "a file of the --data folder",
     []),
    ("o-into-the-data-folder", "cut {d}/m.onnx -o {d}/imgs/new.png --data {d}/imgs", 2, "inside the --data folder",
     ["imgs/new.png"]),
    ("o-is-the-model", "cut {d}/m.onnx -o {d}/sub/../m.onnx", 2, "is the input model", []),
    ("o-is-external-data", "cut {d}/ext_ok.onnx -o {d}/ok.data", 2, "holds the weights of the input model", []),
    ("o-is-a-fifo", "cut {d}/m.onnx -o {d}/fifo", 2, "a FIFO", []),
    ("o-links-to-dev-null", "cut {d}/m.onnx -o {d}/devnull", 2, "a character device (through the symlink", []),
    ("report-links-to-dev-null", "cut {d}/m.onnx -o {d}/o.onnx --report {d}/devnull", 2, "--report", ["o.onnx"]),
    # NaN / inf in the input's weights.
    ("nan-cut", "cut {d}/nan.onnx -o {d}/o.onnx", 2, "input model has NaN/inf in initializer 'w2'", ["o.onnx"]),
    ("nan-compress", "compress {d}/nan.onnx -o {d}/o.onnx --method l2", 2, "NaN/inf in initializer 'w2'", ["o.onnx"]),
    ("inf-constant", "cut {d}/constinf.onnx -o {d}/o.onnx", 2, "NaN/inf in Constant 'bias_const'", ["o.onnx"]),
    ("nan-inspect-warns", "inspect {d}/nan.onnx", 0, "warning: NaN/inf in initializer 'w2'", []),
    # External data the loader refuses.
    ("ext-missing", "cut {d}/ext_missing.onnx -o {d}/o.onnx", 2, "gone.data is missing", ["o.onnx"]),
    ("ext-symlink", "cut {d}/ext_link.onnx -o {d}/o.onnx", 2, "symbolic link", ["o.onnx"]),
    ("ext-hardlink", "cut {d}/ext_hard.onnx -o {d}/o.onnx", 2, "hard link", ["o.onnx"]),
    ("ext-absolute", "cut {d}/ext_abs.onnx -o {d}/o.onnx", 2, "absolute path", ["o.onnx"]),
    ("ext-outside", "cut {d}/sub/ext_up.onnx -o {d}/o.onnx", 2, "points outside", ["o.onnx"]),
    ("not-a-model", "cut {d}/text.onnx -o {d}/o.onnx", 2, "text.onnx: not a readable ONNX model", ["o.onnx"]),
    # Data.
    ("npy-header-1e11", "cut {d}/m.onnx -o {d}/o.onnx --data {d}/big.npy", 2, "big.npy: its header declares",
     ["o.onnx"]),
    ("npz-header-1e11", "compress {d}/m.onnx -o {d}/o.onnx --data {d}/big.npz --method l2", 2,
     "big.npz (array 'x'): its header declares", ["o.onnx"]),
    ("image-bomb", "cut {d}/m.onnx -o {d}/o.onnx --data {d}/bomb", 2, "huge.png: too large to read safely", ["o.onnx"]),
    ("broken-images", "cut {d}/m.onnx -o {d}/o.onnx --data {d}/imgs", 2, "a0.png: not a readable image", ["o.onnx"]),
    ("text-as-data", "compress {d}/m.onnx -o {d}/o.onnx --data {d}/notes.npz --method l2", 2,
     "notes.npz: is not an .npz", ["o.onnx"]),
    ("no-batch-axis", "cut {d}/vec.onnx -o {d}/o.onnx --data {d}/vec.npy", 2, "with no batch axis", ["o.onnx"]),
    # Options.
    ("shape-too-big", "cut {d}/sym.onnx -o {d}/o.onnx --input-shape 1x3x100000x100000", 2,
     "of memory available; give a smaller --input-shape", ["o.onnx"]),
    ("shape-contradicts", "compress {d}/m.onnx -o {d}/o.onnx --method l2 --input-shape 1x3x9x9", 2,
     "--input-shape 1x3x9x9 contradicts input 'x': axis 2 is fixed at 8 in the model", ["o.onnx"]),
    ("shape-twice", "cut {d}/sym.onnx -o {d}/o.onnx --input-shape x=1x3x8x8 --input-shape x=1x3x9x9", 2,
     "--input-shape given twice for input 'x'", ["o.onnx"]),
    ("zero-flops-qr", "compress {d}/relu.onnx -o {d}/o.onnx --method qr --data {d}/calib.npz", 2,
     "nothing to compress", ["o.onnx"]),
    ("zero-flops-l2", "compress {d}/relu.onnx -o {d}/o.onnx --method l2", 2, "nothing to compress", ["o.onnx"]),
    # A target that is not met.
    ("target-missed", "compress {d}/eight.onnx -o {d}/o.onnx --method qr --data {d}/calib.npz --report {d}/r.json",
     3, "target missed: the cut keeps 1.000 of the FLOPs, the target was 0.5", ["o.onnx", "r.json"]),
    ("target-missed-allowed", "compress {d}/eight.onnx -o {d}/o.onnx --method qr --data {d}/calib.npz "
     "--report {d}/r.json --allow-miss", 0, "warning: the target was missed", []),
    ("bench-unrelated", "bench {d}/m.onnx {d}/other.onnx --seconds 0.05", 0, "are not comparable", []),
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(d: Path) -> dict[str, str]:
    return {name: _sha(d / name) for name in ALL_INPUTS}


@pytest.fixture
def ws(tmp_path) -> Path:
    build(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_case(ws, capsys, case):
    _, argv, code, fragment, absent = case
    before = _snapshot(ws)
    got = main(argv.format(d=ws).split())
    err = capsys.readouterr().err
    assert got == code, err
    assert fragment.format(d=ws) in err
    assert "internal error" not in err and "Traceback" not in err
    assert _snapshot(ws) == before  # no input was touched
    for name in absent:
        assert not (ws / name).exists(), name
    assert stat.S_ISFIFO(os.stat(ws / "fifo").st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [p for p in ws.rglob(".*")], "temp files left behind"
    if code != 0:  # the error line is the last line, and on its own
        assert err.rstrip("\n").splitlines()[-1].startswith("smof-onnx: ")


def test_a_missed_target_written_with_allow_miss_says_so_in_the_report(ws, capsys):
    assert main(f"compress {ws}/eight.onnx -o {ws}/o.onnx --method qr --data {ws}/calib.npz --report {ws}/r.json "
                "--allow-miss".split()) == 0
    rep = json.loads((ws / "r.json").read_text())
    assert rep["target_met"] is False and rep["allow_miss"] is True and "target_met" not in rep["method"]
    assert_equivalent(onnx.load(ws / "eight.onnx"), pgraph.load_model(ws / "o.onnx"))


def test_the_report_gets_the_mode_of_a_new_file_like_the_model(ws, capsys):
    assert main(f"cut {ws}/m.onnx -o {ws}/o.onnx --report {ws}/r.json".split()) == 0
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(ws / "r.json") == mode(ws / "o.onnx") == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_out_of_memory_anywhere_is_exit_2_with_what_to_lower(ws, capsys, monkeypatch):
    def hungry(model, **_):
        raise MemoryError("Unable to allocate 9 TiB")
    monkeypatch.setattr(smof_onnx.methods, "METHODS", {"hungry": hungry}, raising=False)
    assert main(f"compress {ws}/m.onnx -o {ws}/o.onnx --method hungry".split()) == 2
    err = capsys.readouterr().err
    assert "out of memory (Unable to allocate 9 TiB)" in err and "--batch-size" in err and "internal" not in err


# --- signals: a commit is all or nothing, and the message says which --------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("step", ["staged", "model", "report"])
def test_a_signal_during_the_commit_lets_it_finish_and_says_so(ws, capsys, monkeypatch, signum, step):
    monkeypatch.setattr(commit, "_step_hook", lambda name: name == step and os.kill(os.getpid(), signum))
    before = _snapshot(ws)
    assert main(f"cut {ws}/m.onnx -o {ws}/o.onnx --report {ws}/r.json".split()) == 130
    err = capsys.readouterr().err
    assert f"interrupted; {ws}/o.onnx and {ws}/r.json were written completely before it" in err
    assert_equivalent(onnx.load(ws / "m.onnx"), pgraph.load_model(ws / "o.onnx"))
    assert json.loads((ws / "r.json").read_text())["output"] == f"{ws}/o.onnx"
    assert _snapshot(ws) == before and not [p for p in ws.rglob(".*")]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_commit_writes_nothing_and_says_so(ws, capsys, monkeypatch, signum):
    from smof_onnx import verify

    real = verify.verify_equivalent

    def interrupted_gate(*a, **k):
        os.kill(os.getpid(), signum)
        return real(*a, **k)
    monkeypatch.setattr(verify, "verify_equivalent", interrupted_gate)
    assert main(f"cut {ws}/m.onnx -o {ws}/o.onnx --report {ws}/r.json".split()) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    assert not (ws / "o.onnx").exists() and not (ws / "r.json").exists()


def test_a_signal_just_after_wrote_is_no_lie(ws, capsys, monkeypatch):
    real = cli._err

    def err_then_interrupt(message):
        real(message)
        if message.startswith("wrote"):
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(cli, "_err", err_then_interrupt)
    assert main(f"cut {ws}/m.onnx -o {ws}/o.onnx --report {ws}/r.json".split()) == 130
    assert "were written completely before it" in capsys.readouterr().err
    assert (ws / "o.onnx").is_file() and (ws / "r.json").is_file()


_SIGNAL_SCRIPT = """
import os, signal, sys
from smof_onnx import commit
from smof_onnx.cli import main
commit._step_hook = lambda name: name == "model" and os.kill(os.getpid(), signal.SIGTERM)
sys.argv = ["smof-onnx", "cut", sys.argv[1], "-o", sys.argv[2], "--report", sys.argv[3]]
raise SystemExit(main())
"""


def test_sigterm_to_a_real_process_in_the_commit_and_concurrent_runs_on_one_output(ws):
    """Real processes: SIGTERM inside the commit ends one with 130 and its files complete; it and
    a second run write the same -o at once, which leaves one complete model and no temp files."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out, rep = str(ws / "same.onnx"), str(ws / "same.json")
    procs = [subprocess.Popen([sys.executable, "-c", _SIGNAL_SCRIPT, str(ws / "m.onnx"), out, rep],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env),
             subprocess.Popen([sys.executable, "-m", "smof_onnx", "cut", str(ws / "m.onnx"), "-o", out, "--report", rep],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    code, err = results[0]
    assert code == 130 and "same.onnx and" in err and "were written completely before it" in err, err
    assert results[1][0] == 0, results[1]
    assert_equivalent(onnx.load(ws / "m.onnx"), pgraph.load_model(ws / "same.onnx"))
    json.loads((ws / "same.json").read_text())
    assert not [p for p in ws.rglob(".*")]
