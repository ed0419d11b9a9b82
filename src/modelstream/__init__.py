"""modelstream: models on live MongoDB data."""

from modelstream.errors import ApiError, ConfigError, ConfigErrors, ModelFailure, ModelstreamError, ServerError

__version__ = "0.1.0"
__all__ = ["ApiError", "ConfigError", "ConfigErrors", "ModelFailure", "ModelstreamError", "ServerError"]
