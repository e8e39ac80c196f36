"""The ``finessl`` command. Heavy imports happen inside each command, so --help is instant."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path

log = logging.getLogger("finessl")

# finessl.active.strategies' registry, default first (a test keeps the two equal): named here so
# that building the parser (``--help``) does not import torch and scikit-learn.
SUGGEST_STRATEGIES = ("auto", "balanced", "entropy", "kcenter", "margin", "probcover", "random",
                      "typiclust")


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """``--train.steps 100 --model.peft=bitfit`` -> ``{"train.steps": "100", ...}``."""
    from finessl.errors import ConfigError

    overrides: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}; overrides look like --train.steps 100")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(tokens):
            value = tokens[i + 1]
            i += 2
        else:
            raise ConfigError(f"option {token} needs a value")
        overrides[key] = value
    return overrides


def split_dotted(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the rest, the ``--section.key [VALUE]`` overrides) of a command line: taken out before
    argparse, so that a value is never read as one of a command's positional paths."""
    rest, dotted, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        name = token[2:].split("=", 1)[0]
        if token.startswith("--") and "." in name and not name.startswith("."):
            takes = "=" not in token and i + 1 < len(argv)
            dotted += argv[i:i + 1 + takes]
            i += 1 + takes
        else:
            rest.append(token)
            i += 1
    return rest, dotted


def _resolve_config(args, overrides: dict[str, str], default=None, run=None):
    """The configuration of a command: preset / config file / the resumed ``run`` (a
    RunDir) / ``default``, with the overrides; resolved once (``builder.as_config``), so
    the library functions the command calls do not check it again."""
    from finessl.builder import as_config
    from finessl.config import load_config, load_preset
    from finessl.errors import ConfigError

    if run is not None:
        if args.preset or args.config:
            raise ConfigError("--resume continues a run with its own config; give overrides only")
        return as_config(run.resume_config(), overrides)
    if args.preset and args.config:
        raise ConfigError("give either --preset or --config, not both")
    if args.config:
        return as_config(load_config(args.config, overrides))
    if args.preset:
        return as_config(load_preset(args.preset, overrides))
    if default is None:
        raise ConfigError("choose a configuration: --preset NAME (see 'finessl presets') or --config FILE")
    return as_config(default, overrides)


