"""The one exception type a user should see: bad input, explained in one line."""


class UserError(Exception):
    """Raised for bad input (a wrong path, a mismatched teacher, an empty image set...).

    The command line prints its message as a single line and exits non-zero; library
    callers can catch it to tell their own mistakes from ours.
    """


def first_line(error: BaseException) -> str:
    """The first non-empty line of `error`'s message, or its class name when it has none.

    Handlers quote a library's error inside a one-line UserError; the message may be empty
    (torch.load on an empty file raises one), where `str(e).splitlines()[0]` would itself fail.
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
