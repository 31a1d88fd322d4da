"""The plugin API's former home, kept so that plugins written for it keep working: import from
`kdcore.api` instead (it holds every name this module gave)."""

from kdcore.api import *  # noqa: F401,F403
from kdcore.api import __all__  # noqa: F401
