import grpc
import pytest

from tessera.common import errors
from tessera.common.status import code_for, error_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidSpec("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.QuotaExceeded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Conflict("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.StoreUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.StoreCorrupt("x"), grpc.StatusCode.DATA_LOSS),
        (errors.TesseraError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_domain_errors_map_to_status_codes_and_back(
    error: errors.TesseraError, code: grpc.StatusCode
) -> None:
    assert code_for(error) == code
    back = error_for(code, "message")
    if code != grpc.StatusCode.INTERNAL:
        assert code_for(back) == code
    assert "message" in str(back)
