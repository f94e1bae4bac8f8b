"""The ``smof-onnx`` console script (also ``python -m smof_onnx``); design section 5.

    smof-onnx inspect MODEL [--input-shape S]... [--json]
    smof-onnx cut MODEL -o OUT [--input-shape S]... [--report R.json] [--data D]
    smof-onnx compress MODEL -o OUT [--data D] [--target-flops F] [--method M] [--input-shape S]...
                       [--report R.json] [--seed N] [method options]
    smof-onnx plan MODEL --data D [--target-flops F] [-o PLAN.json] [--png PLAN.png] [3d options]
    smof-onnx bench MODEL [MODEL2] [--input-shape S]... [--threads N] [--batch B] [--seconds T]

Exit codes: 0 done; 2 bad usage or bad input (the message says what and where), and running
out of memory (the sizes come from the input: shapes, data, batch size); 3 the verification
gate failed or ``compress`` missed its target (without ``--allow-miss``) and nothing was
written; 130 interrupted (SIGINT / SIGTERM; the message says whether the outputs were written:
a commit, once begun, completes); 1 an internal error (a message and a request to report it;
the traceback only with ``--debug``). Tables go to stdout, progress and information to stderr;
progress bars only when stderr is a terminal.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import traceback
from typing import Sequence

from . import __version__
from .errors import exit_code

_METHOD_OPTIONS = ("epochs", "finetune_epochs", "lr", "batch_size", "val_split", "kernel", "channel",
                   "channel_multiple", "target_latency", "bench_batch", "threads", "feature_distill",
                   "max_memory", "device", "amp", "no_latency", "dims", "min_resolution", "plan_steps", "latency_runtime")
_DATA_OPTIONS = ("image_size", "mean", "std", "channel_order", "layout", "labels_from_folders", "max_samples",
                 "workers")


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    if argv is None and threading.current_thread() is threading.main_thread():
        # The process's run is over and its message printed: a signal during the interpreter's exit
        # would kill it by signal, telling the shell the run failed when it did not.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or bad usage (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    from . import commit

    commit.forget()
    try:
        with _sigterm_interrupts():
            return args.handler(args)
    except KeyboardInterrupt as exc:
        done = getattr(exc, "written", None) or commit.written()
        _err("interrupted; " + (f"{' and '.join(done)} were written completely before it" if len(done) > 1
                                else f"{done[0]} was written completely before it" if done else "nothing was written"))
        return 130
    except MemoryError as exc:
        from .checks import MEMORY_HINT

        _err(f"error: out of memory ({exc or 'MemoryError'}); {MEMORY_HINT}")
        if getattr(args, "debug", False):
            traceback.print_exc(file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 -- every error leaves with a message and its documented code
        code = exit_code(exc)
        if code == 3:
            _err(f"verification failed: {exc}")
        elif code == 2:
            _err(f"error: {exc}")
        else:
            _err(f"internal error: {type(exc).__name__}: {exc}\n"
                 "  This is a bug in smof-onnx; please report it with the command line and, if you can, the model."
                 + ("" if getattr(args, "debug", False) else " Run again with --debug for the traceback."))
        if getattr(args, "debug", False):
            traceback.print_exc(file=sys.stderr)
        return code


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM acts like Ctrl-C for the run (a KeyboardInterrupt: the message, then exit 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from .commit import Interrupted

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of an internal error")
    shape = argparse.ArgumentParser(add_help=False)
    shape.add_argument("--input-shape", action="append", default=[], metavar="S",
                       help="1x3x224x224 for a one-input model, or NAME=1x3x224x224 (repeatable); needed only "
                            "where the model's input dims are symbolic")

    data = argparse.ArgumentParser(add_help=False)
    d = data.add_argument_group("data options (how --data is read; smof_onnx.data.DataOptions)")
    d.add_argument("--image-size", metavar="H,W", help="resize images to H,W (default: the model's input size)")
    d.add_argument("--mean", metavar="M", help="per-channel mean subtracted from pixels in [0, 1], e.g. "
                   "0.485,0.456,0.406 (one value, or one per channel)")
    d.add_argument("--std", metavar="S", help="per-channel std dividing pixels in [0, 1], e.g. 0.229,0.224,0.225")
    d.add_argument("--channel-order", choices=["RGB", "BGR"], type=str.upper, help="image channel order (default RGB)")
    d.add_argument("--layout", choices=["NCHW", "NHWC"], type=str.upper,
                   help="input layout (default NCHW unless only the last axis looks like channels)")
    d.add_argument("--labels-from-folders", action="store_const", const=True,
                   help="a folder of class sub-folders: labels 0..K-1 in sorted folder order")
    d.add_argument("--max-samples", type=int, metavar="N", help="use a seeded random subset of at most N samples")
    d.add_argument("--workers", type=int, metavar="N", help="DataLoader worker processes decoding batches while "
                   "training (default 0: in the main process)")

    parser = argparse.ArgumentParser(
        prog="smof-onnx", description="Cut kernel borders and channels out of CNNs in ONNX, exactly.")
    parser.add_argument("--version", action="version", version=f"smof-onnx {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", parents=[common, shape], help="per-layer cost and channel groups of a model")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(handler=_inspect)

    p = sub.add_parser("cut", parents=[common, shape, data],
                       help="remove zero kernel borders / channels / branches, verified, written atomically")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--report", metavar="R.json", help="write the JSON report here")
    p.add_argument("--data", metavar="D", help="calibration data (.npz / .npy / image folder) also used by the gate")
    p.set_defaults(handler=_cut)

    p = sub.add_parser("compress", parents=[common, shape, data], help="learn what to zero, then cut, verify and write")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--data", metavar="D", help="calibration data: .npz, .npy or a folder of images")
    p.add_argument("--target-flops", type=float, default=0.5, metavar="F", help="fraction of FLOPs to keep (0, 1]")
    p.add_argument("--method", default="smof", help="smof | qr | l2 | 3d (default smof)")
    p.add_argument("--report", metavar="R.json", help="write the JSON report here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-miss", action="store_true",
                   help="write the best effort when the target is not reached (the report says target_met: false); "
                   "without it a missed target is exit 3 and nothing is written")
    m = p.add_argument_group("method options (read by the methods that use them)")
    m.add_argument("--epochs", type=int)
    m.add_argument("--finetune-epochs", type=int)
    m.add_argument("--lr", type=float)
    m.add_argument("--batch-size", type=int)
    m.add_argument("--max-memory", metavar="SIZE", help="memory budget of the learning stage, e.g. 4G "
                   "(default: half the available memory); the batch is lowered to fit")
    m.add_argument("--val-split", type=float)
    m.add_argument("--no-kernel", dest="kernel", action="store_const", const=False, help="do not cut kernel sizes")
    m.add_argument("--no-channel", dest="channel", action="store_const", const=False, help="do not cut channels")
    m.add_argument("--channel-multiple", type=int, help="keep channel counts a multiple of this (default 0: 16 for layers of >= 32 channels, else 8)")
    m.add_argument("--target-latency", type=float, help="fraction of the measured latency to keep")
    m.add_argument("--bench-batch", type=int, help="batch size of latency measurements")
    m.add_argument("--latency-runtime", choices=["ort", "ort-int8", "openvino"],
                   help="the runtime the latency table and timings run on: ort (default), ort-int8 (the "
                   "model as `export --quantize int8` writes it) or openvino (needs the [openvino] extra)")
    m.add_argument("--no-latency", dest="no_latency", action="store_const", const=True,
                   help="smof: score gates by the FLOPs they save, not by the time a measured per-layer "
                   "latency table predicts they save (the default)")
    m.add_argument("--threads", type=int, help="PyTorch threads while training (default: PyTorch's, one per core); "
                   "1 is faster when other jobs share the cores")
    m.add_argument("--feature-distill", type=float, metavar="W",
                   help="smof, and the fine-tune of l2 / qr: weight of matching each stage's output to the original's "
                   "(default 1.0, 0 turns it off)")
    m.add_argument("--device", metavar="D", help="where PyTorch trains: auto (CUDA when available, the default), "
                   "cpu, cuda or cuda:N")
    m.add_argument("--amp", action="store_const", const=True,
                   help="mixed precision on CUDA (bfloat16 where supported, else float16; float32 master weights)")
    g = p.add_argument_group("3d options (--method 3d: depth, width and resolution planned together)")
    _plan_options(g)
    p.set_defaults(handler=_compress)

    p = sub.add_parser("plan", parents=[common, shape, data],
                       help="plan depth, width and resolution for a FLOPs target (3d's plan, no model written)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--data", required=True, metavar="D", help="calibration data: .npz, .npy or a folder of images")
    p.add_argument("--target-flops", type=float, default=0.5, metavar="F", help="fraction of FLOPs to keep (0, 1]")
    p.add_argument("-o", "--output", metavar="PLAN.json", help="write the plan here (default: print only)")
    p.add_argument("--png", metavar="PLAN.png", help="draw the fitted quality over depth and resolution here")
    p.add_argument("--seed", type=int, default=0)
    for name, kind, help_ in (("--batch-size", int, None), ("--val-split", float, None), ("--lr", float, None),
                              ("--threads", int, "PyTorch threads while training"),
                              ("--channel-multiple", int, None), ("--max-memory", str, None),
                              ("--device", str, None)):
        p.add_argument(name, type=kind, help=help_)
    _plan_options(p)
    p.set_defaults(handler=_plan)

    p = sub.add_parser("bench", parents=[common, shape], help="ONNX Runtime latency of one model, or two side by side")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("model2", metavar="MODEL2", nargs="?")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0, help="time budget of the measurement")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench)

    p = sub.add_parser("export", parents=[common, shape],
                       help="write the model for a runtime (onnx, ort, openvino, tflite), optionally int8, verified")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.onnx / .ort / .xml (+ .bin) / .tflite")
    p.add_argument("--to", default="onnx", choices=["onnx", "ort", "openvino", "tflite"])
    p.add_argument("--quantize", choices=["int8"], help="post-training int8 (needs --data)")
    p.add_argument("--data", metavar="D", help="calibration / verification data: .npz, .npy or a folder of images")
    p.add_argument("--report", metavar="R.json", help="write the JSON report (verification, latency) here")
    p.add_argument("--seconds", type=float, help="time budget of the latency measurement (default 3 with --report, "
                   "else 0: no timing)")
    p.add_argument("--bench-batch", type=int, default=1, help="batch size of the latency measurement")
    p.add_argument("--threads", type=int, default=1, help="runtime threads for verification and timing")
    p.add_argument("--ort-platform", choices=["arm", "amd64"], default="arm",
                   help="--to ort: arm = portable file (default), amd64 = keep x86-only NCHWc layouts (faster on x86)")
    p.add_argument("--tflite-python", metavar="PATH", help="Python of the onnx2tf environment (or $SMOF_TFLITE_PYTHON)")
    p.set_defaults(handler=_export)
    return parser


def _plan_options(g) -> None:
    g.add_argument("--dims", metavar="D,W,R", help="the dimensions to plan: any of depth,width,resolution "
                   "(default all three)")
    g.add_argument("--min-resolution", type=float, metavar="R", help="smallest fraction of the input size to "
                   "compute at (default 0.5)")
    g.add_argument("--plan-steps", type=int, metavar="N", help="fine-tune steps of each plan sample (default 120)")


# --- handlers ----------------------------------------------------------------------------------

def _inspect(args) -> int:
    from . import api, report

    info = api.inspect(args.model, args.input_shape or None)
    print(json.dumps(info, indent=2, default=str) if args.json else report.format_inspect(info))
    for warning in info.get("warnings", []):
        _err(f"warning: {warning}")
    return 0


def _cut(args) -> int:
    from . import api, report

    with _Stages(3) as progress:
        _, rep = api.cut(args.model, args.output, args.input_shape or None, data=args.data,
                         report_path=args.report, progress=progress, data_options=_data_options(args))
    print(report.format_table(rep))
    _err(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0


def _compress(args) -> int:
    from . import api, report

    options = {k: getattr(args, k) for k in _METHOD_OPTIONS if getattr(args, k) is not None}
    if not sys.stderr.isatty():  # bars redrawn with \r make a log unreadable
        options["progress_bars"] = False
    with _Stages(4) as progress:
        _, rep = api.compress(args.model, args.output, data=args.data, target_flops=args.target_flops,
                              method=args.method, input_shapes=args.input_shape or None, report_path=args.report,
                              seed=args.seed, progress=progress, allow_miss=args.allow_miss,
                              data_options=_data_options(args), **options)
    from .learn.distributed import is_worker

    if is_worker():  # a torchrun rank other than 0 trained its shard; rank 0 writes and reports
        return 0
    print(report.format_table(rep))
    _err(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    if rep.get("target_met") is False:
        _err(f"warning: the target was missed (the cut keeps {rep['flops']['ratio']:.3f} of the FLOPs, target "
             f"{args.target_flops:g}); written because of --allow-miss")
    return 0


_PLAN_OPTIONS = ("batch_size", "val_split", "lr", "threads", "channel_multiple", "max_memory", "device", "dims",
                 "min_resolution", "plan_steps")


def _plan(args) -> int:
    from . import api, report

    options = {k: getattr(args, k) for k in _PLAN_OPTIONS if getattr(args, k) is not None}
    if not sys.stderr.isatty():
        options["progress_bars"] = False
    with _Stages(2) as progress:
        plan = api.plan(args.model, data=args.data, target_flops=args.target_flops,
                        input_shapes=args.input_shape or None, seed=args.seed, output=args.output, png=args.png,
                        progress=progress, data_options=_data_options(args), **options)
    print(report.format_plan(plan))
    for warning in plan.get("warnings", []):
        _err(f"warning: {warning}")
    written = [x for x in (args.output, args.png) if x]
    if written:
        _err("wrote " + " and ".join(written))
    return 0


def _data_options(args):
    """The data options given on the command line (None when none was)."""
    given = {k: getattr(args, k) for k in _DATA_OPTIONS if getattr(args, k, None) is not None}
    if not given:
        return None
    from .data import data_options

    return data_options(**given)


def _bench(args) -> int:
    from smof_onnx.passes.analysis.flops import count_cost

    from . import api, verify
    from .errors import UsageError

    if args.threads < 1 or args.batch < 1 or args.seconds <= 0:
        raise UsageError("--threads and --batch must be >= 1 and --seconds > 0")
    _, a = api.load(args.model)
    shapes = api.resolve_shapes(a, args.input_shape or None)
    from .checks import check_memory

    check_memory(a, api._concrete(a, shapes), batch=args.batch,
                 what="--input-shape" if shapes else "the model's input shape")
    b = api.load(args.model2)[1] if args.model2 is not None else None
    warnings = _not_comparable(args.model, a, args.model2, b, shapes, count_cost) if b is not None else []
    for w in warnings:
        _err(f"warning: {w}")
    with _TimeBar(args.seconds) as tick:
        if args.model2 is None:
            lat = verify.measure_latency(a, shapes, threads=args.threads, batch=args.batch, budget_s=args.seconds,
                                         progress=tick)
            out = {"model": args.model, "median_ms": lat.median_ms, "runs": lat.runs, "threads": lat.threads,
                   "batch": lat.batch}
            text = (f"{args.model}: {lat.median_ms:.3f} ms median over {lat.runs} runs "
                    f"(threads {lat.threads}, batch {lat.batch})")
        else:
            cmp = verify.compare_latency(a, b, shapes, threads=args.threads, batch=args.batch,
                                         budget_s=args.seconds, progress=tick)
            ratio = _flops_ratio(count_cost, a, b, shapes)
            out = {"model": args.model, "model2": args.model2, **cmp.to_dict(), "flops_ratio": ratio,
                   "comparable": not warnings, "warnings": warnings}
            text = cmp.line((args.model, args.model2)) + (f"\nFLOPs ratio {ratio:.3f}" if ratio else "")
    print(json.dumps(out, indent=2) if args.json else text)
    return 0


def _not_comparable(name_a, a, name_b, b, shapes, count_cost) -> list[str]:
    """Why a speedup of ``b`` over ``a`` would mislead: a cut keeps the interface (input / output
    names, dtypes, shapes) and never adds FLOPs, so models that differ so are not one and its cut."""
    from .verify import interface_changes

    out = []
    changes = interface_changes(a, b)
    if changes:
        out.append(f"{name_a} and {name_b} are not comparable: different interfaces ({'; '.join(changes)}); "
                   "the speedup compares unrelated models")
    try:
        ratio = _flops_ratio(count_cost, a, b, shapes)
    except Exception:  # noqa: BLE001 -- FLOPs of an unrelated model may not count at A's shapes
        ratio = None
    if ratio is not None and ratio > 1.01:
        out.append(f"{name_b} has {ratio:.2f}x the FLOPs of {name_a}: it is not a cut of it")
    return out


def _export(args) -> int:
    from . import api
    from .errors import UsageError

    seconds = args.seconds if args.seconds is not None else (3.0 if args.report else 0.0)
    if args.threads < 1 or args.bench_batch < 1 or seconds < 0:
        raise UsageError("--threads and --bench-batch must be >= 1 and --seconds >= 0")
    with _Stages(4) as progress:
        rep = api.export(args.model, args.output, args.to, quantize=args.quantize, data=args.data,
                         input_shapes=args.input_shape or None, report_path=args.report,
                         tflite_python=args.tflite_python, progress=progress, bench_seconds=seconds,
                         bench_batch=args.bench_batch, threads=args.threads, ort_platform=args.ort_platform)
    v, lat = rep["verification"], rep["latency"]
    check = (f"max rel err {v['max_rel_err']:.2e} (<= {v['tol']:g})" if v["kind"] == "fp32" else
             f"top-1 agreement {v['agreement']:.4f} (>= {v['min_agreement']:g})" if "agreement" in v else
             f"rel RMS err {max(v['rel_rms'].values()):.3g} (<= {v['max_rel_rms']:g})")
    lines = [f"{args.to}{' int8' if args.quantize else ''}: verified against ONNX Runtime fp32, {check}"]
    if v.get("accuracy_input") is not None:
        lines.append(f"accuracy on --data: {v['accuracy_input']:.4f} -> {v['accuracy_artifact']:.4f}")
    if lat:
        lines.append(f"latency batch {lat['batch']}: {lat['input_ms']:.3f} ms ({lat['input_on']}, input) -> "
                     f"{lat['artifact_ms']:.3f} ms (export), speedup {lat['speedup']:.2f}x")
    print("\n".join(lines))
    _err("wrote " + " and ".join(rep["files"] + ([args.report] if args.report else [])))
    return 0


def _flops_ratio(count_cost, a, b, shapes) -> float | None:
    before, after = count_cost(a, shapes).flops, count_cost(b, shapes).flops
    return after / before if before else None


# --- progress on stderr ------------------------------------------------------------------------

def _err(message: str) -> None:
    print(f"smof-onnx: {message}", file=sys.stderr)


class _Stages:
    """A tqdm bar over the named stages of a command on a terminal; plain lines otherwise."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, file=sys.stderr, leave=False, disable=None,
                        bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}]")
        return self

    def __call__(self, message: str) -> None:
        if self.bar is None or self.bar.disable:
            _err(message)
            return
        self.bar.set_description_str(message)
        self.bar.update(1)

    def __exit__(self, *exc):
        self.bar.close()


class _TimeBar:
    """A tqdm bar over a time budget; ``tick(fraction)`` moves it."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=100, file=sys.stderr, leave=False, disable=None, desc="timing",
                        bar_format="{desc} {bar} {elapsed}")
        return self.tick

    def tick(self, fraction: float) -> None:
        target = min(100, int(fraction * 100))
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def __exit__(self, *exc):
        self.bar.close()
