"""The database as the CLI reports it: a database that is missing, unreachable or of
another schema is one line naming it, not a traceback (`tower -v` shows the traceback)."""

from __future__ import annotations


def describe(error: BaseException, database: str | None) -> str | None:
    """One line for a database error (None: not one), naming the database (its password
    redacted) and what the driver said."""
    # sqlalchemy is imported only if the command loaded it: an error can come from it then
    import sys

    if "sqlalchemy" not in sys.modules:
        return None
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    if not isinstance(error, SQLAlchemyError):
        return None
    said = str(error.orig if isinstance(error, DBAPIError) else error).strip()
    said = said.splitlines()[0] if said else type(error).__name__
    where = database or "the database"
    hint = ""
    if isinstance(error, DBAPIError) and any(
            word in said for word in ("no such table", "no such column", "does not exist",
                                      "not a database", "UndefinedColumn", "UndefinedTable")):
        hint = " (is it a gridtower database, of this version?)"
    return f"database {where}: {said}{hint}"
