"""The `audiossl` command: one entry point, one verb per task.

Adding a verb is one line in ``VERBS``: ``name -> ("module:function", "one-line help")``. The function receives the
remaining command-line arguments (``list[str]``) and returns an exit status; an ``audiossl.errors.UserError`` it raises
is printed as one line (``audiossl VERB: error: ...``, status 1). Modules are imported only when their verb
runs, so ``audiossl --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

from audiossl.version import __version__

VERBS: dict[str, tuple[str, str]] = {}


def register_verb(name: str, target: str, help: str) -> None:
    """Register ``audiossl NAME`` to call ``target`` (``"package.module:function"``)."""
    VERBS[name] = (target, help)


def _usage() -> str:
    width = max((len(n) for n in VERBS), default=8)
    lines = [
        f"audiossl {__version__} - self-supervised audio transformers",
        "",
        "usage: audiossl VERB [ARGS...]      (audiossl VERB --help for the verb's options)",
        "",
        "verbs:",
    ]
    lines += [f"  {name:<{width}}  {help}" for name, (_, help) in VERBS.items()]
    lines += ["", "options:", "  -h, --help     show this message", "  --version      print the version"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"audiossl {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"audiossl: unknown verb {verb!r}; choose one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    module_name, func_name = VERBS[verb][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    from audiossl.errors import UserError

    try:
        status = func(rest)
    except UserError as e:  # a mistake in the input, explained by the message: no traceback
        print(f"audiossl {verb}: error: {e}", file=sys.stderr)
        return 1
    return int(status or 0)


# --- the verbs --------------------------------------------------------------------------------------------------
register_verb("prep", "audiossl.cli.prep:prep", "convert a dataset into shards: folder, esc50, audioset, synth")
register_verb("stats", "audiossl.cli.prep:stats", "fbank mean/std of a prepared dataset, into its manifest")
register_verb("pretrain", "audiossl.cli.train:pretrain", "self-supervised pretraining (MAE, EAT, A-JEPA, SSLAM, BAT)")
register_verb("finetune", "audiossl.cli.train:finetune", "fine-tune an encoder into a classifier (or a linear probe)")
register_verb("probe", "audiossl.cli.train:probe", "train a probe (CGP, linear, LCGP, Head2Toe) on a frozen encoder")
register_verb("evaluate", "audiossl.tasks.evaluate:main", "mAP / mAUC / d-prime / accuracy of a classifier on a split")
register_verb("compare", "audiossl.cli.compare:main", "every objective on one encoder, data and budget: one table")
register_verb("demo", "audiossl.cli.demo:main", "the end-to-end demo: synthetic corpus (make demo) or your own CSV (--csv)")
register_verb("bench", "audiossl.cli.bench:main", "benchmarks: front end, encoder, training steps (ratios vs baselines)")
register_verb("export", "audiossl.hub.export:main", "checkpoint -> model.safetensors + config.json (+ ONNX)")
register_verb("predict", "audiossl.cli.predict:main", "top-k labels of audio files with an exported model")
register_verb("convert", "audiossl.convert:main", "import published AST/EAT/SSLAM/AudioMAE/BAT weights")
register_verb("plot", "audiossl.cli.plot:main", "plots: log-mel, predictions over time, training curves")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
