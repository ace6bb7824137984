"""The task path as a new user meets it: a plain NATS client (nats-py) next to Ray, one run.

Run by scripts/bench-taskpath.sh, which starts nats-server, a master and a worker, uploads the
no-op module and sets VGAS_NATS_URL, VGAS_NKEY_SEED and BENCH_MODULE. Each row is
measured the same way: LATENCY_N round trips one after the other (after WARMUP ones) for p50
and p99, then IN_FLIGHT loops at once for WINDOW_S seconds for tasks/s.

- raw: NATS request-reply to a responder in another process (same server, same library);
- wasm: a no-op WASI module (`_start` returns), exec: `true` in the full native sandbox. A
  round trip subscribes to the task's events, submits JSON on vgas.task.submit and waits for
  the `finished` event. The median time of each event after the submit is printed too: where
  the time goes, as the client sees it;
- wasm-run, exec-run: the same tasks on vgas.task.run, whose reply is the `finished` event
  (one request per task, as `ray.get(f.remote())` is one call);
- batch: BATCH_TASKS wasm tasks submitted in arrays of BATCH_SIZE, then drained;
- ray: a no-op remote function, `ray.init(num_cpus=2)`, the same loops.

Prints one table row per path (markdown) and a JSON line with every figure.
"""

import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
import uuid

WARMUP = int(os.environ.get("WARMUP", "50"))
LATENCY_N = int(os.environ.get("LATENCY_N", "300"))
IN_FLIGHT = int(os.environ.get("IN_FLIGHT", "32"))
WINDOW_S = float(os.environ.get("WINDOW_S", "4"))
BATCH_TASKS = int(os.environ.get("BATCH_TASKS", "20000"))
BATCH_SIZE = int(os.environ.get("BATCH_SIZE", "1000"))
PREFIX = "vgas"
RAW_SUBJECT = "bench.raw.echo"


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def row(name, lat, rate):
    return {
        "path": name,
        "p50_ms": round(pct(lat, 0.5) * 1e3, 3),
        "p99_ms": round(pct(lat, 0.99) * 1e3, 3),
        "tasks_per_s": round(rate),
    }


async def connect(raw=False):
    import nats

    if raw:
        return await nats.connect(os.environ["BENCH_RAW_URL"])
    ca = os.environ.get("VGAS_CA_FILE")
    tls = __import__("ssl").create_default_context(cafile=ca) if ca else None
    return await nats.connect(os.environ["VGAS_NATS_URL"], nkeys_seed_str=os.environ["VGAS_NKEY_SEED"], tls=tls)


async def loops(one, n_latency, in_flight, window, loaded=lambda: None):
    """p50/p99 of sequential round trips, then the rate of `in_flight` loops for `window`
    (`loaded` is called between the two)."""
    for _ in range(WARMUP):
        await one()
    lat = []
    for _ in range(n_latency):
        t = time.perf_counter()
        await one()
        lat.append(time.perf_counter() - t)
    loaded()
    done = 0
    end = time.perf_counter() + window

    async def loop():
        nonlocal done
        while time.perf_counter() < end:
            await one()
            done += 1

    t = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    return lat, done / (time.perf_counter() - t)


def responder():
    async def serve():
        nc = await connect(raw=True)

        async def echo(msg):
            await msg.respond(msg.data)

        await nc.subscribe(RAW_SUBJECT, cb=echo)
        await asyncio.Event().wait()

    asyncio.run(serve())


async def raw():
    proc = multiprocessing.Process(target=responder, daemon=True)
    proc.start()
    nc = await connect(raw=True)
    for _ in range(100):
        try:
            await nc.request(RAW_SUBJECT, b"x", timeout=0.5)
            break
        except Exception:
            await asyncio.sleep(0.1)

    async def one():
        await nc.request(RAW_SUBJECT, b"ping", timeout=5)

    lat, rate = await loops(one, LATENCY_N, IN_FLIGHT, WINDOW_S)
    await nc.close()
    proc.terminate()
    return row("raw NATS request-reply (nats-py, responder in another process)", lat, rate)


class Tasks:
    """Submits tasks and follows their events; one subscription per task, as a user does."""

    def __init__(self, nc):
        self.nc = nc
        self.hops = {}
        # Hops are recorded for round trips alone (the latency loop), not under load.
        self.record = True

    async def run(self, spec):
        task_id = uuid.uuid4().hex
        seen = {}
        finished = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()

        async def on_event(msg):
            ev = json.loads(msg.data)
            kind = ev.get("type")
            seen.setdefault(kind, time.perf_counter() - t0)
            if kind == "finished" and not finished.done():
                finished.set_result(ev)

        sub = await self.nc.subscribe(f"{PREFIX}.task.{task_id}.events", cb=on_event)
        body = dict(spec, task_id=task_id)
        reply = await self.nc.request(f"{PREFIX}.task.submit", json.dumps(body).encode(), timeout=10)
        seen["accepted"] = time.perf_counter() - t0
        answer = json.loads(reply.data)
        if "error" in answer:
            raise RuntimeError(f"submit refused: {answer}")
        ev = await asyncio.wait_for(finished, 30)
        await sub.unsubscribe()
        outcome = ev["outcome"]
        if outcome.get("status") != "exited" or outcome.get("exit_code") != 0:
            raise RuntimeError(f"task {task_id} did not succeed: {ev}")
        for k, v in seen.items() if self.record else ():
            self.hops.setdefault(k, []).append(v)

    def hop_medians(self):
        return {k: round(statistics.median(v) * 1e3, 3) for k, v in sorted(self.hops.items(), key=lambda kv: statistics.median(kv[1]))}


