"""BullMQ's step jobs on kyu. In BullMQ a processor switches on
``job.data.step``, calls ``job.updateData`` between steps, and adds children
then ``moveToWaitingChildren``. With kyu each step is one ``ctx.step`` line
(its result saved in the checkpoint, skipped on a later attempt) and
children are one ``ctx.wait_for_children`` call.

    KYU_URL=http://127.0.0.1:7700 python examples/python/bullmq_steps.py
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import kyu

QUEUE = os.environ.get("KYU_EXAMPLE_QUEUE", f"bull-{uuid.uuid4().hex[:6]}")
client = kyu.Client()
worker = kyu.Worker(client, queues=[QUEUE], concurrency=4, poll=1)
ran: list[str] = []


@worker.task("order")
def order(payload: Any, ctx: kyu.Context) -> Any:
    reserved = ctx.step("reserve", lambda: (ran.append("reserve"), {"items": payload["items"]})[1])
    if ctx.attempt == 1:
        raise RuntimeError("the payment provider timed out")  # step "reserve" is not redone
    shipments = ctx.wait_for_children(
        [{"queue": QUEUE, "kind": "ship", "payload": {"item": item}} for item in reserved["items"]]
    )
    ctx.progress({"shipped": len(shipments)})
    ctx.log(f"{len(shipments)} parcels shipped")
    return {"order": payload["order"], "parcels": sorted(s["parcel"] for s in shipments.values())}


@worker.task("ship")
def ship(payload: Any, ctx: kyu.Context) -> Any:
    ran.append(f"ship {payload['item']}")
    return {"parcel": f"parcel-{payload['item']}"}


def main() -> None:
    t = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    t.start()
    try:
        job = client.enqueue(
            QUEUE, "order", {"order": 7, "items": ["a", "b", "c"]}, backoff={"kind": "fixed", "delay_ms": 50}
        )
        done = client.result(job.id, wait=60)
        assert done.state == "completed", done
        assert done.result == {"order": 7, "parcels": ["parcel-a", "parcel-b", "parcel-c"]}
        assert ran.count("reserve") == 1, ran
        assert sorted(r for r in ran if r.startswith("ship")) == ["ship a", "ship b", "ship c"]
        print("events:", " ".join(e.type for e in client.events(job.id)))
        print("log:", [line.line for line in client.log(job.id)])
    finally:
        worker.stop()
        t.join(30)
    print("BullMQ-style example: ok")


if __name__ == "__main__":
    main()
