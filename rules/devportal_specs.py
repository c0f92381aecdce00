"""What the devportal renders from machine-readable specs: the service's OpenAPI document (every
path, operation, parameter, response code and schema), the Exportfile JSON Schema (every rule and
key), and the curl examples of sdks/shell/ (docs/devportal.md).

Pure functions of parsed JSON, returning plain dicts the jinja2 templates (rules/devportal_assets/
templates/) lay out; `SpecError` (message, field) for a document that is not what it claims, which
the action reports as `devportal-spec-invalid` naming the input file.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable

from markupsafe import Markup, escape

__all__ = ["SpecError", "HTTP_METHODS", "openapi_model", "exportfile_model", "type_html", "shell_examples",
           "sdk_paths", "SDK_OPERATIONS"]

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_SLUG = re.compile(r"[^A-Za-z0-9_-]+")
# The operations the Python SDK calls, by (method, path); sdk_paths() fails the build when the
# OpenAPI document lacks one, so the SDK never ships calls the service does not answer.
SDK_OPERATIONS = {
    "profiles": ("get", "/api/export/profiles"),
    "profile": ("get", "/api/export/profiles/{label}"),
    "runs": ("post", "/api/export/runs"),
    "run": ("get", "/api/export/runs/{run_id}"),
    "cancel": ("post", "/api/export/runs/{run_id}/cancel"),
    "events": ("get", "/api/export/runs/{run_id}/events"),
    "file": ("get", "/api/export/runs/{run_id}/files/{path}"),
}


class SpecError(ValueError):
    """An input spec that cannot be rendered; `field` is the JSON pointer-ish place at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _slug(text: str) -> str:
    return _SLUG.sub("-", text).strip("-") or "x"


# -- schema types as HTML --------------------------------------------------------------------------

