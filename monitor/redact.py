"""Secrets masked out of any text shown to a user or written to a log.

One function, ``redact``, masks every form a secret takes in this project: the password of a URL's
``user:password@`` part (database, DHuS, STAC and webhook URLs) and the value of a ``password=``,
``token=``, ``secret=`` or ``api_key=`` parameter (a URL query or a libpq connection string). The
settings command, ``monitor db url``, database connection errors, the subscriptions list, run errors
and the logs all print through it.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# scheme://user:password@ -> scheme://user:***@ (the password runs to the last @ before the host)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<secret>[^/\s]*)@")
# password=..., token=..., secret=..., api_key=... in a query string or a libpq DSN
_PARAM = re.compile(r"(?i)(?P<head>\b(?:password|passwd|pwd|token|access_token|secret|api_key|apikey)\s*=\s*)"
                    r"(?P<secret>'[^']*'|\"[^\"]*\"|[^&\s;,'\")]+)")


def redact(text: object) -> str:
    """``text`` with every password, token and secret replaced by ``***``."""
    out = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["secret"] else m[0], str(text))
    return _PARAM.sub(lambda m: m["head"] + MASK, out)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record's message (arguments included) and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message by its masked form; never drops a record."""
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
