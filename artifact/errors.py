"""The errors of the artifact contract: a person's mistake or a host's limit, reported on one line, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what a person gave (a path, an artifact, a setting) or the host it runs on.

    Command lines print it on one line and exit 2; the service refuses to start with it.
    """


class ArtifactError(UserError):
    """An artifact folder that is missing, malformed, from another format version, or does not match its manifest."""


class KernelUnsupported(ArtifactError):
    """An artifact whose int8 numerics this process cannot reproduce (quantized engine or CPU kernel)."""
