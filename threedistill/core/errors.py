"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (unknown name, malformed file, missing weights...).

    The message must name the problem and the fix in one line.
    """


def unknown_name(kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> UserError:
    """Error for an unknown component name, listing the valid ones."""
    return UserError(f"unknown {kind} '{name}'; valid {kind} names: {', '.join(sorted(valid))}")
