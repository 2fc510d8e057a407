"""The one error the dev backend's operations raise; the HTTP layer turns it into a JSON answer."""

from __future__ import annotations


class ApiError(Exception):
    """Answer with HTTP ``status`` and ``{"error": {"code": code, "message": message}}``.

    ``code`` is a lowercase status name (``invalid_argument``, ``not_found``…);
    ``message`` is short and safe to show a client.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def invalid_argument(message: str) -> ApiError:
    return ApiError(400, "invalid_argument", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)
