"""FastAPI + celery-batches: the HTTP API a team would put in front of celery-batches.

A bare FastAPI endpoint whose handler validates the body with pydantic and calls
`apply_async` on the Batches task (`celery_baselines.write_batch`), answering 202
with the task id. It runs on the same uvicorn settings as `writejobs api` (one
process, uvicorn's defaults, no access log). No key check, no operation row:
what it leaves out is what writejobs adds.

Run by bench/e2e_bench.py: `python bench/fastapi_batches.py PORT` with the
`E2E_*` environment of `celery_baselines`.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import uvicorn
from celery_baselines import write_batch
from fastapi import FastAPI
from pydantic import BaseModel, Field

app = FastAPI(title="FastAPI + celery-batches baseline", openapi_url=None)


class WriteBody(BaseModel):
    """The single-record create of writejobs' contract, as far as this endpoint uses it."""

    group_ref: str = Field(alias="groupRef", min_length=1)
    type: Literal["create"]
    record: dict[str, Any]


@app.post("/v1/records", status_code=202)
def write(body: WriteBody) -> dict[str, str]:
    """Queue one record for the next batch; the task id names it."""
    result = write_batch.apply_async(args=[body.record])
    return {"taskId": str(result.id)}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
