"""No remote party writes tracebacks into the exporter's log.

aiohttp's server logs every malformed request (a 64 KB header, a 16 KB request line, a bad chunk)
at error level with a full traceback, although its answer (400) is right and the fault is the
client's. Such records are turned into one debug line here: visible with --log.level=debug, and never
a way for anyone who can reach the port to fill the disk or the log pipeline. A handler of ours that
fails keeps its traceback: that is our bug, and it must be seen.
"""

from __future__ import annotations

import logging

SERVER_LOGGER = "aiohttp.server"
# aiohttp's errors for a request it cannot parse (BadHttpMessage, LineTooLong, TransferEncodingError...)
# all derive from this class; named, not imported, as only the HTTP edges import aiohttp.
PROTOCOL_ERROR = ("aiohttp.http_exceptions", "HttpProcessingError")


class ClientFaultsToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        fault = record.exc_info[1] if record.exc_info else None
        if fault is None or not _clients_fault(fault):
            return True
        record.msg, record.args = "%s: %s", (record.getMessage(), _one_line(fault))
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _clients_fault(fault: BaseException) -> bool:
    return isinstance(fault, ConnectionError) or any(
        (cls.__module__, cls.__name__) == PROTOCOL_ERROR for cls in type(fault).__mro__)


def _one_line(fault: BaseException) -> str:
    return f"{type(fault).__name__}: {' '.join(str(fault).split())}"[:300]


def quiet_client_faults() -> None:
    """Install the filter once (idempotent: serve() may run more than once in one process, as in tests)."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, ClientFaultsToDebug) for f in logger.filters):
        logger.addFilter(ClientFaultsToDebug())
