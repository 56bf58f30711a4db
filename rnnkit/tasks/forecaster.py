"""The forecaster's former module path, kept for ``rnnkit.cli``'s imports: the task lives in the package
``rnnkit.tasks.forecasting``."""

from .forecasting import *  # noqa: F401,F403
from .forecasting import __all__  # noqa: F401
