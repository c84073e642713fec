"""Sustained audit records per second, on SQLite and PostgreSQL, in both durability modes.

    python bench/audit.py [--seconds 5] [--concurrency 200] [--postgres URL]

Each of `concurrency` tasks appends records for `seconds`, awaiting durability as the audit stage
does for a call's start record. With the journal (`on_db_failure = "spool"`, the default) a record
is durable once journaled and the shipper process moves it into the database: the figure is the
records that reached the database divided by the time until the last of them did. With
`refuse`, each append waits for its group commit. Results go to bench/results/audit.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy

from portal.audit import AuditLog, AuditSettings
from portal.auth.crypto import MasterKey
from portal.db import create_engine, engine_url, init_db
from portal.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results" / "audit.json"


async def run(
    engine: sqlalchemy.Engine, seconds: float, concurrency: int, spool: Path, mode: str = "spool", cap: int = 60_000
) -> dict[str, Any]:
    settings = AuditSettings(checkpoint_interval_seconds=3600, on_db_failure=mode)  # type: ignore[arg-type]
    log = AuditLog(engine, settings, master=MasterKey(b"k" * 32), spool_path=spool)
    await log.start()
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []

    async def worker(index: int) -> int:
        count = 0
        while time.perf_counter() < deadline and len(latencies) < cap:
            t0 = time.perf_counter()
            await log.append(
                log.record(
                    kind="call",
                    phase="start",
                    principal="bench",
                    server="s",
                    tool=f"t{index % 10}",
                    method="tools/call",
                    arguments={"q": "x" * 64, "n": count},
                )
            )
            latencies.append(time.perf_counter() - t0)
            count += 1
        return count

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(worker(i) for i in range(concurrency))))
    appended = time.perf_counter() - started
    await log.drained(timeout=120)
    elapsed = time.perf_counter() - started
    await log.close()
    report = log.verify()
    latencies.sort()
    return {
        "records": total,
        "seconds": round(elapsed, 2),
        "records_per_second": round(total / elapsed),
        "appended_per_second": round(total / appended),
        "mode": mode,
        "append_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "append_p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 2),
        "concurrency": concurrency,
        "chain_verified": report.ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--postgres", default=os.environ.get("PORTAL_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    results: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(Settings(database_url=f"sqlite:///{folder}/bench.db"))
        init_db(engine)
        results["sqlite"] = asyncio.run(run(engine, args.seconds, args.concurrency, Path(folder) / "s1"))
        results["sqlite_refuse"] = asyncio.run(
            run(engine, args.seconds, args.concurrency, Path(folder) / "s3", mode="refuse")
        )
        engine.dispose()
        if args.postgres:
            schema = "bench_audit_" + secrets.token_hex(4)
            admin = sqlalchemy.create_engine(engine_url(args.postgres))
            with admin.begin() as connection:
                connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
            # The schema in the URL: the shipper process gets the URL alone.
            url = sqlalchemy.make_url(engine_url(args.postgres)).update_query_dict(
                {"options": f"-csearch_path={schema}"}
            )
            engine = sqlalchemy.create_engine(url.render_as_string(hide_password=False))
            try:
                init_db(engine)
                results["postgresql"] = asyncio.run(run(engine, args.seconds, args.concurrency, Path(folder) / "s2"))
            finally:
                engine.dispose()
                with admin.begin() as connection:
                    connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
                admin.dispose()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
