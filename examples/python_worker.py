#!/usr/bin/env python3
"""A kyu worker in Python, standard library only.

It claims jobs over HTTP (long-polling), heartbeats while it works, saves a
checkpoint after every step so a retry resumes where the last attempt
stopped, and completes (or fails) each job. Delivery is at least once: make
each step idempotent.

    KYU_URL=http://127.0.0.1:7700 python3 examples/python_worker.py --queue demo

A job's payload here is {"numbers": [...]}; with "fail_once_at": "STEP" the
first attempt fails at that step, to show resuming from the checkpoint.
"""
import argparse
import json
import os
import socket
import threading
import urllib.error
import urllib.request

URL = os.environ.get("KYU_URL", "http://127.0.0.1:7700").rstrip("/")
TOKEN = os.environ.get("KYU_TOKEN")
LEASE_MS = 30_000
STEPS = ["fetch", "transform", "store"]


class Refused(Exception):
    """The server said no (the error shape's code and message)."""


def call(method, path, body=None, timeout=90):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if TOKEN:
        req.add_header("Authorization", "Bearer " + TOKEN)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        err = json.loads(e.read() or b"{}").get("error", {})
        raise Refused(f"{e.code} {err.get('code')}: {err.get('message')}") from None


def heartbeat(job, stop, cancelled):
    """Extends the lease every third of it; learns of operator cancels."""
    while not stop.wait(LEASE_MS / 3000):
        try:
            hb = call("POST", f"/v1/jobs/{job['id']}/heartbeat", {"token": job["token"], "lease_ms": LEASE_MS})
            if hb["cancel_requested"]:
                cancelled.set()
        except Refused:
            cancelled.set()  # lease lost: another worker has the job now
            return


def run_step(step, payload, state):
    if payload.get("fail_once_at") == step and not state.get("failed_once"):
        state["failed_once"] = True
        raise RuntimeError(f"simulated failure in {step}")
    if step == "fetch":
        state["numbers"] = payload.get("numbers", [])
    elif step == "transform":
        state["doubled"] = [n * 2 for n in state["numbers"]]
    elif step == "store":
        state["sum"] = sum(state["doubled"])


def handle(job, cancelled):
    # The checkpoint of an earlier attempt says which steps are done.
    state = job.get("checkpoint") or {"done": []}
    resumed_from = list(state["done"])
    for step in STEPS:
        if step in state["done"]:
            continue
        if cancelled.is_set():
            raise RuntimeError("cancelled")
        try:
            run_step(step, job["payload"], state)
        finally:
            # Saved even when the step failed, so "failed_once" survives.
            call("POST", f"/v1/jobs/{job['id']}/checkpoint", {"token": job["token"], "checkpoint": state})
        state["done"].append(step)
        call("POST", f"/v1/jobs/{job['id']}/checkpoint", {"token": job["token"], "checkpoint": state})
        call("POST", f"/v1/jobs/{job['id']}/progress", {"token": job["token"], "progress": {"step": step}})
    return {"sum": state["sum"], "resumed_from": resumed_from, "attempt": job["attempt"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queue", default="demo")
    ap.add_argument("--max-jobs", type=int, default=0, help="stop after this many jobs (0: run forever)")
    args = ap.parse_args()
    worker = f"py-{socket.gethostname()}-{os.getpid()}"
    handled = 0
    while not args.max_jobs or handled < args.max_jobs:
        claimed = call("POST", "/v1/claim", {"queues": [args.queue], "worker": worker, "max": 1,
                                             "lease_ms": LEASE_MS, "wait_ms": 5000})
        for job in claimed["jobs"]:
            stop, cancelled = threading.Event(), threading.Event()
            beat = threading.Thread(target=heartbeat, args=(job, stop, cancelled), daemon=True)
            beat.start()
            try:
                result = handle(job, cancelled)
                call("POST", f"/v1/jobs/{job['id']}/complete", {"token": job["token"], "result": result})
                print(f"completed {job['id']} (attempt {job['attempt']}): {result}", flush=True)
            except Refused as e:
                print(f"refused for {job['id']}: {e}", flush=True)
            except Exception as e:  # the job failed: retried per its policy
                failed = call("POST", f"/v1/jobs/{job['id']}/fail",
                              {"token": job["token"], "error": str(e), "retry_in_ms": 0})
                print(f"failed {job['id']} (attempt {job['attempt']}, now {failed['state']}): {e}", flush=True)
            finally:
                stop.set()
            handled += 1


if __name__ == "__main__":
    main()
