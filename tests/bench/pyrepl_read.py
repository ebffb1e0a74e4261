#!/usr/bin/env python3
"""Reads a MariaDB binlog range with PyPI mysql-replication (python-mysql-replication) and
prints {"rows": N, "events": M, "seconds": S} as one JSON line: the peer squeal's catch-up
throughput is compared with, in the same run, over the same binlog."""
import argparse, json, os, sys, time

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--file", required=True)
ap.add_argument("--end-file", required=True)
ap.add_argument("--end-pos", type=int, required=True)
a = ap.parse_args()

# Fail loudly instead of silently reconnecting (and re-reading) on a connection error.
import pymysqlreplication.binlogstream as _bs
_bs.MYSQL_EXPECTED_ERROR_CODES = []

stream = BinLogStreamReader(
    connection_settings={"host": "127.0.0.1", "port": a.port, "user": "root", "passwd": ""},
    server_id=9000 + os.getpid() % 1000,
    blocking=False,
    resume_stream=True,
    log_file=a.file,
    log_pos=4,
    # is_mariadb=True makes the reader reconnect in a loop on MariaDB 10.11 (the dump
    # connection is reset); the row events are the same without it.
    only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
)
rows = events = 0
start = time.monotonic()
for ev in stream:
    events += 1
    for row in ev.rows:
        rows += 1
    if (stream.log_file, stream.log_pos) >= (a.end_file, a.end_pos):
        break
secs = time.monotonic() - start
stream.close()
print(json.dumps({"rows": rows, "events": events, "seconds": round(secs, 3)}))