async def run_path(name, spec):
    """Each task one request on vgas.task.run; the reply is its `finished` event."""
    nc = await connect()

    async def one():
        body = dict(spec, task_id=uuid.uuid4().hex)
        reply = await nc.request(f"{PREFIX}.task.run", json.dumps(body).encode(), timeout=30)
        ev = json.loads(reply.data)
        outcome = ev.get("outcome", {})
        if ev.get("type") != "finished" or outcome.get("status") != "exited" or outcome.get("exit_code") != 0:
            raise RuntimeError(f"task.run did not succeed: {ev}")

    lat, rate = await loops(one, LATENCY_N, IN_FLIGHT, WINDOW_S)
    await nc.close()
    return row(name, lat, rate)


async def vgas_path(name, spec):
    nc = await connect()
    tasks = Tasks(nc)
    lat, rate = await loops(lambda: tasks.run(spec), LATENCY_N, IN_FLIGHT, WINDOW_S, loaded=lambda: setattr(tasks, "record", False))
    await nc.close()
    r = row(name, lat, rate)
    r["hops_ms"] = tasks.hop_medians()
    return r


async def batch(module):
    """BATCH_TASKS wasm tasks in arrays of BATCH_SIZE: accepted per second, then drained."""
    nc = await connect()
    finished = 0
    all_done = asyncio.Event()

    async def on_event(msg):
        nonlocal finished
        if msg.subject.startswith(mine) and b'"finished"' in msg.data:
            finished += 1
            if finished == BATCH_TASKS:
                all_done.set()

    run = uuid.uuid4().hex[:12]
    mine = f"{PREFIX}.task.b{run}-"
    await nc.subscribe(f"{PREFIX}.task.*.events", cb=on_event, pending_msgs_limit=1_000_000)
    t0 = time.perf_counter()
    for start in range(0, BATCH_TASKS, BATCH_SIZE):
        specs = [{"task_id": f"b{run}-{i}", "kind": "wasm", "module": module} for i in range(start, min(start + BATCH_SIZE, BATCH_TASKS))]
        while True:
            reply = await nc.request(f"{PREFIX}.task.submit", json.dumps(specs).encode(), timeout=30)
            answers = json.loads(reply.data)
            if isinstance(answers, dict):
                raise RuntimeError(f"batch refused: {answers}")
            busy = [s for s, a in zip(specs, answers) if "error" in a]
            if not busy:
                break
            if any(a["error"].get("code") != "busy" for a in answers if "error" in a):
                raise RuntimeError(f"batch task refused: {answers}")
            specs = busy
            await asyncio.sleep(0.05)
    accepted = time.perf_counter() - t0
    await asyncio.wait_for(all_done.wait(), 600)
    drained = time.perf_counter() - t0
    await nc.close()
    return {
        "path": f"batch: {BATCH_TASKS} wasm no-op tasks in arrays of {BATCH_SIZE}",
        "accepted_per_s": round(BATCH_TASKS / accepted),
        "finished_per_s": round(BATCH_TASKS / drained),
    }


def ray_path():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")

    @ray.remote
    def noop():
        return 0

    for _ in range(WARMUP):
        ray.get(noop.remote())
    lat = []
    for _ in range(LATENCY_N):
        t = time.perf_counter()
        ray.get(noop.remote())
        lat.append(time.perf_counter() - t)
    done = 0
    pending = [noop.remote() for _ in range(IN_FLIGHT)]
    t = time.perf_counter()
    end = t + WINDOW_S
    while time.perf_counter() < end:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
        done += len(ready)
        pending += [noop.remote() for _ in ready]
    rate = done / (time.perf_counter() - t)
    ray.get(pending)
    ray.shutdown()
    return row(f"Ray {ray.__version__} no-op remote function (num_cpus=2)", lat, rate)


async def main(which):
    rows = []
    module = os.environ.get("BENCH_MODULE", "")
    for w in which:
        if w == "raw":
            rows.append(await raw())
        elif w == "wasm":
            rows.append(await vgas_path("vgas wasm no-op task (nats-py JSON)", {"kind": "wasm", "module": module}))
        elif w == "exec":
            rows.append(await vgas_path("vgas exec no-op task `true`, full sandbox (nats-py JSON)", {"kind": "exec", "cmd": ["true"]}))
        elif w == "wasm-run":
            rows.append(await run_path("vgas wasm no-op task on task.run (nats-py JSON)", {"kind": "wasm", "module": module}))
        elif w == "exec-run":
            rows.append(await run_path("vgas exec no-op task `true` on task.run, full sandbox (nats-py JSON)", {"kind": "exec", "cmd": ["true"]}))
        elif w == "batch":
            rows.append(await batch(module))
        elif w == "ray":
            rows.append(ray_path())
        else:
            sys.exit(f"unknown path {w!r}: raw, wasm, wasm-run, exec, exec-run, batch or ray")
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    which = sys.argv[1:] or ["raw", "wasm", "wasm-run", "exec", "exec-run", "batch", "ray"]
    asyncio.run(main(which))
