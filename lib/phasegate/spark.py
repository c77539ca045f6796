"""The analysis on Apache Spark: `--engine spark://HOST:PORT` (or `[engine] url` in the profile).

There is one definition of every aggregate: the DuckDB SQL in `analysis`. `SparkConnection`
offers the few connection calls `analysis` makes (execute → fetchall/df, register, unregister),
and compiles each statement for Spark with sqlglot (DuckDB dialect in, Spark dialect out), plus
the handful of rewrites sqlglot leaves to us: DuckDB functions Spark spells differently, and
`quantile_cont`, which must become Spark's exact `percentile` (never `percentile_approx`).
Why sqlglot rather than Ibis: the queries already exist as SQL and are the reference; a
transpiler keeps them the one source, where Ibis would mean rewriting every one in its API.
"""

from __future__ import annotations

import decimal
import itertools
import os
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa

from .errors import DataError

# Spark's function for each DuckDB one sqlglot passes through unchanged (both take the same arguments).
_RENAMED = {"EPOCH_US": "UNIX_MICROS", "MAKE_TIMESTAMPTZ": "TIMESTAMP_MICROS", "LIST_SORT": "SORT_ARRAY",
            "LIST_CONTAINS": "ARRAY_CONTAINS"}


# Spark's own logging: errors only, on stderr, one line each (its default prints a banner and
# WARN lines into every report's output).
_LOG4J2 = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = phasegate: spark: %p %c{1}: %m%n
"""


def _log_config() -> str:
    path = Path(tempfile.gettempdir()) / f"phasegate-spark-log4j2-{os.getuid()}.properties"
    if not path.exists() or path.read_text() != _LOG4J2:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(_LOG4J2)
        os.replace(tmp, path)
    return path.as_uri()


def compile_sql(sql: str, params=None) -> str:
    """DuckDB SQL as Spark SQL, `?` parameters bound as literals."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb")
    values = iter(params or ())

    for node in list(tree.find_all(exp.Anonymous)):
        if node.name.upper() in _RENAMED:
            node.set("this", _RENAMED[node.name.upper()])

    def rewrite(node):
        if isinstance(node, exp.Placeholder):
            return exp.convert(next(values))
        if isinstance(node, exp.Bracket) and len(node.expressions) == 1:
            # DuckDB lists count from 1 and element_at does in Spark. sqlglot has already made a
            # literal index count from 0 (and left any other index as written).
            i = node.expressions[0]
            i = exp.Literal.number(int(i.this) + 1) if isinstance(i, exp.Literal) and i.is_int else exp.cast(i, "INT")
            return exp.Anonymous(this="ELEMENT_AT", expressions=[node.this, i])
        if isinstance(node, exp.PercentileCont):
            # DuckDB's quantile_cont is the exact linear-interpolated quantile: so is Spark's percentile.
            return exp.Anonymous(this="PERCENTILE", expressions=[node.this, node.expression])
        return node

    return tree.transform(rewrite).sql(dialect="spark")


def _plain(v):
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, datetime) and v.tzinfo is None:
        return v.replace(tzinfo=timezone.utc)  # the driver runs in UTC (TZ set below)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


class _Result:
    def __init__(self, df):
        self._df = df

    def fetchall(self) -> list[tuple]:
        if self._df is None:
            return []
        return [tuple(_plain(v) for v in row) for row in self._df.collect()]

    def df(self) -> pd.DataFrame:
        pdf = self._df.toPandas()
        for col in pdf.columns:
            if pd.api.types.is_datetime64_any_dtype(pdf[col]) and pdf[col].dt.tz is None:
                pdf[col] = pdf[col].dt.tz_localize("UTC")
            elif pdf[col].dtype == object and pdf[col].map(lambda v: isinstance(v, decimal.Decimal)).any():
                pdf[col] = pdf[col].astype(float)  # Spark's decimal sums, as DuckDB's doubles
        return pdf

    def fetchnumpy(self) -> dict:
        pdf = self.df()
        return {c: pdf[c].to_numpy() for c in pdf.columns}


_GROUPS = itertools.count(1)


