"""The documented JSON protocol, spoken by a plain NATS client (nats-py), no vgas code involved.

Each check is what a `nats` CLI user types (see docs/protocol.md). Run by tests/tests/json_clients.rs
against a real swarm; needs VGAS_NATS_URL and VGAS_NKEY_SEED (the client role's nkey seed), and
VGAS_CA_FILE when the server takes TLS.
"""

import asyncio
import json
import os
import ssl
import sys
import uuid

import nats

PREFIX = "vgas"
checks = []


def check(name):
    def wrap(fn):
        checks.append((name, fn))
        return fn
    return wrap


async def req(nc, subject, body, timeout=5):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subject, payload, timeout=timeout)
    return json.loads(msg.data)


@check("vgas.dashboard answers where the dashboard is (no url without --dashboard)")
async def dashboard(nc):
    info = await req(nc, f"{PREFIX}.dashboard", {})
    assert isinstance(info, dict) and "url" not in info, info


@check("$SRV.PING, $SRV.INFO and $SRV.STATS answer for vgas-master")
async def micro_service(nc):
    # Every master also serves the LLM gateway and the swarm view as services of their own,
    # `vgas-llm` and `vgas-view`.
    ping = await req(nc, "$SRV.PING", b"")
    assert ping["name"] in ("vgas-master", "vgas-llm", "vgas-view"), ping
    view = await req(nc, "$SRV.INFO.vgas-view", b"")
    assert {e["subject"] for e in view["endpoints"]} == {"vgas.swarm.view"}, view
    ping = await req(nc, "$SRV.PING.vgas-master", b"")
    assert ping["name"] == "vgas-master", ping
    assert ping["type"] == "io.nats.micro.v1.ping_response", ping
    llm = await req(nc, "$SRV.INFO.vgas-llm", b"")
    assert {e["subject"] for e in llm["endpoints"]} == {"vgas.llm.complete", "vgas.llm.usage"}, llm
    info = await req(nc, "$SRV.INFO.vgas-master", b"")
    subjects = {e["subject"] for e in info["endpoints"]}
    core = {"vgas.status", "vgas.task.cancel", "vgas.task.info", "vgas.task.run", "vgas.task.submit"}
    assert core <= subjects, subjects
    await req(nc, "vgas.status", b"")
    stats = await req(nc, "$SRV.STATS.vgas-master", b"")
    status = [e for e in stats["endpoints"] if e["subject"] == "vgas.status"][0]
    assert status["num_requests"] >= 1, stats


@check("nats req vgas.status '' answers a SwarmPulse in JSON")
async def status(nc):
    pulse = await req(nc, "vgas.status", b"")
    assert len(pulse["live"]) == 1, pulse
    node = pulse["live"][0]
    for key in ("id", "slots", "free_slots", "in_flight", "cpus", "memory_mb", "toolchains", "isolation"):
        assert key in node, (key, node)
    assert pulse["queue_capacity"] > 0 and pulse["abnormal"] == [], pulse


@check("nats req vgas.swarm.view '' answers the view in JSON")
async def swarm_view(nc):
    view = await req(nc, "vgas.swarm.view", b"")
    assert view["answered_by"].startswith("master-") and view["leading"] is True, view
    live = [n["id"] for n in (await req(nc, "vgas.status", b""))["live"]]
    assert [n["id"] for n in view["nodes"]] == live, (view, live)
    node = view["nodes"][0]
    for key in ("hostname", "host", "slots", "draining", "heard_ms", "heard_by"):
        assert key in node, (key, node)
    assert view["leases"] == [], view


@check("the design example submits, streams JSON events, and ends with one finished event")
async def submit_and_stream(nc):
    task_id = uuid.uuid4().hex
    events = []
    done = asyncio.Event()

    async def on_event(msg):
        events.append(json.loads(msg.data))
        if events[-1]["type"] == "finished":
            done.set()

    sub = await nc.subscribe(f"vgas.task.{task_id}.>", cb=on_event)
    reply = await req(nc, "vgas.task.submit", {
        "task_id": task_id, "kind": "exec", "cmd": ["sh", "-c", "echo hi; echo oops >&2; exit 4"],
        "env": {}, "stdin": "", "deadline_s": 60, "needs": {},
    })
    assert reply == {"task_id": task_id, "events": f"vgas.task.{task_id}.events", "duplicate": False}, reply
    await asyncio.wait_for(done.wait(), 30)
    await asyncio.sleep(0.3)
    await sub.unsubscribe()
    types = [e["type"] for e in events]
    assert types[0] == "assigned" and "started" in types and types.count("finished") == 1, types
    out = "".join(e["data"] for e in events if e["type"] == "stdout")
    err = "".join(e["data"] for e in events if e["type"] == "stderr")
    assert (out, err) == ("hi\n", "oops\n"), (out, err)
    fin = events[-1]
    assert fin["outcome"] == {"status": "exited", "exit_code": 4}, fin
    assert fin["task_id"] == task_id and fin["attempts"] == 1, fin

    info = await req(nc, "vgas.task.info", {"task_id": task_id})
    assert info["state"]["state"] == "finished", info
    assert info["state"]["outcome"]["exit_code"] == 4, info

    again = await req(nc, "vgas.task.submit", {
        "task_id": task_id, "kind": "exec", "cmd": ["sh", "-c", "echo hi; echo oops >&2; exit 4"],
        "env": {}, "stdin": "", "deadline_s": 60, "needs": {},
    })
    assert again["duplicate"] is True, again


