"""Prints every event of a CloudWatch Logs stream (JSON list of {timestamp, message}), oldest first,
following nextForwardToken until it stops changing; [] when the group or stream does not exist,
and a failure (exit 1) for anything else. usage: events.py ENDPOINT GROUP STREAM"""
import json
import os
import sys

import boto3

endpoint, group, stream = sys.argv[1:4]
# The key a signature-checking server knows (MOTO_KEY_ID, MOTO_SECRET); any key otherwise.
logs = boto3.client("logs", endpoint_url=endpoint, region_name="us-east-1",
                    aws_access_key_id=os.environ.get("MOTO_KEY_ID", "testing"),
                    aws_secret_access_key=os.environ.get("MOTO_SECRET", "testing"))
out, token = [], None
while True:
    kw = {"logGroupName": group, "logStreamName": stream, "startFromHead": True, "limit": 10000}
    if token:
        kw["nextToken"] = token
    try:
        r = logs.get_log_events(**kw)
    except logs.exceptions.ResourceNotFoundException:
        break  # no such group or stream (yet): no events; any other failure is an error

    out.extend({"timestamp": e["timestamp"], "message": e["message"]} for e in r["events"])
    if r["nextForwardToken"] == token or not r["events"]:
        break
    token = r["nextForwardToken"]
json.dump(out, sys.stdout)
