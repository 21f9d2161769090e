"""The one exception type the package raises for bad input.

Every message is a single line that names the file or value at fault and what is wrong
with it, so the command line can print it as is instead of a stack trace.
"""


class BioGPTError(Exception):
    """A user-facing error: bad input, a missing or malformed file, a mismatched config."""
