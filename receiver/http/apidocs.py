"""/docs: the OpenAPI document rendered as one self-contained HTML page on the server (no
scripts, no CDN: it works offline and behind any content security policy)."""

from html import escape
from typing import Any

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ccc;padding-top:1rem}h3{margin-bottom:.3rem}
code,.m{font-family:ui-monospace,monospace}.m{font-weight:bold;text-transform:uppercase}
table{border-collapse:collapse;margin:.4rem 0 1rem}td,th{border:1px solid #ddd;padding:.2rem .5rem;
text-align:left;vertical-align:top}th{background:#f4f4f4}nav a{margin-right:.6rem}
"""


def render(doc: dict[str, Any]) -> str:
    info = doc["info"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(info['title'])} API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} API</h1><p>{escape(info.get('description', ''))}</p>",
        '<p>The machine-readable document: <a href="/openapi.json">/openapi.json</a> '
        f"(OpenAPI {escape(doc['openapi'])}).</p>",
        '<nav><a href="#paths">Endpoints</a><a href="#webhooks">Webhooks</a>'
        '<a href="#schemas">Schemas</a></nav><h2 id=paths>Endpoints</h2>',
    ]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            parts.append(_operation(method, path, op))
    parts.append("<h2 id=webhooks>Webhooks (what subscribers receive)</h2>")
    for name, methods in doc.get("webhooks", {}).items():
        for method, op in methods.items():
            parts.append(_operation(method, name, op))
    parts.append("<h2 id=schemas>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(_schema(name, schema))
    parts.append("</body></html>")
    return "".join(parts)


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    out = [
        f"<h3 id={escape(op.get('operationId', path))}><span class=m>{escape(method)}</span> "
        f"<code>{escape(path)}</code></h3><p>{escape(op.get('summary', ''))}</p>"
    ]
    if op.get("description"):
        out.append(f"<p>{escape(op['description'])}</p>")
    if op.get("parameters"):
        out.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>about</th></tr>")
        for p in op["parameters"]:
            required = " (required)" if p.get("required") else ""
            out.append(
                f"<tr><td><code>{escape(p['name'])}</code>{required}</td><td>{escape(p['in'])}"
                f"</td><td>{_type(p.get('schema', {}))}</td>"
                f"<td>{escape(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        media = ", ".join(
            f"{escape(m)} {_type(c.get('schema', {}))}" for m, c in body["content"].items()
        )
        out.append(f"<p>Body: {media}</p>")
    out.append("<table><tr><th>status</th><th>answer</th><th>body</th></tr>")
    for status, answer in op.get("responses", {}).items():
        media = ", ".join(
            f"{escape(m)} {_type(c.get('schema', {}))}"
            for m, c in answer.get("content", {}).items()
        )
        out.append(
            f"<tr><td>{escape(status)}</td><td>{escape(answer.get('description', ''))}</td>"
            f"<td>{media}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _schema(name: str, schema: dict[str, Any]) -> str:
    out = [f"<h3 id=schema-{escape(name)}><code>{escape(name)}</code></h3>"]
    if schema.get("description"):
        out.append(f"<p>{escape(schema['description'])}</p>")
    if "enum" in schema:
        values = ", ".join(f"<code>{escape(str(v))}</code>" for v in schema["enum"])
        out.append(f"<p>One of {values}.</p>")
    properties = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", ()))
        out.append("<table><tr><th>field</th><th>type</th><th>about</th></tr>")
        for field, prop in properties.items():
            mark = "" if field in required else " (optional)"
            out.append(
                f"<tr><td><code>{escape(field)}</code>{mark}</td><td>{_type(prop)}</td>"
                f"<td>{escape(str(prop.get('description', '')))}</td></tr>"
            )
        out.append("</table>")
    return "".join(out)


def _type(schema: dict[str, Any]) -> str:
    """A schema in a few words, references as links to their section."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return " or ".join(_type(s) for s in schema[union])
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of {_type(schema['additionalProperties'] or {})}"
    if "const" in schema:
        return f"<code>{escape(repr(schema['const']))}</code>"
    if "enum" in schema:
        return " | ".join(f"<code>{escape(str(v))}</code>" for v in schema["enum"])
    if kind is None:
        return "any JSON"
    text = escape(str(kind))
    if "format" in schema:
        text += f" ({escape(schema['format'])})"
    return text
