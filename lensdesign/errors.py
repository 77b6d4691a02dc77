"""Errors shown to the user as one line (exit code 2)."""


class LensdesignError(Exception):
    """A user-facing error: bad input, impossible setup. The message is one line naming the field and the fix."""


class SpecError(LensdesignError):
    """The spec is malformed or physically impossible."""


class ArgumentError(LensdesignError):
    """A bad function argument. The message names arguments through `{name}` fields, so that a command can show
    its own option names instead (`render`); plain `str()` shows the argument names themselves."""

    def __init__(self, template: str, **values: object) -> None:
        self.template = template
        self.values = values
        super().__init__(self.render({}))

    def render(self, names: dict[str, str]) -> str:
        """The message with each `{name}` field replaced by `names[name]` (default: the argument name)."""

        class _Names(dict):
            def __missing__(self, key: str) -> str:
                return names.get(key, key)

        return self.template.format_map(_Names(self.values))
