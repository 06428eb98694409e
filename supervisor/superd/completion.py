"""`superctl completion bash|zsh`: shell completion scripts for superctl.

The scripts are derived from superctl's own argparse grammar (cliargs.py), so
a command or an option added there completes without a change here. NAMEs
are the running daemon's: at completion time the script runs `superctl
[-c CONFIG | -s SOCKET] completion SHELL --names`, with the -c/-s already
typed, which prints every instance and worker name, one a line (`names`),
with `all` first, and nothing at all when the daemon cannot be asked.

Only `superctl completion` imports this module (and argparse with it); every
other command starts without it.
"""

from __future__ import annotations

import argparse
import signal
from dataclasses import dataclass

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterable

SHELLS = ("bash", "zsh")
# The positional whose words are NAMEs of the running daemon (cliargs.py).
NAMES_DEST = "names"
# Offered first wherever NAMEs are taken (registry.py), once the daemon answers.
ALL = "all"
# `signal SIG`: the names superctl accepts (HUP, TERM, ...), in number order.
SIGNAL_NAMES = tuple(
    sig.name.removeprefix("SIG") for sig in sorted(signal.Signals, key=int)
    if sig.name.startswith("SIG") and not sig.name.startswith("SIGRT")
)


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    help: str
    takes_value: bool


@dataclass(frozen=True)
class Positional:
    dest: str
    many: bool  # nargs * or +: every word from here on
    choices: tuple[str, ...]  # words to offer; NAMEs come from the daemon instead


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]
    positionals: tuple[Positional, ...]


@dataclass(frozen=True)
class Grammar:
    options: tuple[Option, ...]  # before COMMAND
    commands: tuple[Command, ...]


# ---------------------------------------------------------------- the grammar


def grammar(parser: argparse.ArgumentParser) -> Grammar:
    """What superctl's parser accepts, as the completion scripts need it."""
    subparsers = next(action for action in parser._actions
                      if isinstance(action, argparse._SubParsersAction))
    helps = {choice.dest: one_line(choice.help) for choice in subparsers._choices_actions}
    commands = tuple(
        Command(name, helps.get(name, ""), _options(sub), _positionals(sub))
        for name, sub in subparsers.choices.items()
    )
    return Grammar(_options(parser), commands)


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    return tuple(
        Option(tuple(action.option_strings), one_line(action.help), action.nargs != 0)
        for action in parser._actions
        if action.option_strings and action.help != argparse.SUPPRESS
    )


def _positionals(parser: argparse.ArgumentParser) -> tuple[Positional, ...]:
    found = []
    for action in parser._actions:
        if action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        if action.choices is not None:
            choices = tuple(str(choice) for choice in action.choices)
        elif action.dest == "sig":
            choices = SIGNAL_NAMES
        else:
            choices = ()
        found.append(Positional(action.dest, action.nargs in ("*", "+"), choices))
    return tuple(found)


def one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def names(rows: Iterable[dict[str, object]], groups: Iterable[object] = ()) -> list[str]:
    """`all`, the groups, then every worker and instance name in `status`
    rows, in order, each once."""
    found: dict[str, None] = {ALL: None}
    found.update((group, None) for group in groups if isinstance(group, str) and group)
    for row in rows:
        for key in ("worker", "name"):
            value = row.get(key)
            if isinstance(value, str) and value:
                found.setdefault(value)
    return list(found)


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for shell (one of SHELLS)."""
    return {"bash": bash_script, "zsh": zsh_script}[shell](grammar(parser))


# ---------------------------------------------------------------- bash


BASH_HEAD = """\
# bash completion for superctl, printed by `superctl completion bash`.
# Load it into this shell:   source <(superctl completion bash)
# or keep it (bash-completion loads it on first use):
#   superctl completion bash > ~/.local/share/bash-completion/completions/superctl
# NAMEs come from the running daemon, asked with the -c/-s typed before the
# command; none are offered while it is down.

