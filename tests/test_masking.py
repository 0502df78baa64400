"""One masking rule at every boundary (unit tests; no stack).

The rule (:mod:`mlflow_triton.core.masking`), the exception scrubbing that the plugin and the
CLI apply to what they raise, the log filter and formatters of the daemons, the record
masking of the package's own loggers, and the log hygiene helpers (escaping, rate limits).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback

import pytest
from mlflow.exceptions import MlflowException
from tritonclient.utils import InferenceServerException

from mlflow_triton.core.masking import (
    MaskingFilter,
    install_log_masking,
    mask_data,
    mask_secrets,
    scrub_exception,
)
from mlflow_triton.daemons.log_format import (
    JsonFormatter,
    MaskingTextFormatter,
    RateLimitedLog,
    loggable,
)

SECRET = "pa55-Wd-never-shown"


@pytest.mark.parametrize(
    "text, kept",
    [
        (f"http://alice:{SECRET}@mlflow.internal:5000", "http://***@mlflow.internal:5000"),
        (f"dns+http://u:{SECRET}@triton-headless:8000", "dns+http://***@triton-headless:8000"),
        (f"grpc://{SECRET}@t1:8001", "grpc://***@t1:8001"),
        (f"https://s3/b/k?X-Amz-Signature={SECRET}&X-Amz-Credential={SECRET}&x=1",
         "https://s3/b/k?X-Amz-Signature=***&X-Amz-Credential=***&x=1"),
        (f"https://h/hook?token={SECRET}", "https://h/hook?token=***"),
        (f"https://blob/c?sv=2020&sig={SECRET}", "https://blob/c?sv=2020&sig=***"),
        (f"failed (password={SECRET}, api_key={SECRET})", "failed (password=***, api_key=***)"),
        (f"export AWS_SECRET_ACCESS_KEY={SECRET}", "export AWS_SECRET_ACCESS_KEY=***"),
        (f"'http://u:{SECRET}@h:1/x?secret={SECRET}'", "'http://***@h:1/x?secret=***'"),
    ],
)
def test_userinfo_and_secret_looking_query_values_are_masked(text, kept):
    assert mask_secrets(text) == kept
    assert mask_secrets(kept) == kept  # idempotent


def test_harmless_text_is_unchanged():
    for text in ("http://t1:8000/v2/models/fraud?version=3", "s3://models/triton/fraud/", "fraud@production",
                 "a=b&c=d", "email me at ops@example.com", "-C key=value",
                 "Log it with signature=infer_signature(x, model.predict(x)) or an input_example."):  # fmt: skip
        assert mask_secrets(text) == text


def test_structures_are_masked_keys_and_values():
    data = {f"http://u:{SECRET}@t1:8000": {"state": "READY"}, "urls": [f"http://u:{SECRET}@t2:8000"], "n": 3}
    masked = mask_data(data)
    assert SECRET not in json.dumps(masked) and masked["n"] == 3
    assert masked["http://***@t1:8000"] == {"state": "READY"} and masked["urls"] == ["http://***@t2:8000"]


def chained() -> MlflowException:
    """An MlflowException caused by a tritonclient error, with an OSError as context."""
    try:
        try:
            raise ConnectionRefusedError(111, f"refused by http://u:{SECRET}@t1:8000")
        except OSError as err:
            raise InferenceServerException(f"load failed at http://u:{SECRET}@t1:8000", status="500") from err
    except InferenceServerException as cause:
        err = MlflowException(f"Triton at http://u:{SECRET}@t1:8000 failed", error_code="INTERNAL_ERROR")
        err.__cause__ = cause
        return err


def test_a_scrubbed_exception_keeps_its_type_code_and_traceback_but_no_secret():
    err = chained()
    assert scrub_exception(err) is err
    assert isinstance(err, MlflowException) and err.error_code == "INTERNAL_ERROR"
    assert err.message == "Triton at http://***@t1:8000 failed"
    assert isinstance(err.__cause__, InferenceServerException) and err.__cause__.status() == "500"
    text = "".join(traceback.format_exception(err))
    assert SECRET not in text and "http://***@t1:8000" in text and "ConnectionRefusedError" in text


def test_an_exception_wrapped_in_args_is_scrubbed_too():
    class Wrapper(Exception):  # requests' ConnectionError(MaxRetryError(...)) shape
        pass

    inner = OSError(f"HTTPConnectionPool: url /x?token={SECRET}")
    outer = Wrapper(inner, 42)
    scrub_exception(outer)
    assert SECRET not in str(outer) and outer.args[1] == 42


def record(msg: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("mlflow.tracking", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_the_daemons_log_lines_are_masked_in_text_and_json():
    try:
        raise chained()
    except MlflowException:
        exc_info = sys.exc_info()
    for formatter in (MaskingTextFormatter("%(levelname)s %(message)s"), JsonFormatter()):
        line = record("API request to %s failed", f"http://u:{SECRET}@mlflow:5000/api", exc_info=exc_info)
        line.endpoint = f"https://s3?X-Amz-Signature={SECRET}"  # an extra= field
        MaskingFilter().filter(line)
        text = formatter.format(line)
        assert SECRET not in text and "http://***@mlflow:5000/api" in text, text
    assert json.loads(text)["endpoint"] == "https://s3?X-Amz-Signature=***"


def test_own_records_are_masked_whatever_handler_shows_them(caplog):
    install_log_masking()
    caplog.set_level(logging.INFO)
    logging.getLogger("mlflow_triton.fleet.server").info("Triton %s loaded", f"http://u:{SECRET}@t1:8000")
    logging.getLogger("someone.else").info("untouched %s", f"http://u:{SECRET}@x")
    mine, theirs = caplog.records
    assert mine.getMessage() == "Triton http://***@t1:8000 loaded"
    assert SECRET in theirs.getMessage()  # other libraries' records are left to their handlers


def test_client_text_is_escaped_and_bounded_in_logs():
    forged = "abc\n2026-01-01 00:00:00 ERROR forged line\x1b[31m\u202e"
    shown = loggable(forged)
    assert "\n" not in shown and "\x1b" not in shown and "\\n2026" in shown and "\\x1b" in shown
    huge = loggable("x" * 65536, limit=64)
    assert len(huge) < 100 and huge.endswith("(65536 chars)")


def test_refusal_lines_are_rate_limited_and_the_suppressed_ones_counted(caplog):
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("mlflow_triton.test"), burst=3, period_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="mlflow_triton.test"):
        passed = [log.log(logging.WARNING, "Rejected webhook (%d)", 403) for _ in range(500)]
        now[0] = 61.0
        log.log(logging.WARNING, "Rejected webhook (%d)", 401)
    assert passed.count(True) == 3 and len(caplog.records) == 4
    assert caplog.records[-1].getMessage() == "Rejected webhook (401) (497 similar lines suppressed before this one)"
