"""EC2's XML answers: ``<{Action}Response xmlns=...>`` with a request id, lists as
``<xxxSet><item>``, errors as ``<Response><Errors><Error>``; STS's in its own namespace."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


def _fill(parent: ET.Element, value: Any) -> None:
    """dict: child elements; list: ``<item>`` each; bool: true/false; None: left out."""
    if isinstance(value, dict):
        for key, child in value.items():
            if child is None:
                continue
            el = ET.SubElement(parent, key)
            _fill(el, child)
    elif isinstance(value, list):
        for child in value:
            _fill(ET.SubElement(parent, "item"), child)
    elif isinstance(value, bool):
        parent.text = "true" if value else "false"
    else:
        parent.text = str(value)


def answer(action: str, request_id: str, body: dict[str, Any]) -> bytes:
    root = ET.Element(f"{action}Response", xmlns=EC2_NS)
    ET.SubElement(root, "requestId").text = request_id
    _fill(root, body)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)


def sts_answer(action: str, request_id: str, body: dict[str, Any]) -> bytes:
    root = ET.Element(f"{action}Response", xmlns=STS_NS)
    _fill(ET.SubElement(root, f"{action}Result"), body)
    _fill(ET.SubElement(root, "ResponseMetadata"), {"RequestId": request_id})
    return ET.tostring(root)


def error(code: str, message: str, request_id: str, sts: bool = False) -> bytes:
    if sts:
        root = ET.Element("ErrorResponse", xmlns=STS_NS)
        _fill(
            root,
            {
                "Error": {"Type": "Sender", "Code": code, "Message": message},
                "RequestId": request_id,
            },
        )
        return ET.tostring(root)
    root = ET.Element("Response")
    _fill(root, {"Errors": {"Error": {"Code": code, "Message": message}}, "RequestID": request_id})
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)