_superctl_names() {
    # $1: superctl as typed; the rest: its -c/-s options.
    "$1" "${@:2}" completion bash --names 2>/dev/null </dev/null
}

_superctl_complete() {
    # The words before the cursor, split on blanks only: bash's COMP_WORDS
    # would also split web:0 at its colon.
    local line=${COMP_LINE:0:COMP_POINT}
    local -a words
    read -ra words <<< "$line"
    if [[ -z $line || $line == *[[:space:]] ]]; then
        words+=("")
    fi
    local cur=${words[${#words[@]}-1]} command="" value_of="" word candidates=""
    local -a where=()
    local -i i position=0
    for ((i = 1; i < ${#words[@]} - 1; i++)); do
        word=${words[i]}
        if [[ -n $value_of ]]; then
            [[ -z $command ]] && where+=("${word/#\\~/$HOME}")
            value_of=""
            continue
        fi
        if [[ -z $command ]]; then
            case $word in
                %(global_value_options)s) where+=("$word"); value_of=$word ;;
                %(global_value_equals)s) where+=("${word/=\\~/=$HOME}") ;;
                -*) ;;
                *) command=$word ;;
            esac
        else
            case $command:$word in
%(command_value_options)s                *:-*) ;;
                *) position+=1 ;;
            esac
        fi
    done
    COMPREPLY=()
    if [[ -n $value_of ]]; then
        case $value_of in
            %(global_value_options)s)
                compopt -o filenames 2>/dev/null
                mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
        esac
        return 0  # a number (-n, -d): nothing to offer
    fi
    if [[ -z $command ]]; then
        if [[ $cur == -* ]]; then
            candidates="%(global_options)s"
        else
            candidates="%(commands)s"
        fi
    elif [[ $cur == -* ]]; then
        case $command in
%(command_options)s        esac
    else
        case $command:$position in
%(command_positionals)s        esac
    fi
    mapfile -t COMPREPLY < <(compgen -W "$candidates" -- "$cur")
    # bash puts a reply in place of the text after the word's last colon.
    if [[ $cur == *:* && $COMP_WORDBREAKS == *:* ]]; then
        local colon_prefix=${cur%%"${cur##*:}"}
        for i in "${!COMPREPLY[@]}"; do
            COMPREPLY[i]=${COMPREPLY[i]#"$colon_prefix"}
        done
    fi
    return 0
}

complete -F _superctl_complete superctl
"""

BASH_NAMES = '"$(_superctl_names "${words[0]}" "${where[@]}")"'


def bash_script(spec: Grammar) -> str:
    global_value = [flag for option in spec.options if option.takes_value
                    for flag in option.flags]
    value_options, options, positionals = [], [], []
    for command in spec.commands:
        flags = [flag for option in command.options if option.takes_value
                 for flag in option.flags]
        if flags:
            patterns = "|".join(f"{command.name}:{flag}" for flag in flags)
            value_options.append(f"                {patterns}) value_of=$word ;;\n")
        every = " ".join(flag for option in command.options for flag in option.flags)
        options.append(f'            {command.name}) candidates="{every}" ;;\n')
        for index, positional in enumerate(command.positionals):
            at = "*" if positional.many else str(index)
            words = (BASH_NAMES if positional.dest == NAMES_DEST
                     else '"' + " ".join(positional.choices) + '"')
            positionals.append(f"            {command.name}:{at}) candidates={words} ;;\n")
    return BASH_HEAD % {
        "global_value_options": "|".join(global_value),
        "global_value_equals": "|".join(f"{flag}=*" for flag in global_value
                                        if flag.startswith("--")),
        "global_options": " ".join(flag for option in spec.options for flag in option.flags),
        "commands": " ".join(command.name for command in spec.commands),
        "command_value_options": "".join(value_options),
        "command_options": "".join(options),
        "command_positionals": "".join(positionals),
    }


# ---------------------------------------------------------------- zsh


ZSH_HEAD = """\
#compdef superctl
# zsh completion for superctl, printed by `superctl completion zsh`.
# Keep it on $fpath (before compinit runs), named _superctl:
#   superctl completion zsh > ~/.zfunc/_superctl   # with fpath=(~/.zfunc $fpath)
# or load it into a shell where compinit has run:
#   source <(superctl completion zsh)
# NAMEs come from the running daemon, asked with the -c/-s typed before the
# command; none are offered while it is down.

