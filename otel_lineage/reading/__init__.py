"""Reading: the questions lineage answers, one implementation each.

Queries (audit, list, identify, stats), exports of the stored trace (Jaeger, OTLP JSON),
OpenLineage events, replay/verification and retention. The CLI and the web service both call
these functions; neither has SQL of its own. Depends on ``delivery`` (schema, engines).
"""
