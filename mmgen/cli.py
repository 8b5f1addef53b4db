"""`mmgen` command line: a thin dispatcher to the command groups of each subpackage.

Each group lives next to the code it drives and exposes ``main(argv) -> int``; importing
it lazily keeps ``mmgen --help`` fast and lets a group fail without breaking the others.

Expected errors (:class:`mmgen.cli_utils.UserError`, file-system errors, bad values, corrupt
weight files: :func:`mmgen.cli_utils.error_message`) are printed here, once for every command,
as ``mmgen <command>: error: <what and how to fix>`` with exit status 2; ``--debug`` (anywhere
on the command line) shows the traceback instead.
"""
from __future__ import annotations

import importlib
import sys

GROUPS: dict[str, tuple[str, str]] = {
    "data": ("mmgen.data.cli:main", "synthesise and inspect video datasets"),
    "tokenizer": ("mmgen.tokenizer.cli:main", "train, export and test the video tokenizer"),
    "ar": ("mmgen.ar.cli:main", "train, export and pre-tokenize for the VideoAR generator"),
    "sample": ("mmgen.pipelines.cli:sample_main", "generate videos from prompts or class ids"),
    "extend": ("mmgen.pipelines.cli:extend_main", "continue a video (image-to-video, continuation)"),
    "eval": ("mmgen.metrics.cli:main", "FVD, VBench dimensions, MovingShapes benchmark"),
    "vqa": ("mmgen.mllm.cli:main", "visual question answering with Blink"),
    "caption": ("mmgen.ar.caption_cli:main", "caption a video or answer a question with a unified model"),
}


def _usage() -> str:
    lines = ["usage: mmgen <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in GROUPS.items()]
    lines += ["", "Run `mmgen <command> --help` for the options of a command;",
              "add --debug to see the traceback of an error."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from mmgen import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in GROUPS:
        print(f"mmgen: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from mmgen import cli_utils

    debug = "--debug" in rest
    rest = [a for a in rest if a != "--debug"]
    cli_utils.DEBUG = debug
    command = name if not rest or rest[0].startswith("-") or name in ("sample", "extend") else f"{name} {rest[0]}"
    try:
        module_name, func_name = GROUPS[name][0].split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(rest) or 0)
    except KeyboardInterrupt:
        print(f"mmgen {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = cli_utils.error_message(exc)
        if debug or message is None:
            raise
        print(f"mmgen {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
