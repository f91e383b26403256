"""A1111's older name for :mod:`modules.infotext_utils`; extensions still import it."""
from modules.infotext_utils import *  # noqa: F401,F403
from modules.infotext_utils import parse_generation_parameters, quote, unquote  # noqa: F401
