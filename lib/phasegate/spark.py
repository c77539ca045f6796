"""The analysis on Apache Spark: `--engine spark://HOST:PORT` (or `[engine] url` in the profile).

There is one definition of every aggregate: the DuckDB SQL in `analysis`. `SparkConnection`
offers the few connection calls `analysis` makes (execute → fetchall/df, register, unregister,
and `batch`: a round of `phasegate.batch` queries answered in one Spark job), and compiles each statement for Spark with sqlglot (DuckDB dialect in, Spark dialect out), plus
the handful of rewrites sqlglot leaves to us: DuckDB functions Spark spells differently, and
`quantile_cont`, which must become Spark's exact `percentile` (never `percentile_approx`).
Why sqlglot rather than Ibis: the queries already exist as SQL and are the reference; a
transpiler keeps them the one source, where Ibis would mean rewriting every one in its API.
"""

from __future__ import annotations

import decimal
import itertools
import json
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


def _unordered(sql: str) -> tuple[str, list, int]:
    """The query without its top-level ORDER BY (a global sort costs Spark a sampling job of its
    own), each order key as an output column (the ordinal of one already selected, else appended),
    and how many columns were appended: the rows are put in order after the collect."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb")
    order = tree.args.get("order")
    if order is None or not isinstance(tree, exp.Select):
        return sql, [], 0
    tree.set("order", None)
    outs = list(tree.expressions)
    keys, extra = [], []
    for o in order.expressions:
        e = o.this
        at = None
        if isinstance(e, exp.Literal) and e.is_int:
            at = int(e.this) - 1
        else:
            for j, out in enumerate(outs):
                if out == e or out.unalias() == e or (isinstance(e, exp.Column) and not e.table
                                                       and out.alias_or_name == e.name and not isinstance(out, exp.Star)):
                    at = j
                    break
        if at is None:
            at = ("extra", len(extra))
            extra.append(e.copy())
        keys.append((at, bool(o.args.get("desc")), bool(o.args.get("nulls_first"))))
    for j, e in enumerate(extra):
        tree.append("expressions", exp.alias_(e, f"_order_{j}"))
    return tree.sql(dialect="duckdb"), keys, len(extra)


def _in_order(rows: list, keys: list, n_extra: int) -> list:
    """DuckDB's order (NULLS LAST unless NULLS FIRST is asked), by a stable sort per key, last key first."""
    if not keys:
        return rows
    width = len(rows[0]) - n_extra if rows else 0
    for at, desc, nulls_first in reversed(keys):
        i = width + at[1] if isinstance(at, tuple) else at
        null_rank = 0 if nulls_first else 1
        if desc:  # the whole key is reversed, the nulls' place with it
            null_rank = 1 - null_rank
        rows.sort(key=lambda r, i=i, n=null_rank: (n, 0) if r[i] is None else (1 - n, r[i]), reverse=desc)
    return [r[:width] for r in rows] if n_extra else rows


def _converter(t):
    """A function turning a value of Spark type `t`, as `to_json` wrote it, into DuckDB's Python value."""
    from pyspark.sql import types as T

    if isinstance(t, (T.TimestampType, T.TimestampNTZType)):
        return lambda v: None if v is None else datetime.fromisoformat(v.replace("Z", "+00:00")).astimezone(timezone.utc)
    if isinstance(t, (T.DoubleType, T.FloatType, T.DecimalType)):
        return lambda v: None if v is None else float(v)  # "NaN" and "Infinity" come quoted
    if isinstance(t, T.ArrayType):
        each = _converter(t.elementType)
        return lambda v: None if v is None else [each(x) for x in v]
    return lambda v: v


_JSON = {"timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX", "ignoreNullFields": "true"}


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


def _frame(rows: list, names: list, types: list) -> pd.DataFrame:
    """A batch answer as DuckDB's `.df()` gives it: timestamps in UTC, numbers as numbers."""
    from pyspark.sql import types as T

    pdf = pd.DataFrame.from_records(rows, columns=names)
    for name, t in zip(names, types):
        if isinstance(t, (T.TimestampType, T.TimestampNTZType)):
            pdf[name] = pd.to_datetime(pdf[name], utc=True)
        elif isinstance(t, (T.DoubleType, T.FloatType, T.DecimalType)):
            pdf[name] = pdf[name].astype(float)
    return pdf


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
                   # A round of queries is one job (`batch`): adaptive execution would run each of its
                   # shuffle stages as a job of its own, a broadcast join its small side, and a
                   # listing of more than 32 files a job of its own too.
                   .config("spark.sql.adaptive.enabled", "false")
                   .config("spark.sql.autoBroadcastJoinThreshold", "-1")
                   .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "100000")
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
        if isinstance(tree, exp.Drop):
            self.spark.catalog.dropTempView(tree.find(exp.Table).name)  # uncached with it
            return _Result(None)
        df = self.spark.sql(compile_sql(sql, params))
        return _Result(None if isinstance(tree, exp.Create) else df)

    def batch(self, queries: list) -> list:
        """One round of `phasegate.batch` queries in one Spark job: each query's rows as JSON text
        beside its number, all of them one union, collected once; put in order and typed here."""
        from functools import reduce

        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        self.spark.sparkContext.setJobGroup(self.group, "phasegate analysis")
        frames, shapes = [], []
        for i, q in enumerate(queries):
            sql, keys, n_extra = _unordered(q.sql)
            df = self.spark.sql(compile_sql(sql, q.params))
            names = list(df.columns)
            df = df.toDF(*[f"c{j}" for j in range(len(names))])
            # float32 widened in the engine: its exact value, not its shortest decimal text
            cols = [F.col(f.name).cast("double") if isinstance(f.dataType, T.FloatType) else F.col(f.name)
                    for f in df.schema.fields]
            shapes.append((names, [_converter(f.dataType) for f in df.schema.fields], keys, n_extra, q.as_,
                           [f.dataType for f in df.schema.fields]))
            frames.append(df.select(F.lit(i).alias("q"), F.to_json(F.struct(*cols), _JSON).alias("j")))
        got: list[list] = [[] for _ in queries]
        for row in reduce(lambda a, b: a.unionAll(b), frames).collect():
            got[row.q].append(row.j)
        out = []
        for texts, (names, convert, keys, n_extra, as_, types) in zip(got, shapes):
            rows = []
            for text in texts:
                d = json.loads(text)
                rows.append(tuple(f(d.get(f"c{j}")) for j, f in enumerate(convert)))
            rows = _in_order(rows, keys, n_extra)
            out.append(_frame(rows, names[:len(names) - n_extra], types) if as_ == "df" else rows)
        return out

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
