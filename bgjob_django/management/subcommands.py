"""Management commands with sub-commands (`manage.py bgjob_dlq list`, `bgjob_queue show`) take the options Django
gives every command (--settings, --pythonpath, -v/--verbosity, --traceback, --no-color, --force-color) after the
sub-command too: argparse only looks for them before it, so `manage.py bgjob_dlq list --settings=X` was refused
("unrecognized arguments") while `manage.py bgjob_dlq --settings=X list` worked."""

from __future__ import annotations

import argparse
import copy


def common_options_after_subcommands(parser: argparse.ArgumentParser) -> None:
    """Give each sub-command's parser of `parser` (a command's, with its sub-commands added) a copy of the
    command's own options: Django's (--settings, -v, ...) and any other the command added before its
    sub-commands. A copy sets its value only when given after the sub-command (default SUPPRESS), so one given
    before it is kept. Call at the end of `add_arguments`."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    own = (argparse._HelpAction, argparse._VersionAction)  # -h and --version stay each parser's own
    shared = [a for a in parser._actions if a.option_strings and not isinstance(a, own)]
    for action in subcommands:
        for subparser in dict.fromkeys(action.choices.values()):  # an alias names its parser again
            taken = set(subparser._option_string_actions)
            for option in shared:
                if taken.isdisjoint(option.option_strings):  # a sub-command's own option of that name wins
                    option = copy.copy(option)
                    option.default, option.required = argparse.SUPPRESS, False
                    subparser._add_action(option)
