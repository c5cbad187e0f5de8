"""Infobip's XML report bodies, read into the same plain values its JSON bodies give."""

from typing import Any, NoReturn
from xml.etree import ElementTree
from xml.parsers import expat

from receiver.jsonio import MAX_DEPTH
from receiver.reports import InvalidReport


def loads(body: bytes) -> dict[str, Any]:
    """Parse XML into dicts: an element with children becomes a dict, a repeated name a list."""
    _refuse_dtd(body)
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - DTDs refused above
    except (ElementTree.ParseError, ValueError) as exc:
        raise InvalidReport(f"body is not well-formed XML: {exc}") from exc
    return {_local(root.tag): _value(root)}


class _DtdFoundError(Exception):
    pass


def _stop(*_: object) -> NoReturn:
    raise _DtdFoundError


def _refuse_dtd(body: bytes) -> None:
    """Infobip sends plain documents; a DTD could only be an entity-expansion attack. Asked of
    the XML parser itself, which stops at the DTD's first byte and before any entity is
    expanded, whatever the document's encoding (a byte search for `<!DOCTYPE` missed UTF-16,
    and a 3.6 MB body expanded to 300 M characters)."""
    scanner = expat.ParserCreate()
    scanner.StartDoctypeDeclHandler = _stop
    scanner.EntityDeclHandler = _stop
    try:
        scanner.Parse(body, True)
    except _DtdFoundError:
        raise InvalidReport("XML with a DTD is not accepted") from None
    except expat.ExpatError as exc:
        raise InvalidReport(f"body is not well-formed XML: {exc}") from exc
    except ValueError as exc:  # a declared encoding expat does not know ("utf-16-le")
        raise InvalidReport(f"XML encoding not supported: {exc}") from exc


def items(value: Any) -> list[Any]:
    """A JSON-style list from what XML gives for one: `<results><result/>…</results>`."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (inner,) = value.values()
        return inner if isinstance(inner, list) else [inner]
    return [] if value is None else [value]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _value(element: ElementTree.Element, depth: int = 1) -> Any:
    children = list(element)
    if not children:
        return (element.text or "").strip() or None
    if depth >= MAX_DEPTH:
        raise InvalidReport(f"XML nested deeper than {MAX_DEPTH} levels")
    grouped: dict[str, list[Any]] = {}
    for child in children:
        grouped.setdefault(_local(child.tag), []).append(_value(child, depth + 1))
    return {name: values[0] if len(values) == 1 else values for name, values in grouped.items()}
