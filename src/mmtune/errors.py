"""Errors the user can act on. The CLI prints their message (no traceback) and exits 2."""


class UserError(Exception):
    """An error caused by the user's input or set-up; its message says what to do about it."""
