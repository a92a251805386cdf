"""The one exception type whose message is shown to users as a single actionable line."""


class PocketbertError(RuntimeError):
    """A user-facing error: ``python -m recipes`` prints ``error: <message>`` and exits with status 2."""
