"""A Spark job that fails the ways real ones do, for the record tests: a task fails in a Python UDF
(a PythonException inside a Java stack trace on the driver's stderr), a task fails on the JVM side
(assert_true), and at last the driver dies of an uncaught exception (a Python traceback holding
the worker's traceback). Its stdout and stderr are what the test ships.

    python3 failing_job.py
(`PYSPARK_SUBMIT_ARGS` may add `--conf spark.log.structuredLogging.enabled=true`.)
"""

from pyspark.sql import SparkSession
from pyspark.sql.functions import udf

spark = (
    SparkSession.builder.master("local[1]")
    .appName("failing-job")
    .config("spark.ui.enabled", "false")
    .config("spark.task.maxFailures", "1")
    .getOrCreate()
)


@udf("int")
def boom(x):
    raise ValueError("boom from the UDF")


try:
    spark.range(2).select(boom("id")).collect()
except Exception as e:
    print("caught", type(e).__name__, flush=True)

try:
    spark.sql("select assert_true(id < 0, 'jvm side failure') from range(2)").collect()
except Exception as e:
    print("caught", type(e).__name__, flush=True)

print("now failing for good", flush=True)
spark.range(1).select(boom("id")).collect()
