"""Publishing finished articles into a CMS: WordPress (REST API) and Ghost (Admin API).

``job`` is the RQ job and its bookkeeping, ``wordpress`` and ``ghost`` the two targets (each
one class with ``publish()``), ``common`` what they share: the post body built from the
article, the record of what was created remotely, and the error classes that tell a retry
(429, 5xx, transport) from a refusal (any other 4xx). ``routes`` holds
POST /v1/articles/{id}/publish and ``schemas`` its request and the status it reports.

Kept light: ``services.gateway.schemas`` imports ``publish.schemas`` at start-up.
"""
