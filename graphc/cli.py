"""The ``graphc`` command: argument parsing and printing over the Python API, nothing more.

    graphc opt IN -p PIPELINE -o OUT [--data D] [--input-shape x:1x3x224x224] [--verify] ...
    graphc inspect IN [--input-shape ...] [--json]
    graphc verify REF CAND [--data D] [--rtol ...] [--localize] [--json]
    graphc bench A [B] [--data D | --input-shape ...] [--threads 2] [--rounds 30]
    graphc passes [--markdown | --json]

Exit codes: 0 ok; 1 verification failed; 2 bad input or usage; 130 interrupted. Errors are one
line on stderr, ``graphc: error: <message>``; ``--debug`` adds the traceback. The human report
goes to stdout (``-q`` silences it), logging to stderr (``-v`` for INFO).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from graphc import __version__
from graphc.errors import GraphcError, OutputError

log = logging.getLogger("graphc.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(GraphcError):
    """The command line itself is wrong (argparse's complaints, malformed --input-shape)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- argument types -------------------------------------------------------------------------------

def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``name:1x3x224x224`` (the name may itself contain colons)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name or not dims:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME:DIMS (e.g. x:1x3x224x224)")
    try:
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': dims must be integers separated by 'x'") from None
    if any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(f"'{text}': dims must be >= 0")
    return name, shape


def _number(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"{text} is outside {bounds}")
        return value
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _shapes(pairs: list[tuple[str, tuple[int, ...]]] | None) -> dict[str, tuple[int, ...]] | None:
    return dict(pairs) if pairs else None


# -- parser ---------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", help="no report on stdout; log errors only")
    g.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) to stderr")
    g.add_argument("--debug", action="store_true", help="DEBUG logging and tracebacks on errors")


def _data_options(p: argparse.ArgumentParser, samples: bool = True) -> None:
    p.add_argument("--data", metavar="D", help=".npz (keys = input names), folder of .npy/.npz or images")
    p.add_argument("--input-shape", metavar="NAME:DIMS", type=input_shape, action="append",
                   help="concrete shape of a dynamic input for random data and MAC counts, e.g. "
                        "x:1x3x224x224 (repeatable; the model itself is not specialized)")
    p.add_argument("--seed", type=int, default=0, help="seed of random inputs (default 0)")
    if samples:
        p.add_argument("--samples", type=_positive_int, default=8, help="inputs compared (default 8)")


