"""Start-up: bringing the pipeline up in a process, in code or with zero code.

``configure()``/``attach()``, the OpenTelemetry distro and configurator, the zero-code
instrumentor and the start-up check a service runs before making reports. The only layer that
wires ``capture`` to ``delivery``.
"""