class TqdmProgress:
    """A progress bar with loss, accuracy, learning rate and ETA (terminal only)."""

    def __init__(self) -> None:
        self.bar = None
        self.top1 = None

    def on_train_start(self, total_steps: int, start_step: int, images_per_step: int = 0,
                       info: dict | None = None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def on_step(self, step: int, logs: dict[str, float]) -> None:
        shown = {k: f"{logs[k]:.3g}" for k in ("loss", "mask", "lr") if k in logs}
        if self.top1 is not None:
            shown["top1"] = f"{self.top1:.2f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def on_eval(self, step: int, metrics: dict) -> None:
        self.top1 = metrics.get("top1")
        estimate = (f"  estimated top1 {metrics['estimated_top1']:.1f} (no labels)"
                    if metrics.get("estimated_top1") is not None else "")
        if self.top1 is None:
            self.bar.write(f"step {step}: no test set{estimate}")
            return
        self.bar.write(f"step {step}: top1 {metrics['top1']:.2f}  balanced "
                       f"{metrics['balanced_acc']:.2f}  ece {metrics['ece']:.4f}{estimate}")

    def on_train_end(self, final: dict) -> None:
        self.bar.close()


def _progress(every: int):
    from finessl.engine.callbacks import LogProgress

    return TqdmProgress() if sys.stderr.isatty() else LogProgress(every)


def _summary(final: dict) -> str:
    estimate = ""
    if final.get("estimated_top1") is not None:
        low, high = final["estimated_top1_interval"]
        estimate = f"  estimated_top1 {final['estimated_top1']:.1f} [{low:.1f}, {high:.1f}] (no labels)"
    measured = (f"top1 {final['top1']:.2f}  balanced_acc {final['balanced_acc']:.2f}  "
                f"ece {final['ece']:.4f}" if final.get("top1") is not None else "no test set")
    return (f"{measured}{estimate}  steps {final['steps']}  {final['seconds']:.0f}s  "
            f"trainable {final['trainable_params']:,}")


# --------------------------------------------------------------------------- commands


def cmd_train(args, overrides) -> int:
    from finessl.run import train
    from finessl.rundir import RunDir

    if args.init_from:
        overrides = {**overrides, "model.init_from": args.init_from}
    resumed = RunDir(args.resume) if args.resume else None  # read once, here and in train
    config = _resolve_config(args, overrides, run=resumed)
    output = Path(args.resume or args.output or f"runs/{config.algorithm.name}-{int(time.time())}")
    final = train(config, resumed or output, callbacks=[_progress(config.train.log_every)],
                  resume=bool(args.resume))
    if os.environ.get("RANK", "0") == "0":
        print(f"{output}: {_summary(final)}")
    return 0


def cmd_distill(args, overrides) -> int:
    from finessl.config import load_config, load_preset
    from finessl.run import distill

    config = load_preset(args.preset) if args.preset else load_config(args.config) if args.config \
        else None
    final = distill(args.teacher, args.output, config=config, overrides=overrides,
                    callbacks=[_progress(50)])
    if os.environ.get("RANK", "0") == "0":
        print(f"{args.output}: {_summary(final)}")
    return 0


def cmd_eval(args, overrides) -> int:
    from finessl.run import evaluate

    metrics = evaluate(args.run, device=args.device)
    extra = f"  top5 {metrics['top5']:.2f}" if "top5" in metrics else ""
    print(f"top1 {metrics['top1']:.2f}  balanced_acc {metrics['balanced_acc']:.2f}  "
          f"ece {metrics['ece']:.4f}  nll {metrics['nll']:.4f}{extra}")
    if metrics["written_to"] != "None":
        print(f"written to {metrics['written_to']}")
    return 0


def cmd_estimate(args, overrides) -> int:
    from finessl.errors import ConfigError
    from finessl.eval.estimate import CROSS_FITTED, ESTIMATORS, PEERED, method_of
    from finessl.run import estimate

    if args.method:  # checked before the run's images are read
        method_of(args.method)
        if args.method in CROSS_FITTED and not args.cross_fit:
            raise ConfigError(f"--method {args.method} needs --cross-fit (it calibrates on the "
                              f"folds' held-out labels); without it: {', '.join(ESTIMATORS)}")
        if args.method in PEERED and not args.peer:
            raise ConfigError(f"--method {args.method} needs --peer RUN (a second run of the same "
                              "classes, trained with another seed)")
    if args.peer and args.cross_fit:
        raise ConfigError("--peer and --cross-fit are two ways to the estimate: give one")
    if args.out:
        check_writable(args.out)
    if args.cross_fit:
        from finessl.cross_fit import cross_fitted_estimate

        found = cross_fitted_estimate(args.run, args.cross_fit, args.device, args.method,
                                      args.pool or None, args.pool_prior)
        labels = f"{args.cross_fit}-fold cross-fitted on the run's labels"
    else:
        found = estimate(args.run, args.pool or None, device=args.device, method=args.method,
                         pool_prior=args.pool_prior, peer=args.peer)
        labels = f"no labels used, peer run {args.peer}" if args.peer else "no labels used"
    where = ", ".join(args.pool) if args.pool else "the run's unlabeled pool"
    low, high = found.interval
    print(f"estimated top1 {found.top1:.1f} % [{low:.1f}, {high:.1f}] ({found.method}, "
          f"{found.pool_size:,} images of {where}, {labels})")
    print("  every estimator: " + "  ".join(f"{k} {v:.1f}" for k, v in found.methods.items()))
    for warning in found.warnings:
        print(f"  warning: {warning}")
    if args.out:
        from finessl.rundir import write_json

        write_json(Path(args.out), {**found.as_dict(), "run": str(args.run), "pool": args.pool or None,
                                    "pool_prior": args.pool_prior, "peer": args.peer})
        print(f"written to {args.out}")
    return 0


def _predictor(args, local_rank: int = 0):
    from finessl.device import resolve_device
    from finessl.errors import FinesslError
    from finessl.inference import load, pretrained_predictor

    if bool(args.run) == bool(getattr(args, "backbone", None)):
        raise FinesslError("give either --run DIR (a trained run) or --backbone NAME "
                           "(its own ImageNet classifier)")
    device = str(resolve_device(args.device, local_rank))  # under torchrun: this rank's GPU
    if args.run:
        return load(args.run, device=device)
    return pretrained_predictor(args.backbone, args.pretrained, device=device)


@contextlib.contextmanager
def _pool_ranks(args, desc: str):
    """What every whole-pool pass shares: the torchrun ranks, a progress bar (main rank),
    the shard folder (OUT.parts, removed once the body wrote OUT unless --keep-shards; kept
    after an interruption, with a line saying how to resume). Yields (env, folder, bar)."""
    from tqdm import tqdm

    from finessl.device import resolve_device
    from finessl.distributed import init_distributed, shutdown_distributed
    from finessl.errors import FinesslError
    from finessl.pool_pass import ForeignShards, work_folder

    check_writable(args.out, inputs=args.paths)
    env = init_distributed(resolve_device(args.device).type)
    bar = tqdm(unit="img", desc=desc, disable=not (sys.stderr.isatty() and env.is_main))
    try:
        with work_folder(args.out, env) as folder:
            try:
                yield env, folder, bar
            except (KeyboardInterrupt, FinesslError) as error:
                done = len(list(folder.glob("shard-*.safetensors"))) if args.out else 0
                if done and not isinstance(error, ForeignShards):
                    print(f"{done} finished shard(s) are kept in {folder}; run the same command "
                          "again to resume from there", file=sys.stderr)
                raise
            if env.is_main and not args.keep_shards:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        bar.close()
        shutdown_distributed()


@contextlib.contextmanager
def _scored_pool(args, command: str, top_k: int):
    """Predicts every image of ``args.paths`` shard by shard (``pool_pass``), every torchrun
    rank its share; yields (store, images, predictor) on the main rank, None on the others."""
    from finessl.inference import collect_images, predict_pool

    with _pool_ranks(args, "predicting") as (env, folder, bar):
        images = collect_images(args.paths)
        predictor = _predictor(args, env.local_rank)
        bar.total = len(images) // env.world_size
        store = predict_pool(predictor, images, folder, command, top_k, args.batch_size,
                             _workers(args), args.shard_size, env, bar.update)
        yield (store, images, predictor) if env.is_main else None


def _workers(args) -> int:
    """``--workers`` as given, else one image-decoding process per spare core (at most 8)."""
    if args.workers is not None:
        return args.workers
    return max(0, min(8, (os.cpu_count() or 1) - 1))


SHOWN_FAILURES = 20


def _print_failures(failed: list[tuple[str, str]]) -> None:
    if failed:
        print(f"{len(failed)} file(s) could not be read and were skipped:", file=sys.stderr)
        for path, reason in failed[:SHOWN_FAILURES]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(failed) > SHOWN_FAILURES:
            print(f"  ... and {len(failed) - SHOWN_FAILURES} more", file=sys.stderr)


def check_writable(path: str | None, what: str = "--out", inputs=()) -> None:
    """Fails fast (before any work) when an output file cannot be written there, or would
    replace one of the command's ``inputs``."""
    from finessl.errors import FinesslError

    if not path:
        return
    target = Path(path).expanduser()
    if target.is_symlink() and not target.exists():
        raise FinesslError(f"{what} {path} is a symbolic link to a missing file; give a plain "
                           "file name")
    folder = target.resolve().parent
    if not folder.is_dir():
        raise FinesslError(f"{what} {path}: the folder {folder} does not exist")
    if target.is_dir():
        raise FinesslError(f"{what} {path} is a folder; give a file name")
    if not os.access(folder, os.W_OK):
        raise FinesslError(f"{what} {path}: the folder {folder} is not writable")
    written = os.path.realpath(target)
    for given in inputs:
        if os.path.realpath(given) == written:
            raise FinesslError(f"{what} {path} is also an input of this command; write the "
                               "output to another file")


@contextlib.contextmanager
def _open_out(path: str | None):
    """The output CSV: standard output, or a file that appears whole when the command
    succeeds (written beside it, then renamed; a link there is replaced, not followed)."""
    if not path:
        yield sys.stdout
        return
    import tempfile

    target = Path(path).expanduser()
    handle, tmp = tempfile.mkstemp(dir=target.resolve().parent, prefix=f".{target.name}.",
                                   suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as out:
            yield out
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cmd_predict(args, overrides) -> int:
    import csv

    from finessl.inference import iter_top_k

    with _scored_pool(args, "predict", args.top_k) as scored:
        if scored is None:  # another torchrun rank: the main one writes
            return 0
        store, images, predictor = scored
        written = 0
        with _open_out(args.out) as handle:
            writer = csv.writer(handle)
            extra = [c for k in range(2, args.top_k + 1) for c in (f"label_{k}", f"confidence_{k}")]
            writer.writerow(["path", "label", "confidence", *extra])
            for position, top in iter_top_k(store, predictor.classes):
                writer.writerow([images[position], *[v for label, prob in top
                                                     for v in (label, f"{prob:.6f}")]])
                written += 1
        failed = [(images[p], reason) for p, reason in store.failures()]
    if args.out:
        print(f"{written} predictions written to {args.out}")
    _print_failures(failed)
    return 0


def cmd_label(args, overrides) -> int:
    import csv
    from collections import Counter

    from finessl.inference import confident_labels, iter_top_k

    args.backbone = None
    _check_format(args)
    with _scored_pool(args, "label", 1) as scored:
        if scored is None:
            return 0
        store, images, predictor = scored
        rows = ((position, top[0][0], top[0][1]) for position, top in iter_top_k(store, predictor.classes))
        kept = confident_labels(rows, args.threshold, args.max_per_class)
        if args.format == "label-studio":
            _write_studio_tasks(args, ((images[p], label, c) for p, label, c in kept),
                                predictor.classes, f"finessl {Path(args.run).name}")
        else:
            with _open_out(args.out) as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "label", "confidence"])
                for position, label, confidence in kept:
                    writer.writerow([images[position], label, f"{confidence:.6f}"])
        failed = [(images[p], reason) for p, reason in store.failures()]
        readable = len(images) - len(failed)
    counts = Counter(label for _, label, _ in kept)
    print(f"labeled {len(kept)} of {readable} readable images "
          f"(threshold {args.threshold}); per class: {dict(sorted(counts.items()))}"
          + (f"; written to {args.out}" if args.out else ""), file=sys.stderr)
    _print_failures(failed)
    return 0


