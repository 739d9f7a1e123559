"""The one argument parser every `h3ops` command uses: defaults shown, one example, no abbreviations.

`--help` of every command ends with an example and shows each option's default (an option that
defaults to nothing or to off shows none), so `h3ops X --help` answers "what do I type" by itself.
Abbreviated flags are refused (`--over` is not `--overwrite`): a typo is named, never guessed.
"""
from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, example: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        if example:
            kwargs["epilog"] = "example:\n  " + example.strip().replace("\n", "\n  ")
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        for a in self._actions:
            shown = a.default not in (None, False, [], argparse.SUPPRESS) and a.help is not argparse.SUPPRESS
            if shown and a.option_strings and "default" not in (a.help or ""):
                a.help = f"{a.help} (default: %(default)s)" if a.help else "(default: %(default)s)"
        return super().format_help()


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
