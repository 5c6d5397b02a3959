"""Engine and session handling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import URL, Engine, create_engine, text
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session

from monitor.db.embedded import Cluster
from monitor.errors import BadInput, DatabaseError
from monitor.redact import redact
from monitor.settings import Settings

URL_FORM = "postgresql://USER@HOST:PORT/DATABASE"


def database_url(settings: Settings) -> str:
    """DATABASE_URL when set, else the private cluster's URL (started on demand)."""
    if settings.database_url:
        url = settings.database_url
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        if not url.startswith("postgresql"):  # the value is not printed: it may hold a password
            raise BadInput(f"is not a PostgreSQL URL ({URL_FORM})", field="DATABASE_URL")
        return url
    return Cluster(settings).ensure()


def libpq_target(url: URL) -> tuple[str, str | None]:
    """``url`` as a libpq connection URI for psql and other libpq clients, without its password (in
    either form, ``user:pw@`` or ``?password=``), and that password apart (for ``PGPASSWORD``)."""
    password = url.password or url.query.get("password")
    plain = URL.create("postgresql", username=url.username, host=url.host, port=url.port, database=url.database,
                       query={k: v for k, v in url.query.items() if k != "password"})
    return plain.render_as_string(hide_password=False), str(password) if password else None


def make_engine(settings: Settings | None = None, url: str | None = None) -> Engine:
    """An engine on ``url`` (default: ``database_url(settings)``), checked by connecting once."""
    if url is None:
        url = database_url(settings or Settings())
    pool = settings.db_pool_size if settings else 5
    try:
        engine = create_engine(url, pool_pre_ping=True, pool_size=pool, max_overflow=pool * 2)
    except (ArgumentError, ValueError):  # the value is not printed: it may hold a password
        raise BadInput(f"is not a database URL ({URL_FORM})", field="DATABASE_URL") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as e:
        raise DatabaseError(redact(f"cannot connect to the database {engine.url.render_as_string(hide_password=True)}: "
                                   f"{e.orig}".strip())) from e
    return engine


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One session, one transaction: committed on success, rolled back on any error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