def cmd_suggest(args, overrides) -> int:
    from finessl.active.cold_start import cold_start
    from finessl.active.suggest import suggest, write_suggestions
    from finessl.device import resolve_device
    from finessl.errors import ConfigError

    if args.run and (args.preset or args.config):
        raise ConfigError("give --run (labels next, scored by a trained run) or --preset/--config "
                          "(the first labels, before any training), not both")
    if args.run and overrides:
        raise ConfigError("--run suggests with the run's own configuration; overrides need "
                          "--preset/--config (a cold start)")
    config = None if args.run else _resolve_config(args, overrides)
    _check_format(args)
    pool = args.paths or None
    with _pool_ranks(args, "scoring the pool") as (env, folder, bar):
        common = dict(pool=pool, strategy=args.strategy, seed=args.seed, batch_size=args.batch_size,
                      workers=_workers(args), device=str(resolve_device(args.device, env.local_rank)),
                      progress=bar.update, folder=folder, shard_size=args.shard_size, env=env)
        report = suggest(args.run, args.budget, **common) if config is None else \
            cold_start(config, args.budget, **common)
        if report is None:  # another torchrun rank: the main one chooses and writes
            return 0
        if args.format == "label-studio":
            model = f"finessl {Path(args.run).name}" if args.run else "finessl cold start"
            _write_studio_tasks(args, ((s.id, s.predicted, s.score) for s in report.suggestions),
                                report.classes, model)
        else:
            with _open_out(args.out) as handle:
                write_suggestions(report, handle)
    if args.out and config is None:
        print(f"{len(report.suggestions)} images to label ({args.strategy}) written to {args.out}; "
              "add a label column (path,label) and train with --data.extra_labels FILE "
              f"--init-from {args.run}", file=sys.stderr)
    elif args.out:
        print(f"{len(report.suggestions)} images to label first ({args.strategy}) written to "
              f"{args.out}; fill in the label column and train with --data.labels_per_class 0 "
              "--data.extra_labels FILE", file=sys.stderr)
    _print_failures(report.failed)
    return 0


