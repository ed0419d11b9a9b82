"""The exception tree. Every error a user can see says what was wrong, where, and what to do."""

from __future__ import annotations


class ModelstreamError(Exception):
    """Base of every error modelstream raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ConfigError(ModelstreamError):
    """A registry that cannot be used: names the file and line."""

    def __init__(self, message: str, *, file: str, line: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {super().__str__()}"


class ConfigErrors(ModelstreamError):
    """Several ConfigErrors found in one pass, so a user fixes them all at once."""

    def __init__(self, errors: list[ConfigError]):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class ModelFailure(ModelstreamError):
    """A model could not process one input."""


class ServerError(ModelstreamError):
    """The database server could not be started or reached."""


class ApiError(ModelstreamError):
    """A socket request failed; `code` is machine-readable."""

    def __init__(self, code: str, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.code = code
