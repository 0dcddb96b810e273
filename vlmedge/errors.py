"""Every failure a user can cause or fix is a VlmedgeError subclass.

The CLI prints these as one sentence without a traceback, because they describe a
problem with the user's input or environment, not a bug in vlmedge.
"""


class VlmedgeError(Exception):
    """Base class: the message says what was wrong and what to do."""


class InputError(VlmedgeError, ValueError):
    """An image, audio clip, caption or array that cannot be used as model input."""


class ArtifactError(VlmedgeError):
    """An artifact that is missing, corrupt, tampered with or of an unknown schema."""


class UnsupportedModelError(VlmedgeError):
    """A model architecture or reference vlmedge cannot export."""


class ModelNotFoundError(VlmedgeError):
    """A model reference that names no local folder and is not in the offline cache."""


class BackendUnavailableError(VlmedgeError):
    """A backend or device that is not installed or not present on this machine."""


class ExportError(VlmedgeError):
    """An export step that failed; nothing was written."""


class ParityError(ExportError):
    """An exported file whose outputs differ from the source model beyond its gate."""