def cmd_audit(args, overrides) -> int:
    from tqdm import tqdm

    from finessl.audit.audit import AuditSettings, audit
    from finessl.audit.output import summary, write_audit
    from finessl.errors import FinesslError
    from finessl.rundir import RunDir

    own = RunDir(args.run).read_config() if args.run and not (args.preset or args.config) else None
    config = _resolve_config(args, overrides, default=own)
    if not args.out and not args.run:
        raise FinesslError("give --out DIR (where audit.json and the page go)")
    out = Path(args.out) if args.out else Path(args.run) / RunDir.AUDIT
    if out.exists() and not out.is_dir():
        raise FinesslError(f"--out {out} exists and is not a folder")
    settings = AuditSettings(batch_size=args.batch_size, workers=args.workers, device=args.device)
    settings.score = args.score or settings.score
    settings.near_similarity = args.near_similarity or settings.near_similarity
    bar = tqdm(unit="img", disable=not sys.stderr.isatty(), desc="scanning")
    try:
        result = audit(config, args.run, settings, progress=bar.update)
    finally:
        bar.close()
    write_audit(result, out, result.image)
    print(summary(result, out))
    return 0


def cmd_loop(args, overrides) -> int:
    from finessl.active.loop import run_loop

    config = _resolve_config(args, overrides)
    summary = run_loop(config, args.output, args.rounds, args.budget, args.strategy, args.seed,
                       cold=args.cold, callbacks=[_progress(config.train.log_every)],
                       cold_start=args.cold_start)
    print(f"{'round':>5}  {'extra labels':>12}  {'top1 %':>7}  {'balanced %':>10}")
    for row in summary:
        print(f"{row['round']:>5}  {row['extra_labels']:>12}  {row['top1']:>7.2f}  "
              f"{row['balanced_acc']:>10.2f}")
    return 0


