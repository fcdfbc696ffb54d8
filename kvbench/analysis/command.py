"""How every analysis command ends: the line it returns, or one line per problem and exit 1.

A writer that cannot write (a read-only folder, a full disk, a folder where the file should be)
ends in one line naming the path (kvbench.core.record's atomic writes name it), never a traceback; a
damaged record is one line per file with the remedy; a damaged archive (a bundle whose compressed
bytes or headers are broken) or any other bad input one line.
"""

from __future__ import annotations

import sys
import zipfile
import zlib
from collections.abc import Callable

from kvbench.core import record as kvrecord

# A bundle damaged inside: zipfile raises these as they come, past its own OSError and ValueError.
ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error)


def one_line(exc: BaseException) -> str:
    """An error as one line: an OSError by the path it names, anything else by its message."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return kvrecord.os_error_line(exc)
    if isinstance(exc, ARCHIVE_ERRORS):
        return f"a damaged zip archive: {' '.join(str(exc).split())}"
    return " ".join(str(exc).split())


def run(prog: str, action: Callable[[], str], *errors: type[BaseException]) -> int:
    """Do `action` and print the line it returns (exit 0); end a failure in one line per problem
    (exit 1). `errors`: more exception types this command reports the same way."""
    try:
        done = action()
    except kvrecord.RecordError as exc:  # one line per damaged file, each with the remedy
        print("\n".join(f"{prog}: refused: {line}" for line in str(exc).splitlines()), file=sys.stderr)
        return 1
    except (ValueError, KeyError, OSError, *ARCHIVE_ERRORS, *errors) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    if done:
        print(done)
    return 0
