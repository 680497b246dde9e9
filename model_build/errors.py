"""The exception type the build commands raise for a user's mistake."""

from artifact.errors import UserError


class BuildError(UserError):
    """A problem with the user's input: the CLI prints it on one line and exits 2."""


class VerificationError(BuildError):
    """A built module failed one of the checks that run before anything is written."""
