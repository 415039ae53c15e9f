"""Answer checking shared by the driver scripts in this folder (imported as a sibling module:
the scripts run as `python tests/drivers/NAME.py`, which puts this folder on sys.path)."""


class Mismatch(Exception):
    """A query answered something other than what PostgreSQL must answer."""


def one_line(exc):
    """Exception type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def check(what, got, want):
    """Raises Mismatch unless `got == want`."""
    if got != want:
        raise Mismatch(f"{what}: got {got!r}, want {want!r}")
