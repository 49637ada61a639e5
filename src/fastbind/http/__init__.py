"""Serving: the HTTP/1.1 server (``server.py`` and its parts), the process supervisor,
and the raw HTTP conversions behind ``fastbind.embed`` (``raw.py``, ``_raw.pyx``)."""
