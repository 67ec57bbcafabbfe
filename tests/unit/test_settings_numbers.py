"""Number settings take plain ASCII numbers only, in the lineage plugin and its web service."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_lineage.settings import LineageConfigError, LineageSettings
from otel_lineage.web import WebSettings


@pytest.mark.parametrize("value", ["\uff15\uff10\uff10", "5_00", "5e2", "0x1f4"])
def test_a_number_setting_is_plain_ascii(value: str) -> None:
    with pytest.raises(LineageConfigError, match=r"OTEL_LINEAGE_BATCH_SIZE=.* is not valid"):
        LineageSettings.from_env({"OTEL_LINEAGE_BATCH_SIZE": value})
    assert LineageSettings.from_env({"OTEL_LINEAGE_BATCH_SIZE": "500"}).batch_size == 500


def test_the_web_service_uses_the_same_rule(tmp_path: Path) -> None:
    env = {"OTEL_LINEAGE_MAX_UPLOAD_BYTES": "\uff12\uff10\uff14\uff18"}
    with pytest.raises(LineageConfigError, match="OTEL_LINEAGE_MAX_UPLOAD_BYTES"):
        WebSettings.from_env(env, secret_file=tmp_path / "secret")
    ok = WebSettings.from_env({"OTEL_LINEAGE_MAX_UPLOAD_BYTES": "2048"}, secret_file=tmp_path / "s")
    assert ok.max_upload_bytes == 2048