def _tolerance_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tolerances (exact mode: rtol/atol; any --min-* alone: lossy mode)")
    g.add_argument("--rtol", type=_number(0.0), help="relative tolerance (default 1e-5)")
    g.add_argument("--atol", type=_number(0.0), help="absolute tolerance (default 1e-6)")
    g.add_argument("--min-sqnr", type=_number(), metavar="DB", help="minimum SQNR in dB per output")
    g.add_argument("--min-cosine", type=_number(-1.0, 1.0), help="minimum cosine similarity per output")
    g.add_argument("--min-top1", type=_number(0.0, 1.0), help="minimum top-1 agreement (fraction)")
    g.add_argument("--localize", action="store_true", help="on failure, name the first diverging node")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphc", description="ONNX graph-rewriting compiler.")
    parser.add_argument("--version", action="version", version=f"graphc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    opt = sub.add_parser("opt", help="run a pass pipeline over a model")
    opt.add_argument("input", metavar="IN")
    opt.add_argument("-p", "--pipeline", required=True, help="e.g. 'fold-bn,cleanup' (see graphc passes)")
    opt.add_argument("-o", "--output", required=True, metavar="OUT")
    _data_options(opt)
    opt.add_argument("--verify", action="store_true", help="compare the result with the input model")
    opt.add_argument("--verify-each", action="store_true", help="compare before and after every pass")
    _tolerance_options(opt)
    opt.add_argument("--keep-failed", action="store_true", help="write OUT even if verification fails")
    opt.add_argument("--report", metavar="R", help="write a report: R.json or R.md")
    _common(opt)

    insp = sub.add_parser("inspect", help="describe a model: I/O, opsets, ops, params, size, MACs")
    insp.add_argument("input", metavar="IN")
    insp.add_argument("--input-shape", metavar="NAME:DIMS", type=input_shape, action="append")
    insp.add_argument("--top", type=_positive_int, default=10, help="MAC-heaviest nodes listed")
    insp.add_argument("--json", action="store_true")
    _common(insp)

    ver = sub.add_parser("verify", help="compare two models' outputs in onnxruntime (exit 1 on failure)")
    ver.add_argument("reference", metavar="REF")
    ver.add_argument("candidate", metavar="CAND")
    _data_options(ver)
    _tolerance_options(ver)
    ver.add_argument("--json", action="store_true")
    _common(ver)

    bench = sub.add_parser("bench", help="latency of A, or of A against B (alternated runs)")
    bench.add_argument("a", metavar="A")
    bench.add_argument("b", metavar="B", nargs="?")
    _data_options(bench, samples=False)
    bench.add_argument("--threads", type=_positive_int, default=2)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--rounds", type=_positive_int, default=30, help="timed runs of each model")
    bench.add_argument("--json", action="store_true")
    _common(bench)

    passes = sub.add_parser("passes", help="list every pass and its options")
    fmt = passes.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true")
    fmt.add_argument("--json", action="store_true")
    _common(passes)
    return parser


# -- commands -------------------------------------------------------------------------------------

def _tolerances(args: argparse.Namespace) -> Any:
    from graphc.verify import Tolerances

    return Tolerances.from_options(rtol=args.rtol, atol=args.atol, min_sqnr=args.min_sqnr,
                                   min_cosine=args.min_cosine, min_top1=args.min_top1)


def _check_paths(args: argparse.Namespace) -> Path:
    src, out = Path(args.input), Path(args.output)
    if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
        raise OutputError(f"{out}: refusing to overwrite the input model")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder '{out.parent}' does not exist")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder")
    if args.report is not None:
        from graphc.report import report_format

        report = Path(args.report)
        report_format(report)
        if report.resolve() in (src.resolve(), out.resolve()):
            raise OutputError(f"{report}: the report would overwrite a model")
        if not report.parent.is_dir():
            raise OutputError(f"{report}: folder '{report.parent}' does not exist")
    return out


def cmd_opt(args: argparse.Namespace) -> int:
    """Run the pipeline. ``--input-shape`` feeds verification and MAC counts only: the passes see
    the model's declared shapes, so a dynamic model stays valid for every shape it declares."""
    import graphc
    from graphc.calib.data import open_data
    from graphc.report import build_report, model_summary, write_report
    from graphc.report.text import opt_text
    from graphc.verify import compare_models, evaluation_data

    pipeline = graphc.parse_pipeline(args.pipeline)  # fail before any work
    if args.localize and not args.verify:
        raise UsageError("--localize needs --verify")
    tolerances, shapes = _tolerances(args), _shapes(args.input_shape)
    out = _check_paths(args)
    model = graphc.load(args.input)
    before = model_summary(model, path=args.input, input_shapes=shapes)
    data = open_data(args.data, model) if args.data else None
    verify_data = None
    if args.verify_each and data is None:
        verify_data = evaluation_data(model, None, input_shapes=shapes, samples=args.samples, seed=args.seed)
    run = graphc.PassManager(pipeline, data=data, verify_each=args.verify_each, tolerances=tolerances,
                             input_shapes=shapes, seed=args.seed, verify_data=verify_data).run(model)
    verification = None
    if args.verify:
        verification = compare_models(args.input, model, data=args.data, tolerances=tolerances,
                                      input_shapes=shapes, seed=args.seed, samples=args.samples,
                                      localize=args.localize)
    written = verification is None or verification.passed or args.keep_failed
    if written:
        graphc.save(model, out)
    after = model_summary(model, path=out if written else None, input_shapes=shapes)
    settings = {"data": args.data, "input_shapes": shapes, "seed": args.seed, "samples": args.samples,
                "verify_each": args.verify_each, "tolerances": tolerances.to_dict()}
    report = build_report(input_path=args.input, output_path=out, run=run, before=before, after=after,
                          verification=verification, output_written=written, settings=settings)
    if args.report:
        write_report(report, args.report)
    _say(args, opt_text(report))
    return EXIT_OK if verification is None or verification.passed else EXIT_FAILED


