"""The ``graphc`` command: argument parsing and printing over the Python API, nothing more.

    graphc opt IN -p PIPELINE -o OUT [--data D] [--verify] [--min-sqnr DB] [--report R.html] ...
    graphc opt IN --recipe deploy.toml [flags that override the recipe]
    graphc inspect IN [--input-shape ...] [--json | --groups [--dot G.dot]]
    graphc verify REF CAND [--data D] [--labels L] [--rtol ...] [--localize] [--json]
    graphc bench A [B] [--data D | --input-shape ...] [--threads 2] [--rounds 30]
    graphc passes [--markdown | --json]

``graphc opt`` is :func:`graphc.build.build` over a :class:`graphc.recipe.Recipe` made of the
recipe file and the flags given (``OPT_FLAGS`` maps each flag to its recipe key).

Exit codes: 0 ok; 1 verification or a gate failed; 2 bad input or usage; 130 interrupted. Errors
are one line on stderr, ``graphc: error: <message>``; ``--debug`` adds the traceback. The human
report goes to stdout (``-q`` silences it), logging to stderr (``-v`` for INFO), progress bars to
stderr when it is a terminal (``-q`` turns them off).

Size: the argument tables of every command and one thin handler each; the work is in the API.
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
from graphc.errors import GraphcError

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
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.recipe import parse_input_shape

    try:
        return parse_input_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def input_shape_text(text: str) -> str:
    """An ``--input-shape`` kept as text (the recipe's spelling), after checking that it parses."""
    input_shape(text)
    return text


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


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be at least {low}")
        return value
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None


def _shapes(pairs: list[tuple[str, tuple[int, ...]]] | None) -> dict[str, tuple[int, ...]] | None:
    return dict(pairs) if pairs else None


# -- parser ---------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", help="no report on stdout, no progress; log errors only")
    g.add_argument("-v", "--verbose", action="store_true", help="log what happens (INFO) to stderr")
    g.add_argument("--debug", action="store_true", help="DEBUG logging and tracebacks on errors")


def _data_options(p: argparse.ArgumentParser, samples: bool = True) -> None:
    p.add_argument("--data", metavar="D", help=".npz (keys = input names), folder of .npy/.npz or images")
    p.add_argument("--input-shape", metavar="NAME:DIMS", type=input_shape, action="append",
                   help="concrete shape of a dynamic input for random data and MAC counts, e.g. "
                        "x:1x3x224x224 (repeatable; the model itself is not specialized)")
    p.add_argument("--seed", type=int, default=0, help="seed of random inputs (default 0)")
    if samples:
        p.add_argument("--samples", type=_positive_int, default=8, help="inputs compared (default 8)")


def _image_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image folders (data given as a folder of images)")
    g.add_argument("--image-size", metavar="HxW", help="resize images to HxW")
    g.add_argument("--image-height", type=_positive_int, metavar="H", help="or keep the aspect: resize to height H")
    g.add_argument("--image-max-width", type=_positive_int, metavar="W", help="... capping the width at W")
    g.add_argument("--no-image-pad", dest="image_pad", action="store_false", default=None,
                   help="do not pad the width to --image-max-width")
    g.add_argument("--mean", type=_floats, metavar="M,M,M", help="per-channel mean subtracted (after scaling)")
    g.add_argument("--std", type=_floats, metavar="S,S,S", help="per-channel std divided by")
    g.add_argument("--image-scale", type=_number(), metavar="F", help="pixel scale first (default 1/255)")
    g.add_argument("--layout", choices=("nchw", "nhwc"), help="tensor layout of the model's input (default nchw)")
    g.add_argument("--channels", choices=("rgb", "bgr"), help="colour order (default rgb)")


#: image flag (argparse dest) -> key of the recipe's [image] section.
IMAGE_FLAGS = {"image_size": "size", "image_height": "height", "image_max_width": "max_width",
               "image_pad": "pad", "mean": "mean", "std": "std", "image_scale": "scale", "layout": "layout",
               "channels": "channels"}


def _image_settings(args: argparse.Namespace) -> Any:
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.recipe import ImageSettings

    return ImageSettings(**{key: getattr(args, dest) for dest, key in IMAGE_FLAGS.items()
                            if getattr(args, dest) is not None})


def _tolerance_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tolerances (exact mode: rtol/atol; any --min-* alone: lossy mode)")
    g.add_argument("--rtol", type=_number(0.0), help="relative tolerance (default 1e-5)")
    g.add_argument("--atol", type=_number(0.0), help="absolute tolerance (default 1e-6)")
    g.add_argument("--min-sqnr", type=_number(), metavar="DB", help="minimum SQNR in dB per output")
    g.add_argument("--min-cosine", type=_number(-1.0, 1.0), help="minimum cosine similarity per output")
    g.add_argument("--min-top1", type=_number(0.0, 1.0), help="minimum top-1 agreement (fraction)")
    g.add_argument("--localize", action="store_true", help="on failure, name the first diverging node")


def _executor_text(text: str) -> str:
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.executor import executor_from
    from graphc.errors import ExecutorError

    try:
        executor_from(text)
    except ExecutorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _executor_option(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--executor", type=_executor_text, default=default, metavar="local|ray|ray://HOST:PORT",
                   help="where searches run (quant budget, sensitivity): local processes (default), Ray on "
                        "this machine, or a Ray cluster (pip install 'graphc[ray]')")


def _opt_data(opt: argparse.ArgumentParser) -> None:
    g = opt.add_argument_group("data")
    g.add_argument("--data", metavar="D", help="calibration data: .npz (keys = input names), folder of "
                                               ".npy/.npz, or images")
    g.add_argument("--eval-data", metavar="E", help="evaluation data (default: --data, else random inputs)")
    g.add_argument("--labels", metavar="FILE[:KEY]", help="class labels of the evaluation data for the task "
                                                          "metric (default: key 'labels' of an .npz)")
    g.add_argument("--input-shape", metavar="NAME:DIMS", type=input_shape_text, action="append",
                   help="concrete shape of a dynamic input for random data and MAC counts (repeatable)")
    g.add_argument("--seed", type=int, help="seed of random inputs (default 0)")
    g.add_argument("--samples", type=_positive_int, help="evaluation samples compared (default 8)")


def _opt_checks(opt: argparse.ArgumentParser) -> None:
    # every default is None: only the flags given override the recipe (see OPT_FLAGS)
    g = opt.add_argument_group("verification")
    g.add_argument("--verify", action="store_true", default=None, help="compare the result with the input")
    g.add_argument("--verify-each", action="store_true", default=None, help="compare before and after each pass")
    g.add_argument("--rtol", type=_number(0.0), help="relative tolerance (default 1e-5)")
    g.add_argument("--atol", type=_number(0.0), help="absolute tolerance (default 1e-6)")
    g.add_argument("--localize", action="store_true", default=None, help="on failure, name the first diverging node")
    g = opt.add_argument_group("gates (a failed gate exits 1 and writes no model unless --keep-failed)")
    g.add_argument("--min-sqnr", type=_number(), metavar="DB", help="minimum SQNR in dB of every output")
    g.add_argument("--min-cosine", type=_number(-1.0, 1.0), help="minimum cosine similarity of every output")
    g.add_argument("--min-top1", type=_number(0.0, 1.0), help="minimum top-1 agreement (fraction)")
    g.add_argument("--max-top1-drop", type=_number(0.0, 1.0), metavar="F",
                   help="maximum accuracy drop with labels, else top-1 disagreement (fraction)")
    g.add_argument("--min-speedup", type=_number(0.0), metavar="X", help="minimum latency ratio input/result")
    g.add_argument("--min-metric", type=_number(), metavar="V",
                   help="minimum task metric of the result (maximum when lower is better)")
    g.add_argument("--max-metric-drop", type=_number(0.0), metavar="D",
                   help="maximum task metric lost against the input, in the metric's units")
    g = opt.add_argument_group("task metric (graphc.verify.user_metric)")
    g.add_argument("--metric", metavar="MODULE:FUNCTION",
                   help="score outputs with this callable, e.g. graphc.task_metrics:ctc_cer")
    g.add_argument("--metric-arg", metavar="KEY=VALUE", action="append",
                   help="an argument of the metric, e.g. charset=keys.txt (repeatable)")
    g = opt.add_argument_group("benchmark")
    g.add_argument("--bench", action="store_true", default=None, help="measure the latency of input and result")
    g.add_argument("--bench-threads", type=_positive_int, help="intra-op threads (default 2)")
    g.add_argument("--bench-rounds", type=_positive_int, help="alternated timed runs of each (default 30)")
    g.add_argument("--bench-warmup", type=_non_negative_int, help="untimed runs of each first (default 5)")


def _opt_parser(sub: Any) -> None:
    opt = sub.add_parser("opt", help="run a pass pipeline over a model (a build step with --recipe)")
    opt.add_argument("input", metavar="IN")
    opt.add_argument("-p", "--pipeline", help="e.g. 'fold-bn,cleanup' (see graphc passes)")
    opt.add_argument("-o", "--output", metavar="OUT")
    opt.add_argument("--recipe", metavar="R.toml", help="the build step's settings; flags override them "
                                                        "(docs/recipes.md)")
    opt.add_argument("--write-recipe", metavar="R.toml", help="write the settings given (recipe and flags) "
                                                              "as a recipe, then exit")
    _opt_data(opt)
    _image_options(opt)
    _opt_checks(opt)
    g = opt.add_argument_group("outputs")
    g.add_argument("--report", metavar="R", help="write a report: R.html, R.md or R.json")
    g.add_argument("--keep-failed", action="store_true", default=None, help="write OUT even if a check fails")
    g.add_argument("--histogram", metavar="TENSOR", action="append",
                   help="plot this tensor's activation histogram in the report (repeatable)")
    g.add_argument("--no-layer-errors", dest="layer_errors", action="store_false", default=None,
                   help="do not measure each layer's error for the report")
    g = opt.add_argument_group("limits")
    g.add_argument("--max-seconds", type=_number(0.001), metavar="S",
                   help="wall-clock limit of each pass; a pass over it stops the build and nothing is written")
    _executor_option(opt)
    _common(opt)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphc", description="ONNX graph-rewriting compiler.")
    parser.add_argument("--version", action="version", version=f"graphc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _opt_parser(sub)

    insp = sub.add_parser("inspect", help="describe a model: I/O, opsets, ops, params, size, MACs")
    insp.add_argument("input", metavar="IN")
    insp.add_argument("--input-shape", metavar="NAME:DIMS", type=input_shape, action="append")
    insp.add_argument("--top", type=_positive_int, default=10, help="MAC-heaviest nodes listed")
    insp.add_argument("--groups", action="store_true", help="channel groups: what can be pruned together, "
                                                            "and why not")
    insp.add_argument("--attention", choices=("heads", "head-dims"), default="heads",
                      help="with --groups: prune attention by whole heads or by head dimension")
    insp.add_argument("--dot", metavar="FILE.dot", help="with --groups: write the channel dependency graph "
                                                        "(Graphviz)")
    insp.add_argument("--json", action="store_true")
    _common(insp)

    ver = sub.add_parser("verify", help="compare two models' outputs in onnxruntime (exit 1 on failure)")
    ver.add_argument("reference", metavar="REF")
    ver.add_argument("candidate", metavar="CAND")
    _data_options(ver)
    ver.add_argument("--labels", metavar="FILE[:KEY]", help="class labels of --data: both models' accuracy "
                                                            "(default: key 'labels' of a --data .npz)")
    _image_options(ver)
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

    sens = sub.add_parser("sensitivity", help="output error (SQNR) when each channel group alone is pruned")
    sens.add_argument("input", metavar="IN")
    sens.add_argument("--data", metavar="D", required=True,
                      help=".npz (keys = input names), folder of .npy/.npz or images")
    sens.add_argument("--ratios", type=_floats, default=(0.25, 0.5, 0.75), metavar="R,R,...",
                      help="fractions of each group pruned, in (0, 1) (default 0.25,0.5,0.75)")
    sens.add_argument("--criterion", default="l1", metavar="NAME",
                      help="channel importance, as prune's criterion= (default l1)")
    sens.add_argument("--samples", type=_positive_int, default=16, help="calibration feeds used (default 16)")
    _image_options(sens)
    sens.add_argument("--json", action="store_true")
    _executor_option(sens, default="local")
    _common(sens)

    swp = sub.add_parser("sweep", help="many models x many recipes as one job: every output, one summary "
                                       "table with the Pareto front; re-runs skip finished combinations")
    swp.add_argument("--model", metavar="IN", nargs="+", required=True, help="the models")
    swp.add_argument("--recipe", metavar="R.toml", nargs="+", required=True, help="the recipes")
    swp.add_argument("-o", "--output", metavar="DIR", required=True,
                     help="folder of the outputs (DIR/<model>--<recipe>/) and summary.{json,md,html}")
    swp.add_argument("--bench", action="store_true", help="measure every result's latency")
    _executor_option(swp, default="local")
    _common(swp)

    passes = sub.add_parser("passes", help="list every pass and its options")
    fmt = passes.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="the pass reference, as in docs/passes.md")
    fmt.add_argument("--json", action="store_true")
    _common(passes)
    return parser


# -- commands -------------------------------------------------------------------------------------

def _tolerances(args: argparse.Namespace) -> Any:
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.verify import Tolerances

    return Tolerances.from_options(rtol=args.rtol, atol=args.atol, min_sqnr=args.min_sqnr,
                                   min_cosine=args.min_cosine, min_top1=args.min_top1)


#: ``graphc opt`` flag (argparse dest) -> recipe key; a flag given overrides the recipe.
OPT_FLAGS = {
    "pipeline": "pipeline", "executor": "executor", "output": "outputs.model", "report": "outputs.report",
    "keep_failed": "outputs.keep_failed", "histogram": "outputs.histograms",
    "data": "data.calibration", "eval_data": "data.evaluation", "labels": "data.labels",
    "input_shape": "data.input_shapes", "seed": "data.seed", "samples": "data.samples",
    **{dest: f"image.{key}" for dest, key in IMAGE_FLAGS.items()},
    "verify": "verify.enabled", "verify_each": "verify.each", "rtol": "verify.rtol", "atol": "verify.atol",
    "localize": "verify.localize", "min_sqnr": "gates.min_sqnr", "min_cosine": "gates.min_cosine",
    "min_top1": "gates.min_top1", "max_top1_drop": "gates.max_top1_drop", "min_speedup": "gates.min_speedup",
    "bench": "bench.enabled", "bench_threads": "bench.threads", "bench_rounds": "bench.rounds",
    "bench_warmup": "bench.warmup", "layer_errors": "outputs.layer_errors",
    "min_metric": "gates.min_metric", "max_metric_drop": "gates.max_metric_drop",
    "metric": "metric.function", "metric_arg": "metric.args",
    "max_seconds": "limits.max_seconds",
}


def opt_recipe(args: argparse.Namespace) -> Any:
    """The recipe file (if any) with every flag given on the command line put over it."""
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.recipe import Recipe, load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else Recipe()
    given = {key: getattr(args, dest) for dest, key in OPT_FLAGS.items() if getattr(args, dest) is not None}
    for key in ("data.input_shapes", "outputs.histograms", "metric.args"):
        if key in given:
            given[key] = tuple(given[key])
    return recipe.updated(given)


def cmd_opt(args: argparse.Namespace) -> int:
    """Run the build step (:func:`graphc.build.build`). ``--input-shape`` feeds verification and
    MAC counts only: the passes see the model's declared shapes, so a dynamic model stays valid
    for every shape it declares."""
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.build import build, data_files
    from graphc.ir.output_safety import OutputPlan, ProtectedFiles
    from graphc.recipe import save_recipe
    from graphc.report.text import opt_text

    recipe = opt_recipe(args)
    if args.write_recipe:
        protected = ProtectedFiles.of_model_file(args.input, others=data_files(recipe))
        OutputPlan(protected).add(args.write_recipe, "the recipe")
        path = save_recipe(recipe.rebased(Path.cwd()), args.write_recipe)
        _say(args, f"wrote {path}")
        return EXIT_OK
    outcome = build(args.input, recipe)
    text = opt_text(outcome.report)
    if recipe.outputs.report:
        text += f"\nreport: {recipe.outputs.report}"
    _say(args, text)
    return EXIT_FAILED if outcome.passed is False else EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    # lazy: a command imports only what it needs (CLI start-up time)
    import graphc
    from graphc.report import model_summary
    from graphc.report.text import inspect_text

    if args.dot and not args.groups:
        raise UsageError("--dot needs --groups")
    if args.groups and args.json:
        raise UsageError("--groups is text only; leave out --json")
    if args.dot:
        # lazy: a command imports only what it needs (CLI start-up time)
        from graphc.ir.output_safety import OutputPlan, ProtectedFiles, check_writable

        OutputPlan(ProtectedFiles.of_model_file(args.input)).add(check_writable(args.dot), "the DOT graph")
    model = graphc.load(args.input)
    summary = model_summary(model, path=args.input, input_shapes=_shapes(args.input_shape), top=args.top)
    text = json.dumps(summary, indent=2, ensure_ascii=False) if args.json else inspect_text(summary)
    if args.groups:
        text += "\n" + _groups_text(model, args)
    _say(args, text)
    return EXIT_OK


def _groups_text(model: Any, args: argparse.Namespace) -> str:
    """The channel-group report of :mod:`graphc.analysis` (and its DOT graph with --dot)."""
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.passmanager import Context
    from graphc.analysis import (BodyChannelGroups, BodyChannelGroupsByHeadDim, ChannelGroups,
                                 ChannelGroupsByHeadDim, format_groups, to_dot)

    heads = args.attention == "heads"
    ctx = Context(model, input_shapes=_shapes(args.input_shape))
    analysis = ctx.analysis(ChannelGroups if heads else ChannelGroupsByHeadDim)
    bodies = ctx.analysis(BodyChannelGroups if heads else BodyChannelGroupsByHeadDim)
    if args.dot:
        to_dot(analysis, args.dot)
    text = "\n".join([format_groups(analysis)] + [format_groups(body) for body in bodies])
    return text + (f"\nwrote {args.dot} (top graph)" if args.dot and bodies else f"\nwrote {args.dot}" if args.dot else "")


def cmd_verify(args: argparse.Namespace) -> int:
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.build import image_options
    from graphc.calib.data import open_data
    from graphc.report.text import verify_text
    from graphc.verify import compare_models, open_model

    images = image_options(_image_settings(args))
    data = None
    if args.data:
        data = open_data(args.data, open_model(args.reference)[0], image_options=images)
    report = compare_models(args.reference, args.candidate, data=data, tolerances=_tolerances(args),
                            input_shapes=_shapes(args.input_shape), seed=args.seed, samples=args.samples,
                            localize=args.localize)
    result = report.to_dict()
    result["accuracy"] = _verify_accuracy(args, data)
    _say(args, json.dumps(result, indent=2, allow_nan=False) if args.json else verify_text(result))
    return EXIT_OK if report.passed else EXIT_FAILED


def _verify_accuracy(args: argparse.Namespace, data: Any) -> dict[str, Any] | None:
    """Both models' accuracy when labels are given (or held by the --data .npz)."""
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.report import jsonable
    from graphc.verify.accuracy import has_labels, load_labels, task_accuracy

    labels = args.labels or (args.data if args.data and has_labels(args.data) else None)
    if labels is None:
        return None
    if data is None:
        raise UsageError("--labels needs --data: the labelled samples, in the same order")
    return jsonable(task_accuracy(args.reference, args.candidate, data, load_labels(labels)).to_dict())


def cmd_bench(args: argparse.Namespace) -> int:

    # lazy: a command imports only what it needs (CLI start-up time)
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
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.report.markdown import passes_markdown
    from graphc.report.passes import pass_catalog
    from graphc.report.text import passes_text

    catalog = pass_catalog()
    if args.json:
        _say(args, json.dumps(catalog, indent=2))
    else:
        _say(args, passes_markdown(catalog).rstrip() if args.markdown else passes_text(catalog))
    return EXIT_OK


def cmd_sensitivity(args: argparse.Namespace) -> int:
    # lazy: a command imports only what it needs (CLI start-up time)
    import graphc
    from graphc.passes.prune.sensitivity import format_sensitivity, measure_sensitivity
    from graphc.build import image_options
    from graphc.calib.data import open_data
    from graphc.executor import executor_from, using

    model = graphc.load(args.input)
    data = open_data(args.data, model, image_options=image_options(_image_settings(args)))
    with using(executor_from(args.executor)):
        report = measure_sensitivity(model, data, ratios=args.ratios, criterion=args.criterion,
                                     samples=args.samples)
    _say(args, json.dumps(report.to_dict(), indent=2) if args.json else format_sensitivity(report))
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.executor import executor_from
    from graphc.sweep import summary_markdown, sweep

    for path in args.model + args.recipe:
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file")
    summary = sweep(args.model, args.recipe, args.output, bench=args.bench, executor=executor_from(args.executor))
    _say(args, summary_markdown(summary.rows).rstrip() + f"\n{summary.ran} run, {summary.skipped} already "
               f"finished; summary: {Path(args.output) / 'summary.html'}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "opt": cmd_opt, "inspect": cmd_inspect, "verify": cmd_verify, "bench": cmd_bench, "passes": cmd_passes,
    "sensitivity": cmd_sensitivity, "sweep": cmd_sweep,
}


# -- main -----------------------------------------------------------------------------------------

def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


class InputNotesOnce(logging.Filter):
    """Lets each of load's notes about the input (``input: ...``: functions inlined, declarations
    repaired) through once per command: a run reads its input again (the reference for
    verification, the per-layer error, the report), and every read would repeat them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith("input: "):
            return True
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else \
        logging.ERROR if args.quiet else logging.WARNING
    logger = logging.getLogger("graphc")
    for handler in [h for h in logger.handlers if getattr(h, "_graphc_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)  # the current stderr, also when tests swap it
    handler.setFormatter(logging.Formatter("graphc: %(levelname)s: %(message)s"))
    handler._graphc_cli = True  # type: ignore[attr-defined]
    handler.addFilter(InputNotesOnce())  # a new handler per command: once per run
    logger.addHandler(handler)
    logger.setLevel(level)


def _error(message: str) -> None:
    text = " ".join(str(message).split()) or "unknown error"
    print(f"graphc: error: {text}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (see the module docstring)."""
    # lazy: a command imports only what it needs (CLI start-up time)
    from graphc.progress import set_progress

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logger = logging.getLogger("graphc")
    level_before = logger.level
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help(sys.stderr)
            return EXIT_USAGE
        _setup_logging(args)
        set_progress(False if args.quiet else None)
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
    finally:  # an in-process call (a build script, a test) leaves the caller's logging as it was
        for handler in [h for h in logger.handlers if getattr(h, "_graphc_cli", False)]:
            logger.removeHandler(handler)
        logger.setLevel(level_before)


def run_main() -> None:  # pragma: no cover - what a `python -m graphc.cli` would call
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run_main()