def type_html(schema: Any, link: Callable[[str], str | None]) -> Markup:
    """A short, escaped HTML rendering of a JSON Schema's type: `string`, `integer ≥ 1`,
    `array of <a>Run</a>`, `string | null`, `"json_raw"`... `link(ref)` maps a `$ref` to an href
    (None: no link)."""
    if not isinstance(schema, dict):
        return Markup("any")
    if "$ref" in schema:
        ref = str(schema["$ref"])
        name = ref.rsplit("/", 1)[-1]
        href = link(ref)
        return Markup('<a href="{}">{}</a>').format(href, name) if href else Markup("{}").format(name)
    if "const" in schema:
        return Markup("<code>{}</code>").format(json.dumps(schema["const"]))
    if "enum" in schema:
        return Markup(" | ").join(Markup("<code>{}</code>").format(json.dumps(v)) for v in schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema and isinstance(schema[key], list):
            sep = Markup(" &amp; ") if key == "allOf" else Markup(" | ")
            return sep.join(type_html(s, link) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return Markup(" | ").join(escape(k) for k in kind)
    if kind == "array":
        return Markup("array of ") + type_html(schema.get("items"), link)
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return Markup("map of ") + type_html(schema["additionalProperties"], link)
    text = escape(kind or "any")
    bounds = [f"{sym} {schema[k]}" for k, sym in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"),
                                                    ("maxLength", "length ≤"), ("minItems", "items ≥"))
              if k in schema]
    if schema.get("pattern"):
        bounds.append(f"pattern {schema['pattern']}")
    if schema.get("format"):
        bounds.append(f"format {schema['format']}")
    return text + (Markup(" <small>({})</small>").format(", ".join(bounds)) if bounds else Markup(""))


def _default(schema: dict) -> str | None:
    return json.dumps(schema["default"], ensure_ascii=False) if isinstance(schema, dict) and "default" in schema else None


# -- OpenAPI ---------------------------------------------------------------------------------------

def _resolve(doc: dict, item: Any) -> Any:
    """A `{"$ref": "#/components/parameters/X"}` parameter or response, resolved once."""
    if isinstance(item, dict) and isinstance(item.get("$ref"), str) and item["$ref"].startswith("#/"):
        node: Any = doc
        for part in item["$ref"][2:].split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise SpecError(f"$ref {item['$ref']} does not resolve", field=item["$ref"])
        return node
    return item


def _content_schemas(content: Any) -> list[dict]:
    if not isinstance(content, dict):
        return []
    return [{"mediaType": mt, "schema": (body or {}).get("schema")} for mt, body in sorted(content.items())]


def openapi_model(doc: Any) -> dict:
    """{info, operations[], schemas[], statusCodes[], paths[]} of an OpenAPI 3.x document.

    operations[] are sorted by path then method, each with a unique `slug` (its page name, from
    operationId), `parameters` (path-level merged under operation-level, sorted by location and
    name), `requestBody`, `responses` (sorted by status code) and `security`. SpecError when the
    document is not OpenAPI 3 or an operation is malformed."""
    if not isinstance(doc, dict) or not str(doc.get("openapi", "")).startswith("3."):
        raise SpecError("not an OpenAPI 3 document (no `openapi: 3.x`)", field="openapi")
    paths = doc.get("paths")
    if not isinstance(paths, dict) or not paths:
        raise SpecError("the document has no paths", field="paths")
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    operations, slugs, codes = [], set(), {}
    for path in sorted(paths):
        item = paths[path]
        if not isinstance(item, dict):
            raise SpecError(f"paths[{path!r}] is not an object", field=f"paths.{path}")
        shared = [_resolve(doc, p) for p in item.get("parameters") or []]
        for method in HTTP_METHODS:
            op = item.get(method)
            if op is None:
                continue
            where = f"paths.{path}.{method}"
            if not isinstance(op, dict):
                raise SpecError(f"{method.upper()} {path} is not an object", field=where)
            params: dict[tuple[str, str], dict] = {}
            for p in shared + [_resolve(doc, p) for p in op.get("parameters") or []]:
                if not isinstance(p, dict) or not isinstance(p.get("name"), str) or p.get("in") not in (
                        "path", "query", "header", "cookie"):
                    raise SpecError(f"{method.upper()} {path}: a parameter without name or `in`", field=where)
                params[(p["in"], p["name"])] = p
            slug = _slug(op.get("operationId") or f"{method}-{path}")
            while slug in slugs:
                slug += "-x"
            slugs.add(slug)
            responses = []
            for code in sorted((op.get("responses") or {}), key=str):
                resp = _resolve(doc, op["responses"][code]) or {}
                responses.append({"code": str(code), "description": resp.get("description") or "",
                                  "content": _content_schemas(resp.get("content"))})
                codes.setdefault(str(code), []).append(slug)
            body = _resolve(doc, op.get("requestBody")) if op.get("requestBody") else None
            operations.append({
                "slug": slug, "method": method.upper(), "path": path,
                "operationId": op.get("operationId") or slug, "summary": op.get("summary") or "",
                "description": op.get("description") or "", "tags": list(op.get("tags") or []),
                "deprecated": bool(op.get("deprecated")),
                "parameters": [params[k] for k in sorted(params, key=lambda k: (("path", "query", "header", "cookie").index(k[0]), k[1]))],
                "requestBody": None if body is None else {"required": bool(body.get("required")),
                                                          "description": body.get("description") or "",
                                                          "content": _content_schemas(body.get("content"))},
                "responses": responses,
                "security": op.get("security", doc.get("security")) or [],
            })
    components = doc.get("components") if isinstance(doc.get("components"), dict) else {}
    raw_schemas = components.get("schemas") or {}
    schemas = []
    for name in sorted(raw_schemas):
        s = raw_schemas[name] if isinstance(raw_schemas[name], dict) else {}
        required = set(s.get("required") or [])
        props = s.get("properties") if isinstance(s.get("properties"), dict) else {}
        schemas.append({"name": name, "anchor": f"schema-{_slug(name)}", "schema": s,
                        "description": s.get("description") or "", "enum": s.get("enum"),
                        "properties": [{"name": k, "schema": v, "required": k in required,
                                        "description": (v or {}).get("description") or "", "default": _default(v)}
                                       for k, v in sorted(props.items())]})
    return {"info": {"title": info.get("title") or "API", "version": str(info.get("version") or ""),
                     "summary": info.get("summary") or "", "description": info.get("description") or ""},
            "openapi": doc.get("openapi"), "operations": operations, "schemas": schemas,
            "paths": sorted(paths), "securitySchemes": components.get("securitySchemes") or {},
            "statusCodes": [{"code": c, "operations": sorted(set(v))} for c, v in sorted(codes.items())]}


def sdk_paths(doc: dict) -> dict[str, str]:
    """name → path of every operation the Python SDK calls; SpecError naming the first missing one."""
    paths = doc.get("paths") or {}
    for name, (method, path) in SDK_OPERATIONS.items():
        if not isinstance(paths.get(path), dict) or method not in paths[path]:
            raise SpecError(f"the SDK calls {method.upper()} {path} ({name}), which the OpenAPI document lacks",
                            field=f"paths.{path}.{method}")
    return {name: path for name, (_method, path) in SDK_OPERATIONS.items()}


# -- Exportfile schema -----------------------------------------------------------------------------

def exportfile_model(schema: Any) -> dict:
    """{rules[], types[], package} of exportfile.schema.json: one rule per `$defs` model whose
    `rule` property is a const (its keys sorted, `rule` first), the other models as types (linked
    from keys that `$ref` them), the [package] table. SpecError when it is not that schema."""
    if not isinstance(schema, dict) or not isinstance(schema.get("$defs"), dict):
        raise SpecError("not the Exportfile JSON Schema (no $defs)", field="$defs")
    defs = schema["$defs"]
    rules, types = [], []
    for name in sorted(defs):
        model = defs[name] if isinstance(defs[name], dict) else {}
        props = model.get("properties") if isinstance(model.get("properties"), dict) else {}
        required = set(model.get("required") or [])
        rule = (props.get("rule") or {}).get("const") if isinstance(props.get("rule"), dict) else None
        keys = [{"name": k, "schema": v, "required": k in required, "default": _default(v),
                 "description": (v or {}).get("description") or "",
                 "anchor": f"{_slug(rule or name)}-{_slug(k)}"}
                for k, v in sorted(props.items(), key=lambda kv: (kv[0] != "rule", kv[0]))]
        entry = {"name": name, "description": model.get("description") or "", "fields": keys}
        if isinstance(rule, str):
            rules.append({**entry, "rule": rule, "anchor": f"rule-{_slug(rule)}"})
        else:
            types.append({**entry, "anchor": f"type-{_slug(name)}"})
    if not rules:
        raise SpecError("the schema defines no rule (no $defs model with a const `rule`)", field="$defs")
    rules.sort(key=lambda r: r["rule"])
    package = (schema.get("properties") or {}).get("package")
    return {"rules": rules, "types": types, "title": schema.get("title") or "Exportfile",
            "id": schema.get("$id") or "", "package": package}


# -- curl examples ---------------------------------------------------------------------------------

def _example(schema: Any, doc: dict, name: str = "", depth: int = 0) -> Any:
    """An example value of a request body schema: its default, else a placeholder by type (only
    required properties of objects)."""
    schema = _resolve(doc, schema) if isinstance(schema, dict) else schema
    if not isinstance(schema, dict) or depth > 4:
        return None
    if "default" in schema:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if not (isinstance(s, dict) and s.get("type") == "null")]
            return _example(options[0], doc, name, depth + 1) if options else None
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        required = schema.get("required") or []
        return {k: _example(v, doc, k, depth + 1) for k, v in sorted((schema.get("properties") or {}).items())
                if k in required}
    return {"array": [], "integer": 0, "number": 0, "boolean": False}.get(kind, f"<{name or 'value'}>")


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _shell_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if not name[0].isdigit() else "_" + name


