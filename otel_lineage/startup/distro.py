"""The OpenTelemetry distro and configurator of this plugin (zero-code start-up).

``opentelemetry-instrument`` (and ``auto_instrumentation.initialize()``, which the report
service's own commands call) loads one distro, one configurator and every instrumentor. The
stock ``opentelemetry-distro`` defaults the OTLP protocol to gRPC, whose exporter is not
installed here: the SDK then fails to start and the lineage instrumentor never runs, silently.
This distro replaces it (the project does not install ``opentelemetry-distro``) with defaults
that work on a fresh machine and keep data at home:

- ``OTEL_TRACES_SAMPLER``: ``lineage_parentbased_always_on`` (the lineage wrapper of the SDK's
  own default; exactly the default when ``ENABLE_REPORT_LINEAGE=false``);
- ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf`` (the installed exporter);
- ``OTEL_TRACES_EXPORTER``: ``otlp`` when an OTLP endpoint is set, else ``none``; metrics and
  logs: ``none`` (set them to export them).

Every default is ``setdefault``: what the user sets wins. This is the only module that touches
an underscore SDK name (``_OTelSDKConfigurator``, which is what ``opentelemetry-distro``'s own
configurator is).
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.environment_variables import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_TRACES_EXPORTER,
)
from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_TRACES_SAMPLER,
)

from otel_lineage.settings import LineageConfigError, LineageSettings
from otel_lineage.startup.configuration import check_sampler_env
from otel_lineage.startup.instrumentor import LineageInstrumentor

DEFAULT_SAMPLER = "lineage_parentbased_always_on"
DEFAULT_PROTOCOL = "http/protobuf"


def apply_defaults(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Set this distro's defaults for every variable the user left unset."""
    endpoint = environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or environ.get(
        OTEL_EXPORTER_OTLP_ENDPOINT
    )
    environ.setdefault(OTEL_TRACES_SAMPLER, DEFAULT_SAMPLER)
    environ.setdefault(OTEL_EXPORTER_OTLP_PROTOCOL, DEFAULT_PROTOCOL)
    environ.setdefault(OTEL_TRACES_EXPORTER, "otlp" if endpoint else "none")
    environ.setdefault(OTEL_METRICS_EXPORTER, "none")
    environ.setdefault(OTEL_LOGS_EXPORTER, "none")


class LineageDistro(BaseDistro):  # type: ignore[misc]
    """Entry point ``opentelemetry_distro: otel_lineage``.

    It also checks the lineage settings and the sampler variables before the SDK is
    configured. A bad value is recorded, not raised: the auto-instrumentation start-up would
    log a traceback for it (and, under ``opentelemetry-instrument``, go on without lineage);
    the recorded reason is what ``startup_check`` reports in one line, and the lineage
    instrumentor does not attach.
    """

    def _configure(self, **kwargs: Any) -> None:
        apply_defaults()
        try:
            if LineageSettings.from_env().enabled:
                check_sampler_env()
        except LineageConfigError as exc:
            LineageInstrumentor.refused = str(exc)
            # The SDK would fall back to its default sampler after two warnings of its own;
            # name that default so the one line the user sees is the reason above.
            os.environ[OTEL_TRACES_SAMPLER] = "parentbased_always_on"
        else:
            LineageInstrumentor.refused = None


class LineageConfigurator(_OTelSDKConfigurator):
    """Entry point ``opentelemetry_configurator: otel_lineage``: the SDK's own configurator."""