@check("nats req vgas.task.run answers with the finished event; a rerun of the id waits on the same task")
async def run_and_wait(nc):
    task_id = uuid.uuid4().hex
    spec = {"task_id": task_id, "cmd": ["sh", "-c", "sleep 0.5; exit 3"]}
    # Two callers run the same id at once: one task, both answered with its one outcome.
    first, second = await asyncio.gather(
        req(nc, "vgas.task.run", spec, timeout=30),
        req(nc, "vgas.task.run", spec, timeout=30),
    )
    for fin in (first, second):
        assert fin["type"] == "finished" and fin["task_id"] == task_id, fin
        assert fin["outcome"] == {"status": "exited", "exit_code": 3}, fin
        assert fin["attempts"] == 1, fin
    info = await req(nc, "vgas.task.info", {"task_id": task_id})
    assert info["attempt"] == 1 and info["state"]["state"] == "finished", info
    # Finished: a rerun is answered at once from the record, the same event.
    again = await req(nc, "vgas.task.run", spec)
    assert again == first, (again, first)
    # Refusals come back at once, as on submit.
    other = await req(nc, "vgas.task.run", {"task_id": task_id, "cmd": ["true"]})
    assert other["error"]["code"] == "conflict", other
    for payload in (b"{nope", json.dumps([{"cmd": ["true"]}]).encode()):
        r = await req(nc, "vgas.task.run", payload)
        assert r["error"]["code"] == "bad_request" and r["error"]["message"], r
    # A generated id: the answer names it.
    fin = await req(nc, "vgas.task.run", {"cmd": ["sh", "-c", "exit 0"]}, timeout=30)
    assert fin["outcome"] == {"status": "exited", "exit_code": 0} and fin["task_id"], fin


@check("a submit without task_id gets one; stdin and files arrive")
async def submit_generated_id(nc):
    reply = await req(nc, "vgas.task.submit", {
        "cmd": ["sh", "-c", "cat; cat in.txt"], "stdin": "a\n",
        "files": [{"path": "in.txt", "text": "b\n"}],
    })
    task_id = reply["task_id"]
    assert reply["events"] == f"vgas.task.{task_id}.events", reply
    for _ in range(100):
        info = await req(nc, "vgas.task.info", {"task_id": task_id})
        if info["state"]["state"] == "finished":
            assert info["state"]["outcome"] == {"status": "exited", "exit_code": 0}, info
            return
        await asyncio.sleep(0.2)
    raise AssertionError("task did not finish")


@check("a secret env value reaches the command; vgas.task.info shows it sealed")
async def secret_env(nc):
    secret = "py-secret-" + uuid.uuid4().hex
    out = []
    done = asyncio.Event()
    task_id = uuid.uuid4().hex

    async def on_event(msg):
        ev = json.loads(msg.data)
        out.append(ev)
        if ev["type"] == "finished":
            done.set()

    sub = await nc.subscribe(f"vgas.task.{task_id}.events", cb=on_event)
    await req(nc, "vgas.task.submit", {
        "task_id": task_id, "cmd": ["sh", "-c", 'test "$TOKEN" = "$EXPECTED_LEN" || echo "len=${#TOKEN}"'],
        "env": {"TOKEN": {"value": secret, "secret": True}, "EXPECTED_LEN": "x"},
    })
    info = await req(nc, "vgas.task.info", {"task_id": task_id})
    assert set(info["spec"]["env"]["TOKEN"]) == {"sealed"}, info["spec"]["env"]
    assert secret not in json.dumps(info), info
    await asyncio.wait_for(done.wait(), 30)
    await sub.unsubscribe()
    stdout = "".join(e["data"] for e in out if e["type"] == "stdout")
    assert stdout == f"len={len(secret)}\n", stdout
    assert secret not in json.dumps(out), out


@check("bad input gets a JSON error reply with a code")
async def errors(nc):
    cases = [
        (b"{nope", "bad_request"),
        (json.dumps({"cmd": "ls"}).encode(), "bad_request"),
        (json.dumps({"cmd": ["ls"], "colour": "red"}).encode(), "bad_request"),
        (b" " * (2 * 1024 * 1024), "too_large"),
    ]
    for payload, code in cases:
        r = await req(nc, "vgas.task.submit", payload)
        assert r["error"]["code"] == code and r["error"]["message"], r
    r = await req(nc, "vgas.task.info", {"task_id": "missing"})
    assert r["error"]["code"] == "not_found", r
    r = await req(nc, "vgas.task.cancel", {"task_id": "missing"})
    assert r["error"]["code"] == "not_found", r


async def main():
    # With TLS (VGAS_CA_FILE: the swarm's CA, as `vgas init` writes it), trust only that CA.
    ca = os.environ.get("VGAS_CA_FILE")
    tls = ssl.create_default_context(cafile=ca) if ca else None
    nc = await nats.connect(os.environ["VGAS_NATS_URL"], nkeys_seed_str=os.environ["VGAS_NKEY_SEED"],
                            tls=tls, max_reconnect_attempts=0)
    passed = failed = 0
    for name, fn in checks:
        try:
            await fn(nc)
            print(f"ok     {name}")
            passed += 1
        except Exception as e:  # noqa: BLE001 - report every failing check
            print(f"FAILED {name}: {type(e).__name__}: {e}")
            failed += 1
    await nc.close()
    print(f"protocol: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
