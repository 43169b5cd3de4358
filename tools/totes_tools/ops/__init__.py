"""Operations seen locally: the metrics a local run emitted (``metricstore``), the template's
alarms and dashboard evaluated over them (``cloudwatch``) and drawn (``dashboard``), and the
Lambda cost of a run (``cost``)."""
