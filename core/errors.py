"""UserError: an expected failure, shown as one clear sentence with the fix (no traceback)."""


class UserError(Exception):
    """Bad input or environment. str(e) is one sentence saying what is wrong and how to fix it."""

    exit_code = 1
