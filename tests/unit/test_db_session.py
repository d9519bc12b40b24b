import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from pulmoscreen.db.session import make_engine


class TestMakeEngine:
    def test_a_failed_statement_names_no_parameter(self, tmp_path):
        """Parameters carry PatientIDs and accessions: an error message must not show them."""
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        with pytest.raises(SQLAlchemyError) as caught, engine.connect() as conn:
            conn.execute(text("INSERT INTO no_such_table VALUES (:pid)"), {"pid": "PAT-SECRET-7"})
        assert "PAT-SECRET-7" not in str(caught.value)
        assert "hidden" in str(caught.value)
