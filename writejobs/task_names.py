"""Celery task names: the API and scheduler send by name and never import the worker."""

WRITE_OPERATION = "writejobs.write_operation"
WRITE_BATCH = "writejobs.write_batch"
DELIVER_WEBHOOK = "writejobs.deliver_webhook"