def cmd_report(args, overrides) -> int:
    from finessl.eval.model_card import write_model_card
    from finessl.eval.report import write_comparison, write_report

    if len(args.run) == 1:
        page = write_report(args.run[0])
        card = write_model_card(args.run[0])  # brought up to date (an audit since, say)
        if card is not None:
            print(f"model card written to {card}")
    else:
        page = write_comparison(args.run, args.out or "report-compare")
    print(f"report written to {page}")
    return 0


def cmd_push(args, overrides) -> int:
    from finessl.hub import push

    url = push(args.run, args.repo, private=args.private, token=args.token)
    print(f"pushed {args.run} to {url}; use it as --run hf-hub:{args.repo}")
    return 0


def cmd_export(args, overrides) -> int:
    from finessl.inference import export, load

    run_files = list(Path(args.run).iterdir()) if Path(args.run).is_dir() else []
    check_writable(args.out, inputs=run_files)
    path = export(load(args.run, device="cpu"), args.out, args.format)
    print(f"exported {args.format} model to {path}")
    return 0


def cmd_zeroshot(args, overrides) -> int:
    from finessl.run import zeroshot

    check_writable(args.out)
    metrics = zeroshot(_resolve_config(args, overrides), device=args.device)
    print(f"zero-shot top1 {metrics['top1']:.2f}  balanced_acc {metrics['balanced_acc']:.2f}  "
          f"ece {metrics['ece']:.4f}")
    if args.out:
        from finessl.rundir import write_json

        write_json(Path(args.out), metrics)
    return 0


def cmd_bench(args, overrides) -> int:
    from finessl.engine.bench import bench

    result = bench(_resolve_config(args, overrides), steps=args.steps, warmup=args.warmup)
    memory = "CUDA max allocated" if result["device"].startswith("cuda") else "peak RSS"
    print(f"{result['device']} {result['precision']}: {result['seconds_per_step']:.3f} s/step, "
          f"{result['images_per_second']:.1f} images/s ({result['images_per_step']} images/step), "
          f"{memory} {result['peak_memory_mib']:.0f} MiB, "
          f"{result['trainable_params']:,} trainable parameters")
    return 0


def cmd_config(args, overrides) -> int:
    from finessl.config import Config, describe

    print(describe(_resolve_config(args, overrides, default=Config())), end="")
    return 0


def cmd_presets(args, overrides) -> int:
    from finessl.config import preset_description, preset_names

    names = preset_names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {preset_description(name)}")
    return 0


def cmd_demo(args, overrides) -> int:
    from finessl.demo import run_demo

    run_demo(Path(args.output), overrides, progress=_progress)
    return 0