def cmd_inspect(args: argparse.Namespace) -> int:
    import graphc
    from graphc.report import model_summary
    from graphc.report.text import inspect_text

    model = graphc.load(args.input)
    summary = model_summary(model, path=args.input, input_shapes=_shapes(args.input_shape), top=args.top)
    _say(args, json.dumps(summary, indent=2, ensure_ascii=False) if args.json else inspect_text(summary))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from graphc.report.text import verify_text
    from graphc.verify import compare_models

    report = compare_models(args.reference, args.candidate, data=args.data, tolerances=_tolerances(args),
                            input_shapes=_shapes(args.input_shape), seed=args.seed, samples=args.samples,
                            localize=args.localize)
    data = report.to_dict()
    _say(args, json.dumps(data, indent=2, allow_nan=False) if args.json else verify_text(data))
    return EXIT_OK if report.passed else EXIT_FAILED


def cmd_bench(args: argparse.Namespace) -> int:
    from graphc.bench import bench_feeds, compare_latency, measure_latency
    from graphc.report.text import bench_text

    feeds = bench_feeds(args.a, args.data, input_shapes=_shapes(args.input_shape), seed=args.seed)
    if args.b is None:
        result = measure_latency(args.a, feeds, threads=args.threads, warmup=args.warmup,
                                 repeats=args.rounds).to_dict()
    else:
        result = compare_latency(args.a, args.b, feeds, threads=args.threads, warmup=args.warmup,
                                 rounds=args.rounds).to_dict()
    names = (args.a,) if args.b is None else (args.a, args.b)
    _say(args, json.dumps(result, indent=2, allow_nan=False) if args.json else bench_text(result, names))
    return EXIT_OK


def cmd_passes(args: argparse.Namespace) -> int:
    from graphc.report.markdown import passes_markdown
    from graphc.report.passes import pass_catalog
    from graphc.report.text import passes_text

    catalog = pass_catalog()
    if args.json:
        _say(args, json.dumps(catalog, indent=2))
    else:
        _say(args, passes_markdown(catalog).rstrip() if args.markdown else passes_text(catalog))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "opt": cmd_opt, "inspect": cmd_inspect, "verify": cmd_verify, "bench": cmd_bench, "passes": cmd_passes,
}


# -- main -----------------------------------------------------------------------------------------

def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else \
        logging.ERROR if args.quiet else logging.WARNING
    logger = logging.getLogger("graphc")
    for handler in [h for h in logger.handlers if getattr(h, "_graphc_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)  # the current stderr, also when tests swap it
    handler.setFormatter(logging.Formatter("graphc: %(levelname)s: %(message)s"))
    handler._graphc_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)


def _error(message: str) -> None:
    text = " ".join(str(message).split()) or "unknown error"
    print(f"graphc: error: {text}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help(sys.stderr)
            return EXIT_USAGE
        _setup_logging(args)
        with warnings.catch_warnings():
            if not (args.verbose or args.debug):
                warnings.simplefilter("ignore")  # library warnings would break the one-line contract
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("graphc: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except GraphcError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the contract is one line, not a traceback
        if debug:
            traceback.print_exc()
        _error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return EXIT_USAGE


def run_main() -> None:  # pragma: no cover - what a `python -m graphc.cli` would call
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run_main()
