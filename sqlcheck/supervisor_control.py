"""A small XML-RPC client for our supervisord, over its unix socket.

The same API `supervisorctl` uses. Every failure to reach or command the
daemon becomes a `ControlError` with one plain sentence; supervisord's own
fault codes stay available on `SupervisorFault.code` for callers that expect
some of them (ALREADY_STARTED, NOT_RUNNING, ...).
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlcheck.errors import ControlError

# supervisord fault codes we react to (supervisor.xmlrpc.Faults)
BAD_NAME = 10
ALREADY_STARTED = 60
NOT_RUNNING = 70
ALREADY_ADDED = 90
STILL_RUNNING = 91
SHUTDOWN_STATE = 6

RUNNING_STATES = {"RUNNING"}
STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})


class SupervisorFault(ControlError):
    """Raised when supervisord answered with an XML-RPC fault."""

    def __init__(self, method: str, code: int, text: str):
        super().__init__(f"supervisord refused {method}: {text}")
        self.code = code


@dataclass(frozen=True)
class ProcessInfo:
    """One process as supervisord sees it."""

    group: str
    name: str
    state: str  # STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN
    pid: int
    description: str
    exitstatus: int
    spawnerr: str
    logfile: str

    @property
    def full_name(self) -> str:
        return f"{self.group}:{self.name}"

    @classmethod
    def from_rpc(cls, d: dict[str, Any]) -> "ProcessInfo":
        return cls(d["group"], d["name"], d["statename"], int(d["pid"]), d["description"],
                   int(d["exitstatus"]), d.get("spawnerr", ""), d.get("stdout_logfile", ""))


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout_s: float):
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout_s: float):
        super().__init__()
        self._path, self._timeout_s = path, timeout_s

    def make_connection(self, host):  # noqa: ANN001 - xmlrpc signature
        return _UnixHTTPConnection(self._path, self._timeout_s)


class Supervisor:
    """supervisord behind `socket_path`. Each call opens a fresh connection (cheap, local)."""

    def __init__(self, socket_path: Path, timeout_s: float = 30.0):
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s

    def _call(self, method: str, *args: Any) -> Any:
        proxy = xmlrpc.client.ServerProxy("http://localhost/RPC2",
                                          transport=_UnixTransport(str(self.socket_path), self.timeout_s))
        namespace, name = method.split(".")
        try:
            return getattr(getattr(proxy, namespace), name)(*args)
        except xmlrpc.client.Fault as fault:
            raise SupervisorFault(method, fault.faultCode, fault.faultString) from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"supervisord is not running (nothing listens on {self.socket_path})") from None
        except PermissionError:
            raise ControlError(
                f"no permission to use {self.socket_path}: run as the user that started sqlcheck") from None
        except socket.timeout:
            raise ControlError(f"supervisord did not answer {method} within {self.timeout_s:.0f} s") from None
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
            raise ControlError(f"cannot talk to supervisord at {self.socket_path}: {exc}") from None

    # ---- daemon ----
    def state(self) -> str:
        return self._call("supervisor.getState")["statename"]

    def is_up(self) -> bool:
        try:
            return self.state() == "RUNNING"
        except ControlError:
            return False

    def pid(self) -> int:
        return int(self._call("supervisor.getPID"))

    def shutdown(self) -> None:
        self._call("supervisor.shutdown")

    def reload_config(self) -> tuple[list[str], list[str], list[str]]:
        """Re-read the config file; returns (added, changed, removed) group names. Applies nothing."""
        added, changed, removed = self._call("supervisor.reloadConfig")[0]
        return list(added), list(changed), list(removed)

    def add_group(self, name: str) -> None:
        self._call("supervisor.addProcessGroup", name)

    def remove_group(self, name: str) -> None:
        self._call("supervisor.removeProcessGroup", name)

    # ---- processes ----
    def processes(self) -> list[ProcessInfo]:
        return [ProcessInfo.from_rpc(d) for d in self._call("supervisor.getAllProcessInfo")]

    def process(self, full_name: str) -> ProcessInfo:
        return ProcessInfo.from_rpc(self._call("supervisor.getProcessInfo", full_name))

    def start_group(self, group: str, wait: bool = True) -> None:
        self._call("supervisor.startProcessGroup", group, wait)

    def stop_group(self, group: str, wait: bool = True) -> None:
        self._call("supervisor.stopProcessGroup", group, wait)

    def start_process(self, full_name: str, wait: bool = True) -> None:
        self._call("supervisor.startProcess", full_name, wait)

    def stop_process(self, full_name: str, wait: bool = True) -> None:
        self._call("supervisor.stopProcess", full_name, wait)

    def signal_group(self, group: str, signal_name: str) -> None:
        self._call("supervisor.signalProcessGroup", group, signal_name)

    def tail_log(self, full_name: str, nbytes: int = 4000) -> str:
        """The last `nbytes` of a program's log (stdout and stderr are merged)."""
        text, _offset, _overflow = self._call("supervisor.tailProcessStdoutLog", full_name, 0, nbytes)
        return text
