"""The SQL views put each file on the local day it arrived, daylight saving included, on both
databases (SQLite looks the offset up in ``site_utc_offsets``; PostgreSQL uses the zone)."""

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import text

from pulmoscreen.db import Image, session_factory
from pulmoscreen.db.reports import set_site_timezone

pytestmark = pytest.mark.integration

# (arrived, UTC) -> local day in Europe/Berlin: UTC+1 in winter, UTC+2 in summer
ARRIVALS = [
    (datetime(2026, 1, 15, 23, 30, tzinfo=UTC), date(2026, 1, 16)),  # 00:30 CET
    (datetime(2026, 1, 15, 22, 30, tzinfo=UTC), date(2026, 1, 15)),  # 23:30 CET
    (datetime(2026, 7, 1, 22, 30, tzinfo=UTC), date(2026, 7, 2)),  # 00:30 CEST
    (datetime(2026, 7, 1, 21, 30, tzinfo=UTC), date(2026, 7, 1)),  # 23:30 CEST
    # the spring change (01:00 UTC on 29 March 2026) and the autumn one (25 October)
    (datetime(2026, 3, 28, 23, 30, tzinfo=UTC), date(2026, 3, 29)),  # 00:30 CET
    (datetime(2026, 10, 24, 22, 30, tzinfo=UTC), date(2026, 10, 25)),  # 00:30 CEST
    (datetime(2026, 10, 25, 22, 30, tzinfo=UTC), date(2026, 10, 25)),  # 23:30 CET
]


@pytest.mark.parametrize("database", ["sqlite_url", "pg_url"])
@pytest.mark.parametrize(
    "set_on", [datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 7, 10, tzinfo=UTC)]
)
def test_received_date_follows_daylight_saving(request, database, set_on):
    sessions = session_factory(request.getfixturevalue(database))
    with sessions.begin() as session:
        set_site_timezone(session, "Europe/Berlin", now=set_on)
        for n, (arrived, _) in enumerate(ARRIVALS):
            session.add(
                Image(
                    source_path=f"f{n}.dcm", status="queued", created_at=arrived, updated_at=arrived
                )
            )
    with sessions() as session:
        rows = session.execute(
            text("SELECT source_path, received_date FROM screening_results ORDER BY image_id")
        ).all()
    got = [date.fromisoformat(str(day)) for _, day in rows]
    assert got == [day for _, day in ARRIVALS]


def test_changing_the_zone_rewrites_the_offsets(sqlite_url):
    sessions = session_factory(sqlite_url)
    arrived = datetime(2026, 7, 1, 22, 30, tzinfo=UTC)
    with sessions.begin() as session:
        session.add(Image(source_path="f.dcm", status="queued", created_at=arrived))
        set_site_timezone(session, "Europe/Berlin")
    with sessions.begin() as session:
        set_site_timezone(session, "America/New_York")  # UTC-4 in July
    with sessions() as session:
        day = session.scalar(text("SELECT received_date FROM screening_results"))
    assert date.fromisoformat(str(day)) == date(2026, 7, 1)