def shell_examples(doc: dict, model: dict) -> list[dict]:
    """One POSIX sh function per operation ({name, summary, method, path, code}) calling curl:
    path parameters are its arguments (in path order), then an optional JSON body (default: an
    example built from the request body schema). STELLA_SERVER, STELLA_TOKEN and STELLA_TENANT
    come from the environment (see the file's header)."""
    out = []
    for op in model["operations"]:
        fn = _shell_name(op["operationId"])
        path_params = re.findall(r"{([^}]+)}", op["path"])
        lines = [f"{fn}() {{  # {op['summary'] or op['operationId']}: {op['method']} {op['path']}"]
        for i, p in enumerate(path_params, 1):
            var = _shell_name(p)
            lines.append(f'\t{var}=${{{i}:?usage: {fn} {" ".join(_shell_name(x).upper() for x in path_params)}'
                         f'{" [JSON]" if op["requestBody"] else ""}}}')
        url_path = op["path"]
        for p in path_params:
            url_path = url_path.replace("{" + p + "}", "${" + _shell_name(p) + "}")
        optional = [f"{p['in']} {p['name']}" for p in op["parameters"] if not p.get("required") and p["in"] != "path"]
        if optional:
            lines.append(f"\t# optional: {', '.join(optional)}")
        args = [f"-X {op['method']}", f'"$STELLA_SERVER{url_path}"']
        if op["requestBody"]:
            schema = next((c["schema"] for c in op["requestBody"]["content"] if c["mediaType"] == "application/json"), None)
            example = json.dumps(_example(schema, doc), sort_keys=True, ensure_ascii=False)
            n = len(path_params) + 1
            lines.append(f'\tbody=${{{n}:-}}')
            lines.append(f'\t[ -n "$body" ] || body={_shell_quote(example)}')
            args += ["-H 'Content-Type: application/json'", '--data-binary "$body"']
        lines.append("\t_stella_curl " + " ".join(args))
        lines.append("}")
        out.append({"name": fn, "summary": op["summary"], "method": op["method"], "path": op["path"],
                    "slug": op["slug"], "code": "\n".join(lines) + "\n"})
    return out
