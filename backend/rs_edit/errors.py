"""One error hierarchy for the whole backend.

`InputError` and its children mean "the user gave us something we cannot use": the CLI turns them
into exit status 2 and one line on stderr, the service into a 4xx. Everything else is our fault.
Each class also inherits the matching builtin so callers can catch broadly or precisely.
"""


class RsEditError(Exception):
    """Base of every error rs-edit raises on purpose."""


class InputError(RsEditError, ValueError):
    """Bad user input: a file, a parameter or a combination we cannot use."""


class RasterError(InputError, OSError):
    """The raster is missing, unreadable, truncated or of a kind we do not handle."""


class RoiError(InputError):
    """The region of interest is invalid, empty or does not overlap the raster."""


class GridMismatchError(RoiError):
    """A mask raster is not on the same pixel grid as the image."""


class CrsError(InputError):
    """A coordinate reference system is missing or unknown."""


class ParameterError(InputError):
    """A parameter (prompt, preset, CLIP model, ...) is invalid."""


class NotAvailableError(RsEditError):
    """The feature exists in the interface but is not implemented in this version."""


class CancelledError(RsEditError):
    """The work was cancelled by the user."""


class RemoteError(RsEditError):
    """A job server (`rs-edit augment --server`) could not be reached, or failed or lost a job."""


class RandomClipWarning(UserWarning):
    """Guidance comes from a CLIP with random weights (`tiny-random`): edits ignore the prompt."""