def _number(kind, test, wanted: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value

    parse.__name__ = wanted
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
unit_float = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
worker_count = _number(int, lambda v: 0 <= v <= 4 * (os.cpu_count() or 1),
                       f"a count of processes from 0 to {4 * (os.cpu_count() or 1)} (4 per CPU)")


def _image_pool_args(parser: argparse.ArgumentParser, sharded: bool = False) -> None:
    """What every command that reads a pool of images takes."""
    parser.add_argument("--out", help="CSV file to write (default: standard output)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--workers", type=worker_count, default=None,
                        help="image-decoding processes (default: one per spare core, at most 8)")
    parser.add_argument("--device", default="auto")
    if sharded:
        parser.add_argument("--shard-size", type=positive_int, default=10_000,
                            help="images per shard: finished shards are kept in OUT.parts, so a "
                                 "command interrupted and run again resumes (default 10000)")
        parser.add_argument("--keep-shards", action="store_true",
                            help="keep OUT.parts after writing OUT: the same command run again "
                                 "(other --strategy, --budget, --threshold) reuses the scored pool")


def _format_args(parser: argparse.ArgumentParser) -> None:
    """The output format of a list of images to label (suggest, label)."""
    parser.add_argument("--format", choices=("csv", "label-studio"), default="csv",
                        help="csv, or label-studio: import tasks (JSON) with the model's prediction "
                             "to confirm or correct, and OUT's .label_config.xml for the project")
    parser.add_argument("--label-studio-root", default="/",
                        help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default /)")
    parser.add_argument("--label-studio-url", default="/data/local-files/?d=",
                        help="prefix of an image reference: how Label Studio serves the files")


def _check_format(args) -> None:
    from finessl.errors import ConfigError

    if args.format == "label-studio" and not args.out:
        raise ConfigError("--format label-studio needs --out FILE.json (its labeling config is "
                          "written beside it)")


def _write_studio_tasks(args, rows, classes: list[str], model_version: str) -> None:
    """``--format label-studio``: the tasks at --out and the project's labeling config beside."""
    from finessl.data.label_studio import ImageLinks, config_path, label_config, write_tasks
    from finessl.rundir import atomic_write

    links = ImageLinks(args.label_studio_root, args.label_studio_url)
    with _open_out(args.out) as handle:
        write_tasks(handle, rows, model_version, links)
    config = config_path(Path(args.out))
    atomic_write(config, lambda tmp: tmp.write_text(label_config(classes), encoding="utf-8"))
    print(f"Label Studio: import {args.out} into a project whose labeling config is {config}",
          file=sys.stderr)


def _config_args(parser: argparse.ArgumentParser) -> None:
    """--preset / --config; a command with a configuration also takes --section.key overrides."""
    parser.add_argument("--preset", help="a built-in preset (see 'finessl presets')")
    parser.add_argument("--config", help="a YAML config file")
    parser.set_defaults(takes_overrides=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finessl",
        description="Semi-supervised fine-tuning of foundation models (FineSSL and baselines).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="train a run", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train from a preset or YAML config; override any key with --section.key VALUE\n"
                    "(e.g. --train.steps 100). The sections: model (backbone, weights, PEFT), data\n"
                    "(dataset, split, augmentation), algorithm (SSL method and its settings), train\n"
                    "(optimizer, schedule, precision, logging), seed. Every key, its value and\n"
                    "what it does: finessl config --preset NAME [--section.key VALUE ...]")
    _config_args(train)
    train.add_argument("--output", help="run directory to create")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    train.add_argument("--init-from", metavar="DIR",
                       help="warm start from a finished run's adapter and heads (model.init_from)")
    train.set_defaults(func=cmd_train)

    distill = sub.add_parser("distill", help="SemiKD: distill a trained run into a smaller student",
                             description="The student defaults to the paper's (ImageNet-21k "
                                         "ViT-S/16 + VPT-deep) on the teacher's data; override "
                                         "any key with --section.key VALUE. Resume with "
                                         "'finessl train --resume DIR'.")
    distill.add_argument("--teacher", required=True, help="run directory of the trained teacher")
    distill.add_argument("--output", required=True)
    distill.add_argument("--preset", help="student configuration instead of the teacher's")
    distill.add_argument("--config")
    distill.set_defaults(func=cmd_distill, takes_overrides=True)

    evaluate = sub.add_parser("eval", help="re-evaluate a run on its test set")
    evaluate.add_argument("--run", required=True, help="run directory")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_eval)

    estimate = sub.add_parser(
        "estimate", help="a run's accuracy estimated without labels, on its pool or new images",
        description="Estimates the run's top-1 accuracy on unlabeled images (the run's own pool, "
                    "or the images, folders and CSV lists given) from its predictions alone: "
                    "has the data drifted away from what the model knows? See the README for "
                    "how far the estimators can be trusted.")
    estimate.add_argument("--run", required=True, help="run directory")
    estimate.add_argument("pool", nargs="*", help="images, folders of images or CSV lists "
                                                  "(default: the run's unlabeled pool)")
    estimate.add_argument("--method", help="estimator (default: the run's train.estimate; with "
                                           "--cross-fit, the cross-fitted default; with --peer, "
                                           "peer-agreement)")
    estimate.add_argument("--cross-fit", type=int, nargs="?", const=2, default=0, metavar="K",
                          help="train the run K more times (default 2), each without 1/K of its "
                               "labels, and calibrate on the labels each fold left out "
                               "(folds kept in RUN/cross-fit, resumable)")
    estimate.add_argument("--pool-prior", metavar="FILE.csv",
                          help="the pool's class shares (columns class, share; or an audit's "
                               "pool_prior.csv) where you know them: capped-confidence caps at "
                               "them instead of the labeled set's shares (the pool's accuracy), "
                               "capped-recall reads them back to the labeled set's class mix")
    estimate.add_argument("--peer", metavar="RUN",
                          help="a second run of the same classes and settings trained on other "
                               "labeled images (another draw) and seed: how often the two agree on "
                               "the images is the estimate (peer-agreement; the least wrong when "
                               "measured with other labels, far too high with the same labels)")
    estimate.add_argument("--out", help="also write the estimate to this JSON file")
    estimate.add_argument("--device", default="auto")
    estimate.set_defaults(func=cmd_estimate, whole_pool=True)

    predict = sub.add_parser("predict", help="classify images with a trained run")
    predict.add_argument("--run", help="run directory")
    predict.add_argument("--backbone", help="instead of a run: a backbone with its own ImageNet "
                                            "classifier, e.g. efficientnet-lite0")
    predict.add_argument("--pretrained", default="imagenet", help="with --backbone")
    predict.add_argument("paths", nargs="+", help="images, folders of images or CSV lists")
    predict.add_argument("--top-k", type=positive_int, default=1)
    _image_pool_args(predict, sharded=True)
    predict.set_defaults(func=cmd_predict, whole_pool=True)

    label = sub.add_parser("label", help="auto-label an unlabeled pool into a CSV",
                           description="Predicts every image and keeps those at or above "
                                       "--threshold (at most --max-per-class per class, the "
                                       "most confident first).")
    label.add_argument("--run", required=True, help="run directory")
    label.add_argument("paths", nargs="+", help="images, folders of images or CSV lists")
    label.add_argument("--threshold", type=unit_float, default=0.9)
    label.add_argument("--max-per-class", type=positive_int)
    _image_pool_args(label, sharded=True)
    _format_args(label)
    label.set_defaults(func=cmd_label, whole_pool=True)

    suggest = sub.add_parser("suggest", help="which images to label next (or first)",
                             description="With --run: scores a pool with a trained run and writes "
                                         "the --budget images worth labeling next (path, predicted "
                                         "class, score, reason). With --preset/--config instead "
                                         "(a cold start, no labels needed): the --budget images to "
                                         "label first, typical and spread over the pool in the "
                                         "pretrained backbone's features. Pool: images, folders or "
                                         "CSV lists; default: the run's / configuration's own "
                                         "unlabeled pool. The default strategy auto takes typiclust "
                                         "while labels are few, margin once they are not (README: "
                                         "Label next).")
    _config_args(suggest)
    suggest.add_argument("--run", help="a finished run (without it: a cold start from --preset/--config)")
    suggest.add_argument("paths", nargs="*", help="the pool (default: the run's unlabeled pool)")
    suggest.add_argument("--budget", type=positive_int, required=True, help="how many images")
    suggest.add_argument("--strategy", choices=SUGGEST_STRATEGIES, default="auto")
    suggest.add_argument("--seed", type=non_negative_int, default=0)
    _image_pool_args(suggest, sharded=True)
    _format_args(suggest)
    suggest.set_defaults(func=cmd_suggest, whole_pool=True)

    audit = sub.add_parser(
        "audit", help="check the data before training: out-of-distribution and duplicate pool "
                      "images, test-set copies, wrong-looking seed labels, the pool's class prior",
        description="One pass of the model (a trained --run's, else the configured pretrained "
                    "backbone) over the labeled set, the unlabeled pool and the test set of a "
                    "configuration; writes audit.json, CSV lists, index.html and exclude.csv "
                    "(for --data.exclude) into --out (default RUN/audit).")
    _config_args(audit)
    audit.add_argument("--run", help="a trained run: its model and (without --preset/--config) its data")
    audit.add_argument("--out", help="folder to write (default: RUN/audit)")
    audit.add_argument("--score", help="out-of-distribution score: propagation (default), knn or "
                                       "prototype (docs/results.md compares them)")
    audit.add_argument("--near-similarity", type=unit_float,
                       help="thumbnail cosine from which two images are near copies (default 0.998)")
    audit.add_argument("--batch-size", type=positive_int, default=128)
    audit.add_argument("--workers", type=worker_count, default=0, help="image-loading processes")
    audit.add_argument("--device", default="auto")
    audit.set_defaults(func=cmd_audit, whole_pool=True)

    loop = sub.add_parser("loop", help="simulate labeling rounds to compare suggestion strategies",
                          description="Round 0 trains the configuration; each next round suggests "
                                      "--budget images, reveals their true labels, and trains again "
                                      "(warm-started unless --cold) with the same steps.")
    _config_args(loop)
    loop.add_argument("--output", required=True, help="folder for the rounds")
    loop.add_argument("--rounds", type=non_negative_int, default=2,
                      help="rounds after round 0 (0: round 0 only, e.g. to measure a cold start)")
    loop.add_argument("--budget", type=positive_int, default=40, help="labels added per round")
    loop.add_argument("--strategy", choices=SUGGEST_STRATEGIES, default="auto")
    loop.add_argument("--seed", type=non_negative_int, default=0, help="suggestion seed")
    loop.add_argument("--cold", action="store_true", help="train each round from scratch")
    loop.add_argument("--cold-start", action="store_true",
                      help="no seed labels: round 0 trains on --budget images the strategy picks "
                           "from the pretrained features")
    loop.set_defaults(func=cmd_loop)

    report = sub.add_parser("report", help="an HTML report of a run, or of several side by side",
                            description="One --run: RUN/report/index.html. Several (--run A --run "
                                        "B ...): curves overlaid, final numbers in one table, "
                                        "per-class differences against the first run, in --out.")
    report.add_argument("--run", required=True, action="append", help="run directory (repeatable)")
    report.add_argument("--out", help="folder of a comparison (default: report-compare)")
    report.set_defaults(func=cmd_report)

    push = sub.add_parser("push", help="upload a finished run to the Hugging Face Hub",
                          description="Uploads adapter.safetensors (PEFT weights, heads, class "
                                      "names), config.yaml, final.json, metrics.jsonl and the model "
                                      "card README.md; afterwards --run hf-hub:USER/NAME works "
                                      "wherever a run is read (predict, label, suggest, eval, "
                                      "export, estimate, --init-from).")
    push.add_argument("--run", required=True, help="run directory")
    push.add_argument("--repo", required=True, help="USER/NAME on the Hub")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", help="a Hub token (default: the one `hf auth login` saved)")
    push.set_defaults(func=cmd_push)

    export = sub.add_parser("export", help="export a run as a standalone model (torch.export / ONNX)",
                            description="Input: float images [N, 3, S, S] in [0, 1] (the run's "
                                        "normalisation is inside); output: logits. pt2: load with "
                                        "torch.export.load(path).module(); onnx: any ONNX runtime.")
    export.add_argument("--run", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--format", choices=["pt2", "onnx"], default="pt2")
    export.set_defaults(func=cmd_export)

    zero = sub.add_parser("zeroshot", help="CLIP zero-shot accuracy on a config's test set",
                          description="Evaluates the backbone's CLIP zero-shot classifier "
                                      "(model.text_template) on the test set; accepts overrides.")
    _config_args(zero)
    zero.add_argument("--out", help="write the metrics to this JSON file")
    zero.add_argument("--device", default="auto")
    zero.set_defaults(func=cmd_zeroshot)

    bench = sub.add_parser("bench", help="time training steps of a configuration",
                           description="Runs real training steps (data loading included) and "
                                       "prints images/s, seconds per step and peak memory.")
    _config_args(bench)
    bench.add_argument("--steps", type=positive_int, default=10)
    bench.add_argument("--warmup", type=non_negative_int, default=2)
    bench.set_defaults(func=cmd_bench)

    config = sub.add_parser("config", help="print a resolved configuration, every key explained",
                            description="Prints the configuration a preset or YAML file (plus "
                                        "--section.key VALUE overrides) resolves to, as YAML with "
                                        "a comment per key; without --preset/--config, the defaults.")
    _config_args(config)
    config.set_defaults(func=cmd_config)

    presets = sub.add_parser("presets", help="list the built-in presets")
    presets.set_defaults(func=cmd_presets)

    demo = sub.add_parser("demo", help="offline demo: supervised vs FineSSL on Fashion-MNIST")
    demo.add_argument("--output", default="runs/demo", help="folder for the two runs")
    demo.set_defaults(func=cmd_demo, takes_overrides=True)
    return parser


# Exit codes (also in the README).
EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_STOPPED = 0, 1, 2, 3, 130, 143
EXIT_BROKEN_PIPE = 141  # as a shell reports a process ended by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Runs one command. Exit codes: 0 done; 2 a problem with the input (one line says
    which); 3 training diverged (non-finite loss or weights; the last good checkpoint is
    kept); 143 stopped by SIGTERM / SIGINT (the last checkpoint is kept: resume it); 130
    interrupted outside training; 141 the reader of the output went away (silent); 1 an
    unexpected internal error (one line; FINESSL_DEBUG=1 shows the traceback)."""
    parser = build_parser()
    argv, dotted = split_dotted(list(sys.argv[1:] if argv is None else argv))
    args, rest = parser.parse_known_args(argv)
    rest += dotted
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from finessl.errors import FinesslError, TrainingDiverged, TrainingInterrupted

    try:
        if rest and not getattr(args, "takes_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        overrides = parse_overrides(rest) if rest else {}
        if getattr(args, "whole_pool", False):  # blocks of every size, one per shard or cluster
            from finessl.device import return_large_frees_to_the_os

            return_large_frees_to_the_os()
        return args.func(args, overrides)
    except TrainingInterrupted as error:
        print(f"finessl: stopped: {error}", file=sys.stderr)
        return EXIT_STOPPED
    except TrainingDiverged as error:
        print(f"finessl: error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except FinesslError as error:
        print(f"finessl: error: {error}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("finessl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `finessl predict ... | head`: the reader has all it wanted
        with contextlib.suppress(OSError, ValueError):  # no flush error at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as error:  # noqa: BLE001  (the last line of defence: one line, not a traceback)
        if os.environ.get("FINESSL_DEBUG"):
            raise
        first = str(error).splitlines()[0][:200] if str(error) else ""
        print(f"finessl: internal error: {type(error).__name__}: {first} (run with "
              "FINESSL_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if "torch.distributed" in sys.modules:  # leave torchrun's process group cleanly
            from finessl.distributed import shutdown_distributed

            shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
