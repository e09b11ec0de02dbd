"""A Sparkplug B edge node driven by pysparkplug (a library sensorhub's authors did not write),
publishing through a real broker: NBIRTH with aliases and DBIRTH of a device, NDATA naming its
metrics by alias only (datatypes left to the BIRTH), DDATA, an NDATA after a skipped seq, then
the rebirth the host asks for (NDEATH and a new NBIRTH/DBIRTH), NDATA again and a final NDEATH.

    python sparkplug_node.py <host> <port> <group> <node>

Prints one JSON object: the metrics published with their times (ms), and how many rebirth
commands arrived.
"""

import json
import sys
import threading
import time

import pysparkplug as spb

host, port, group, node_id = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rebirths = threading.Event()
commands = []


def on_command(_node, message):
    for metric in message.payload.metrics:
        if metric.name == "Node Control/Rebirth" and metric.value:
            commands.append(metric.name)
            rebirths.set()


def wait_until(condition, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


now = int(time.time() * 1000)
t0, t1, t2, t3 = now - 3_600_000, now - 3_500_000, now - 3_400_000, now - 3_300_000
D, I8, S, F = spb.DataType.DOUBLE, spb.DataType.INT8, spb.DataType.STRING, spb.DataType.FLOAT

node = spb.EdgeNode(
    group,
    node_id,
    metrics=[
        spb.Metric(timestamp=t0, name="Temp", datatype=D, value=20.5, alias=1),
        spb.Metric(timestamp=t0, name="Offset", datatype=I8, value=-3, alias=2),
        spb.Metric(timestamp=t0, name="Label", datatype=S, value="east", alias=3),
    ],
    cmd_callback=on_command,
)
node.register(spb.Device("pump", [spb.Metric(timestamp=t0, name="Flow", datatype=F, value=1.25, alias=10)]))


def connect():
    node.connect(host, port=port, blocking=False)
    wait_until(lambda: node._connected, "the connection")
    time.sleep(0.5)


def ndata_by_alias(seq, ts, values):
    """NDATA naming its metrics by alias only, without datatypes (the BIRTH has them)."""
    metrics = tuple(spb.Metric(timestamp=ts, name=None, datatype=dt, value=v, alias=a) for a, dt, v in values)
    topic = spb.Topic(message_type=spb.MessageType.NDATA, group_id=group, edge_node_id=node_id)
    payload = spb.NData(timestamp=ts, seq=seq, metrics=metrics)
    node._client.publish(spb.Message(topic=topic, payload=payload, qos=spb.QoS.AT_LEAST_ONCE, retain=False))


connect()
ndata_by_alias(node._seq, t1, [(1, D, 21.5), (2, I8, -4)])
node.update_device("pump", [spb.Metric(timestamp=t1, name="Flow", datatype=F, value=1.5, alias=10)])
node._seq  # a message lost on the way: the next one's seq skips it
ndata_by_alias(node._seq, t2, [(1, D, 22.5)])
if not rebirths.wait(20):
    raise SystemExit("no rebirth command came")
node.disconnect()
time.sleep(0.5)
connect()
ndata_by_alias(node._seq, t3, [(1, D, 23.5)])
time.sleep(0.5)
node.disconnect()
print(
    json.dumps(
        {
            "t0": t0,
            "t1": t1,
            "t2": t2,
            "t3": t3,
            "rebirth_commands": len(commands),
        }
    )
)