class SparkConnection:
    """A Spark session that answers the analysis' DuckDB SQL."""

    def __init__(self, url: str, app: str = "phasegate"):
        os.environ["TZ"] = "UTC"  # collected timestamps are naive in the driver's zone: make it UTC
        time.tzset()
        # pyspark warns that it does not yet fully support pandas 3: the engine hands it only
        # Arrow tables of plain types and reads back through Arrow, checked by the cluster test.
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise DataError("the Spark engine needs pyspark: pip install pyspark (and a Java runtime)") from None
        builder = (SparkSession.builder.master(url).appName(app)
                   .config("spark.sql.session.timeZone", "UTC")
                   .config("spark.sql.shuffle.partitions", os.environ.get("PHASEGATE_SPARK_PARTITIONS", "8"))
                   .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")  # a progress bar in a report's output
                   # Executors connect back to the driver: loopback unless told the address they can reach.
                   .config("spark.driver.host", os.environ.get("PHASEGATE_SPARK_DRIVER_HOST", "127.0.0.1"))
                   .config("spark.driver.bindAddress", os.environ.get("PHASEGATE_SPARK_DRIVER_HOST", "127.0.0.1"))
                   .config("spark.executor.memory", os.environ.get("PHASEGATE_SPARK_EXECUTOR_MEMORY", "1g"))
                   .config("spark.sql.ansi.enabled", "false")
                   .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={_log_config()}")
                   .config("spark.executor.extraJavaOptions", f"-Dlog4j2.configurationFile={_log_config()}"))
        try:
            self.spark = builder.getOrCreate()
        except Exception as exc:  # noqa: BLE001 - py4j and the JVM raise many kinds; one line names the cause
            raise DataError(f"cannot start Spark against {url}: {str(exc).splitlines()[0][:200]}") from None
        self.spark.sparkContext.setLogLevel("ERROR")
        self.url = url
        # Each connection's queries are one job group: how many Spark jobs an analysis cost.
        self.group = f"phasegate-{os.getpid()}-{next(_GROUPS)}"

    def jobs(self) -> int:
        """The Spark jobs this connection's queries have run (the status tracker's count for its group)."""
        return len(self.spark.sparkContext.statusTracker().getJobIdsForGroup(self.group))

    def execute(self, sql: str, params=None) -> _Result:
        from sqlglot import exp, parse_one

        self.spark.sparkContext.setJobGroup(self.group, "phasegate analysis")
        tree = parse_one(sql, read="duckdb")
        if isinstance(tree, exp.Create) and tree.args.get("kind") == "TABLE":
            # A temp table is a cached view here: Spark has no session-scoped tables.
            name = tree.this.name
            self.spark.sql(compile_sql(tree.expression.sql(dialect="duckdb"), params)).cache().createOrReplaceTempView(name)
            return _Result(None)
        if isinstance(tree, exp.Set):
            return _Result(None)
        df = self.spark.sql(compile_sql(sql, params))
        return _Result(None if isinstance(tree, exp.Create) else df)

    def register(self, name: str, obj) -> None:
        if isinstance(obj, pa.Table):
            obj = obj.to_pandas()
        self.spark.createDataFrame(obj).createOrReplaceTempView(name)

    def unregister(self, name: str) -> None:
        self.spark.catalog.dropTempView(name)

    def parquet_view(self, name: str, files: list[str], journal: pa.Table | None, schema: pa.Schema,
                     start: datetime, end: datetime) -> None:
        """`name`: the window's rows of the files (read by the executors, with the full schema so a
        column an older file lacks is null) and of the journal table."""
        from pyspark.sql import functions as F

        sschema = self._schema(schema)
        df = self.spark.createDataFrame([], sschema)
        if files:
            # Plain paths (Hadoop does not decode %3D in a URI); the date=... folders would add a
            # partition column: only the schema's columns are kept.
            read = self.spark.read.schema(sschema).parquet(*["file://" + str(Path(f).resolve()) for f in files])
            df = df.unionByName(read.select(*schema.names))
        if journal is not None and journal.num_rows:
            df = df.unionByName(self.spark.createDataFrame(journal.to_pandas(), sschema))
        df = df.where((F.col("ts") >= F.lit(start)) & (F.col("ts") < F.lit(end)))
        df.createOrReplaceTempView(name)

    @staticmethod
    def _schema(schema: pa.Schema):
        from pyspark.sql import types as T

        simple = {pa.string(): T.StringType(), pa.int64(): T.LongType(), pa.int32(): T.IntegerType(),
                  pa.float64(): T.DoubleType(), pa.float32(): T.FloatType(), pa.bool_(): T.BooleanType()}
        fields = []
        for f in schema:
            if pa.types.is_timestamp(f.type):
                t = T.TimestampType()
            elif pa.types.is_list(f.type):
                t = T.ArrayType(simple[f.type.value_type])
            else:
                t = simple[f.type]
            fields.append(T.StructField(f.name, t, True))
        return T.StructType(fields)

    def close(self) -> None:
        self.spark.stop()
