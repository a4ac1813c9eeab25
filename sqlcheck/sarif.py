"""SARIF 2.1.0 for one job, built from its summary and result files: a pure function.

sqlfluff 4.5 has a SARIF output, but only inside the body of its `lint` CLI
command (no function to call with results we already have), so the document is
built here from the result files, in the same shape: driver "SQLFluff", rule ids
= sqlfluff codes, one result per violation. Locations are archive member paths
(URI-encoded, relative to the ZIP's root) with 1-based lines and columns
counted in Unicode code points, as sqlfluff counts them. Files that could not be
analysed become tool execution notifications, so no file silently disappears.
"""

from __future__ import annotations

import json
from typing import Any, Iterable
from urllib.parse import quote

from sqlcheck.archive import safe_relative_path

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
#: the uriBaseId of every location: member paths are relative to the uploaded ZIP's root
ARCHIVE_ROOT = "ARCHIVE_ROOT"
RULES_DOC = "https://docs.sqlfluff.com/en/stable/reference/rules.html"


def member_uri(member: str) -> str:
    """A relative URI reference for an archive member (spaces, Chinese names percent-encoded)."""
    return quote(member, safe="/")


#: Python codec names that differ from their IANA charset name (SARIF's artifact.encoding)
_IANA = {"utf-8-sig": "UTF-8", "cp1250": "windows-1250", "cp1251": "windows-1251", "cp1252": "windows-1252",
         "cp1253": "windows-1253", "cp1254": "windows-1254", "cp1255": "windows-1255", "cp1256": "windows-1256",
         "cp1257": "windows-1257", "cp1258": "windows-1258", "shift_jis": "Shift_JIS", "big5": "Big5",
         "latin_1": "ISO-8859-1",
         "ascii": "US-ASCII", "cp932": "Windows-31J", "mac_roman": "macintosh"}


def iana_charset(codec: str) -> str:
    """The IANA name of the codec that decoded a file (the result files keep Python's name)."""
    name = codec.lower()
    if name.startswith("iso8859"):  # iso8859_5 -> ISO-8859-5
        return "ISO-8859-" + name[len("iso8859"):].lstrip("-_")
    return _IANA.get(name) or name.replace("_", "-").upper()


def _level(violation: dict[str, Any]) -> str:
    return "warning" if violation.get("warning") else "error"


def _region(v: dict[str, Any]) -> dict[str, int] | None:
    """SARIF lines and columns start at 1: a position sqlfluff gives as 0 (a templater error that
    knows only its line, or not even that) is left out, not written as an invalid 0."""
    if not v.get("start_line_no", 0) >= 1:
        return None
    region = {"startLine": v["start_line_no"]}
    if v.get("start_line_pos", 0) >= 1:
        region["startColumn"] = v["start_line_pos"]
    if v.get("end_line_no") and v["end_line_no"] >= v["start_line_no"]:
        region["endLine"] = v["end_line_no"]
        if v.get("end_line_pos", 0) >= 1 and "startColumn" in region:
            region["endColumn"] = v["end_line_pos"]
    return region


def _location(member: str, region: dict[str, int] | None = None) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": {"uri": member_uri(member), "uriBaseId": ARCHIVE_ROOT}}
    if region:
        physical["region"] = region
    return {"physicalLocation": physical}


def _is_archive_path(failed: dict[str, Any]) -> bool:
    return failed["failure_reason"] != "unsafe_member" and safe_relative_path(failed["archive_member"]) is not None


def _rule(v: dict[str, Any]) -> dict[str, Any]:
    code = v["code"]
    return {
        "id": code,
        "name": v.get("name") or code,
        "shortDescription": {"text": v.get("name") or code},
        "fullDescription": {"text": v.get("description") or code},
        "helpUri": f"{RULES_DOC}#{str(code).lower()}",
    }


def sarif_document(summary: dict[str, Any], results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The job's SARIF log: one run, one result per violation, one notification per failed file.

    ``results`` are the job's result documents (results/<task_id>.json).
    """
    rules: dict[str, dict[str, Any]] = {}
    sarif_results = []
    artifacts = []
    for doc in sorted(results, key=lambda d: d["archive_member"]):
        member = doc["archive_member"]
        artifact: dict[str, Any] = {"location": {"uri": member_uri(member), "uriBaseId": ARCHIVE_ROOT}}
        if doc.get("encoding"):
            artifact["encoding"] = iana_charset(doc["encoding"])
        artifacts.append(artifact)
        for v in doc["violations"]:
            rules.setdefault(v["code"], _rule(v))
            sarif_results.append({
                "ruleId": v["code"],
                "level": _level(v),
                "message": {"text": f"{v['code']}: {v.get('description') or ''}"},
                "locations": [_location(member, _region(v))],
            })
    rule_ids = sorted(rules)
    index = {code: i for i, code in enumerate(rule_ids)}
    for r in sarif_results:
        r["ruleIndex"] = index[r["ruleId"]]
    notifications = [
        {"level": "error", "descriptor": {"id": f["failure_reason"] or "not_analysed"},
         "message": {"text": f"{f['archive_member']}: {f['failure_reason']}: {f['error_message'] or ''}"},
         # a name refused as unsafe (`../x.sql`, `/abs.sql`, `C:\x.sql`, a NUL stored as `\x00`) is no
         # path under the archive's root
         **({"locations": [_location(f["archive_member"])]} if _is_archive_path(f) else {})}
        for f in summary.get("files", []) if f["status"] == "FAILURE"
    ]
    if summary.get("error_message"):
        notifications.append({"level": "error", "message": {"text": summary["error_message"]}})
    invocation: dict[str, Any] = {
        "executionSuccessful": summary["status"] in ("SUCCESS", "PARTIAL_SUCCESS"),
        "toolExecutionNotifications": notifications,
    }
    if summary.get("finished_at"):
        invocation["endTimeUtc"] = summary["finished_at"]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "SQLFluff",
                "version": summary.get("sqlfluff_version"),
                "informationUri": "https://sqlfluff.com/",
                "rules": [rules[c] for c in rule_ids],
            }},
            "automationDetails": {"id": f"sqlcheck/{summary['job_id']}"},
            "originalUriBaseIds": {ARCHIVE_ROOT: {"description": {"text": "root of the uploaded ZIP archive"}}},
            "columnKind": "unicodeCodePoints",
            "artifacts": artifacts,
            "invocations": [invocation],
            "results": sarif_results,
            "properties": {"jobStatus": summary["status"], "dialect": summary.get("configuration", {}).get("dialect") or summary.get("dialect")},
        }],
    }


def sarif_bytes(doc: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON: a 20,000-file job's log is written once, over NFS, by one worker child."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
