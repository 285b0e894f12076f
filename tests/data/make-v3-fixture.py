#!/usr/bin/env python3
"""Makes tests/data/v3.db and the answers the master that wrote it gave (v3-answers.json).

Run once with a dist-traceroute built from the last release of schema version 3 (commit
86e205b): `python3 tests/data/make-v3-fixture.py path/to/dist-traceroute`. The migration test
opens a copy of v3.db with the current master and checks that every answer is the same.
"""
import json, os, shutil, subprocess, sys, tempfile, time, urllib.request

binary = os.path.abspath(sys.argv[1])
here = os.path.dirname(os.path.abspath(__file__))
work = tempfile.mkdtemp(prefix="dt-v3-")
json.dump({"Slaves": [{"Name": "slave1", "Password": "1234"}, {"Name": "slave2", "Password": "123"}]},
          open(os.path.join(work, "dt-slaves.json"), "w"))
json.dump({"ReportURL": "", "Retries": 1, "MaxHops": 30, "TimeoutMs": 500, "Targets": {
    "76d96640-d357-47b3-ba50-5248a7604bc9": {"Name": "Google", "Address": "www.google.at"},
    "fc06ab7c-ad6f-4837-b2f8-96ef95c4acee": {"Name": "LKML", "Address": "lkml.org", "Protocol": "icmp"},
    "5e1f7d2a-3b9c-4e8d-8a6f-1c2d3e4f5a6b": {"Name": "V6", "Address": "2001:db8::99"}}},
          open(os.path.join(work, "dt-targets.json"), "w"))
master = subprocess.Popen([binary, "master", "-listen", "127.0.0.1:0", "-path-confirm", "2",
                           "-retention", "0", "-log", "m.log"], cwd=work, stdout=subprocess.PIPE, text=True)
line = master.stdout.readline()
base = line.strip().split(" ")[-1]

def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
    return urllib.request.urlopen(req).read()

def get(path):
    return json.loads(urllib.request.urlopen(base + path).read())

creds = {"slave1": {"Name": "slave1", "Password": "1234"}, "slave2": {"Name": "slave2", "Password": "123"}}
n = 0
def uid():
    global n
    n += 1
    return "00000000-0000-4000-8000-%012d" % n

# A Go slave's result, exactly as the seed shows it.
post("/results/", {"Creds": creds["slave1"], "ID": "d9bbc544-eabe-4536-a9ed-ec6cbdaaedb0",
    "DateTime": "2019-02-07T21:06:10.803086+01:00", "Target": {"Name": "Google", "Address": "www.google.at"},
    "Success": True, "HopCount": 17, "Hops": [{"Success": True, "Address": [192, 168, 1, 1],
    "Host": "modem.home.", "N": 52, "ElapsedTime": 2040972, "TTL": 1}]})
# Go slaves with nanosecond times, trimmed fractions and Z.
for i, dt in enumerate(["2026-11-20T10:00:00.123456789Z", "2026-11-20T10:01:00Z", "2026-11-20T10:02:00.5+02:00"]):
    post("/results/", {"Creds": creds["slave2"], "ID": uid(), "DateTime": dt,
        "Target": {"Name": "Google", "Address": "www.google.at"}, "Success": i != 1, "HopCount": 3,
        "Hops": [{"Success": True, "Address": [10, 0, 0, 1], "Host": "", "N": 56, "ElapsedTime": 1000001 + i, "TTL": 1},
                 {"Success": True, "Address": [10, 0, 0, 3], "Host": "gw.example.", "N": 56, "ElapsedTime": 3000000, "TTL": 3}]})

def ours(slave, target_id, target, t, flow, route, proto="udp", unreachable=None, error=None):
    hops = []
    for ttl, (ip, host, kind, replies) in enumerate(route, 1):
        if ip is None:
            continue
        first = next((r for r in replies if r is not None), 0)
        hops.append({"Success": True, "Address": [0, 0, 0, 0] if ":" in ip else [int(x) for x in ip.split(".")],
                     "Host": host, "N": 56 if kind != "reached" else 84, "ElapsedTime": first, "TTL": ttl, "IP": ip,
                     "Replies": replies, "Kind": kind})
    return {"Creds": creds[slave], "ID": uid(), "DateTime": t, "Target": target,
            "Success": bool(route) and route[-1][2] == "reached", "HopCount": max(1, len(route)), "Hops": hops,
            "TargetID": target_id, "Protocol": proto, "Flow": flow, "Destination": "192.0.2.77",
            "Queries": 3, "Unreachable": unreachable, "Error": error, "Agent": "dist-traceroute/0.1.0",
            "DurationNs": 12345678}