_superctl_name_list() {
    # reply: the daemon's names; $1: superctl as typed, the rest its -c/-s.
    local listed
    listed=$("$1" "${@:2}" completion zsh --names 2>/dev/null </dev/null)
    reply=(${(f)listed})  # unquoted: no names is no word, not one empty one
}

_superctl_names() {
    local -a reply expl
    _superctl_name_list "$_superctl_program" "${_superctl_where[@]}"
    _wanted names expl name compadd -- "${reply[@]}"
}

_superctl() {
    local curcontext=$curcontext state state_descr line ret=1 key
    typeset -A opt_args
    local _superctl_program=$words[1]
    local -a _superctl_where
    _arguments -C -s \\
%(global_specs)s        ':command:->command' \\
        '*::argument:->argument' && ret=0
    for key in %(global_value_flags)s; do
        (( $+opt_args[$key] )) && _superctl_where+=("$key" "${(Q)opt_args[$key]}")
    done
    case $state in
        command)
            local -a commands=(
%(command_list)s            )
            _describe -t commands 'superctl command' commands && ret=0 ;;
        argument)
            curcontext=${curcontext%%:*:*}:superctl-$words[1]:
            case $words[1] in
%(command_specs)s            esac ;;
    esac
    return ret
}

if [[ $funcstack[1] == _superctl ]]; then
    _superctl "$@"  # autoloaded from $fpath
else
    compdef _superctl superctl
fi
"""


def zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def zsh_description(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def zsh_option(option: Option) -> str:
    """One _arguments spec: (-n --lines){-n+,--lines=}[how many lines]:lines:"""
    description = "[" + zsh_description(option.help) + "]" if option.help else ""
    if option.takes_value:
        what = option.flags[-1].lstrip("-")
        action = "_files" if what in ("config", "socket") else ""
        description += f":{what}:{action}"
    flags = [flag + ("" if not option.takes_value else "=" if flag.startswith("--") else "+")
             for flag in option.flags]
    if len(flags) == 1:
        return zsh_quote(flags[0] + description)
    excluded = "(- *)" if "--help" in option.flags else "(" + " ".join(option.flags) + ")"
    return zsh_quote(excluded) + "{" + ",".join(flags) + "}" + zsh_quote(description)


def zsh_positional(index: int, positional: Positional) -> str:
    if positional.dest == NAMES_DEST:
        return zsh_quote("*:name:_superctl_names")
    at = "*" if positional.many else str(index + 1)
    return zsh_quote(f"{at}:{positional.dest}:(" + " ".join(positional.choices) + ")")


def zsh_script(spec: Grammar) -> str:
    globals_ = "".join(f"        {zsh_option(option)} \\\n" for option in spec.options)
    command_list = "".join(
        "                " + zsh_quote(command.name + ":" + command.help.replace(":", "\\:"))
        + "\n" for command in spec.commands)
    command_specs = []
    for command in spec.commands:
        specs = [zsh_option(option) for option in command.options]
        specs += [zsh_positional(index, positional)
                  for index, positional in enumerate(command.positionals)]
        command_specs.append(f"                {command.name}) _arguments -s "
                             + " ".join(specs) + " && ret=0 ;;\n")
    return ZSH_HEAD % {
        "global_specs": globals_,
        "global_value_flags": " ".join(flag for option in spec.options if option.takes_value
                                       for flag in option.flags),
        "command_list": command_list,
        "command_specs": "".join(command_specs),
    }
