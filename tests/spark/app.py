"""A small real Spark application for logship's event-log tests.

usage: app.py EVENT_LOG_DIR LAYOUT CODEC GATE_DIR
  LAYOUT  single | rolling (spark.eventLog.rolling.maxFileSize=2m)
  CODEC   none | zstd | lz4 ...
  GATE_DIR  the app writes GATE_DIR/app_id at start, GATE_DIR/paused after its first jobs, then
            waits for GATE_DIR/go; with GATE_DIR/hang present it then starts a job that never
            ends (to be killed), else it runs more jobs and stops cleanly.
Several jobs, shuffles and SQL executions: a few MiB of events, so a rolling log rolls.
"""
import os
import sys
import time

from pyspark.sql import SparkSession

ev_dir, layout, codec, gate = sys.argv[1:5]
builder = (
    SparkSession.builder.master("local[2]")
    .appName(f"logship-{layout}-{codec}")
    .config("spark.eventLog.enabled", "true")
    .config("spark.eventLog.dir", "file://" + os.path.abspath(ev_dir))
    .config("spark.eventLog.rolling.enabled", "true" if layout == "rolling" else "false")
    .config("spark.eventLog.rolling.maxFileSize", "2m")
    .config("spark.eventLog.compress", "false" if codec == "none" else "true")
    .config("spark.eventLog.compression.codec", "zstd" if codec == "none" else codec)
    .config("spark.ui.enabled", "false")
    .config("spark.sql.shuffle.partitions", "40")
    .config("spark.sql.adaptive.enabled", "false")
    .config("spark.driver.memory", "600m")
)
spark = builder.getOrCreate()
sc = spark.sparkContext
sc.setLogLevel("WARN")


def gate_file(name):
    return os.path.join(gate, name)


with open(gate_file("app_id.tmp"), "w") as f:
    f.write(sc.applicationId)
os.rename(gate_file("app_id.tmp"), gate_file("app_id"))


def jobs(n, seed):
    for i in range(n):
        df = spark.range(0, 100000 + i, numPartitions=60).selectExpr(f"(id * {seed + i}) % 89 as k", "id as v")
        df.groupBy("k").agg({"v": "sum"}).collect()
    sc.parallelize(range(4000), 30).map(lambda x: (x % 7, 1)).reduceByKey(lambda a, b: a + b).collect()


jobs(4, 3)
open(gate_file("paused"), "w").close()
while not os.path.exists(gate_file("go")):
    time.sleep(0.2)
if os.path.exists(gate_file("hang")):
    jobs(1, 11)
    open(gate_file("hanging"), "w").close()
    sc.parallelize(range(4), 4).map(lambda x: time.sleep(3600)).collect()
jobs(4, 17)
spark.stop()