G = ("76d96640-d357-47b3-ba50-5248a7604bc9", {"Name": "Google", "Address": "www.google.at"})
L = ("fc06ab7c-ad6f-4837-b2f8-96ef95c4acee", {"Name": "LKML", "Address": "lkml.org"})
V = ("5e1f7d2a-3b9c-4e8d-8a6f-1c2d3e4f5a6b", {"Name": "V6", "Address": "2001:db8::99"})
a = [("10.1.0.1", "r1.example.", "time-exceeded", [1200000, 1300500, None]), (None,) * 4,
     ("10.1.0.3", "", "time-exceeded", [3000000, 3100000, 3200000]), ("192.0.2.77", "dst.", "reached", [4000000, None, 4100000])]
b = [("10.1.0.1", "r1.example.", "time-exceeded", [1200000, 1250000, 1260000]), ("10.2.0.2", "", "time-exceeded", [None, 2500000, None]),
     ("10.2.0.3", "", "time-exceeded", [3500000, 3600000, 3700000]), ("192.0.2.77", "dst.", "reached", [4500000, 4600000, 4700000])]
u = [("10.1.0.1", "", "time-exceeded", [1000000, 1000000, 1000000]), ("10.9.0.1", "", "!H", [2000000, None, 2000000])]
v6 = [("2001:db8::1", "", "time-exceeded", [900000, 950000, 1000000]), ("2001:db8::99", "", "reached", [1900000, 1950000, 2000000])]
batch = []
for k in range(12):
    t = "2026-11-21T08:%02d:00.%06d+00:00" % (k, 1000 + k)
    route = a if k < 5 or k > 8 else b
    batch.append(ours("slave1", G[0], G[1], t, 0, route))
    batch.append(ours("slave1", G[0], G[1], t, 1, b))
    batch.append(ours("slave1", L[0], L[1], t, 0, u if 4 <= k <= 7 else a, proto="icmp",
                      unreachable="!H" if 4 <= k <= 7 else None))
    batch.append(ours("slave2", V[0], V[1], t, 0, v6))
batch.append(ours("slave2", V[0], V[1], "2026-11-21T09:00:00.000000+00:00", 0, [], error="cannot resolve nowhere.invalid"))
# A target the config does not know.
batch.append(ours("slave2", "00000000-0000-4000-8000-00000000abcd", {"Name": "Gone", "Address": "gone.example"},
                  "2026-11-21T09:01:00.000000+00:00", 0, a))
post("/api/v1/results:batch", {"Creds": creds["slave1"], "Results": [r for r in batch if r["Creds"]["Name"] == "slave1"],
                                "SpoolDepth": 3, "DroppedTotal": 1})
post("/api/v1/results:batch", {"Creds": creds["slave2"], "Results": [r for r in batch if r["Creds"]["Name"] == "slave2"]})
post("/config/", {"Name": "slave2", "Password": "123", "Agent": "dist-traceroute/0.1.0", "SpoolDepth": 0, "DroppedTotal": 0})

queries = ["/api/v1/results?limit=1000", "/api/v1/results?slave=slave1&target=Google&limit=5",
           "/api/v1/paths/history", "/api/v1/events", "/api/v1/targets",
           "/api/v1/paths/current?window=100000h".replace("100000h", "8760h")]
answers = {q: get(q) for q in queries}
master.terminate()
master.wait()
con_db = os.path.join(work, "dt-results.db")
subprocess.run(["sqlite3", con_db, "PRAGMA wal_checkpoint(TRUNCATE); VACUUM;"], check=True)
shutil.copy(con_db, os.path.join(here, "v3.db"))
json.dump(answers, open(os.path.join(here, "v3-answers.json"), "w"), indent=1, sort_keys=True)
shutil.rmtree(work)
print("wrote v3.db and v3-answers.json")
