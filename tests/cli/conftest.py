import pytest

from report_passes import registered


@pytest.fixture
def report_passes_registered():
    """The report's test passes (tests/report_passes.py) registered for the test's duration; a
    module asks for it with ``pytestmark = pytest.mark.usefixtures("report_passes_registered")``."""
    with registered():
        yield
