"""The one exception type a user should see: bad input, explained in one line."""


class UserError(Exception):
    """Raised for bad input (a wrong path, a mismatched teacher, an empty image set...).

    The command line prints its message as a single line and exits non-zero; library
    callers can catch it to tell their own mistakes from ours.
    """
