"""The one exception type for bad user input.

The CLI prints its message as a single line and exits with code 2, so every message
names the file, line or field at fault and what was expected.
"""


class InputError(Exception):
    """Invalid user input: a missing or malformed file, an unknown field, a bad setting."""
