"""Istio's CRDs as an offline validator: what `kubectl apply` would refuse.

No Kubernetes API server runs here, so this reproduces what it checks for a custom
resource, from the CRD file alone:

- the structural schema of the served version (`openAPIV3Schema`), turned into a JSON
  schema (`json_schema()`) that `jsonschema` (the library check-jsonschema runs) and the
  check-jsonschema CLI can use: `additionalProperties: false` wherever the schema lists
  properties and does not preserve unknown fields (kubectl's strict field validation),
  `nullable`, `int32` ranges, and `apiVersion`/`kind`/`metadata` at the root;
- the `x-kubernetes-validations` CEL rules, evaluated with cel-python and the few
  Kubernetes CEL library functions Istio's rules use (`isURL`, `url().getScheme()`,
  `substring`), with each value typed by its schema as the API server does;
- `x-kubernetes-list-type: map|set` uniqueness.

Problems read like the API server's errors (`spec.url in body should be at least 1
chars long`), so tests can check that a document was refused for the stated reason.

It is not a Kubernetes API server: no defaulting, no admission webhooks (istiod's own
validating webhook adds semantic checks on top), no CEL cost limits, and no transition
rules (`oldSelf`; Istio's CRDs have none).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import celpy
import celpy.celtypes as cel
import jsonschema
import yaml


@dataclass(frozen=True)
class Problem:
    """One reason the API server would refuse a document."""

    path: str  # "spec.match[0].ports[0].number"; "" for the document itself
    message: str  # "Required value", "Invalid value: ...", a CEL rule's message

    def __str__(self):
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidatorError(RuntimeError):
    """The validator itself cannot judge (a CEL function it does not implement):
    a bug to fix here, never a verdict on the document."""


INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"

# ObjectMeta as a user may write it (the API server owns uid, resourceVersion, ...).
METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
        "labels": {"type": "object", "propertyNames": {"pattern": LABEL_KEY, "maxLength": 317},
                   "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


class CrdCatalog:
    """Every (apiVersion, kind) served by the CRDs in one file."""

    def __init__(self, crds: list):
        self._versions = {}
        self._validators = {}
        for crd in crds:
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    api_version = f"{spec['group']}/{version['name']}"
                    schema = version["schema"]["openAPIV3Schema"]
                    self._versions[(api_version, spec["names"]["kind"])] = schema

    @classmethod
    def load(cls, path: Path) -> "CrdCatalog":
        with open(path) as crd_file:
            return cls([doc for doc in yaml.safe_load_all(crd_file) if doc])

    def kinds(self) -> list:
        return sorted(self._versions)

    def structural_schema(self, api_version: str, kind: str) -> dict:
        return self._versions[(api_version, kind)]

    def json_schema(self, api_version: str, kind: str) -> dict:
        """The JSON schema (draft 7) of one served version, as check-jsonschema takes it."""
        root = _json_schema_node(self._versions[(api_version, kind)])
        root["$schema"] = "http://json-schema.org/draft-07/schema#"
        root["title"] = f"{kind} ({api_version}), strict"
        root["properties"] = {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA_SCHEMA,
            **root.get("properties", {}),
        }
        root["required"] = ["apiVersion", "kind", "metadata", *root.get("required", [])]
        root["additionalProperties"] = False
        return root

    def validate(self, doc) -> list:
        """Every problem the API server would report for `doc` (empty: accepted)."""
        if not isinstance(doc, dict):
            return [Problem("", "a manifest must be a YAML mapping")]
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in self._versions:
            return [Problem("", f"no CRD serves apiVersion {key[0]!r} kind {key[1]!r}")]
        if key not in self._validators:
            schema = self.json_schema(*key)
            self._validators[key] = jsonschema.Draft7Validator(
                schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
        problems = [_schema_problem(err) for err in self._validators[key].iter_errors(doc)]
        if problems:
            # CEL rules assume the schema's types (`self.size()` of a string); judge
            # them only on documents that fit it. The verdict is a refusal either way.
            return sorted(set(problems), key=str)
        return _KubernetesRules(self._versions[key]).check(doc)


# --- structural schema -> JSON schema ---------------------------------------------

_DROPPED = {"description", "x-kubernetes-validations", "x-kubernetes-list-type",
            "x-kubernetes-list-map-keys", "x-kubernetes-int-or-string",
            "x-kubernetes-preserve-unknown-fields", "nullable"}


def _json_schema_node(node: dict) -> dict:
    out = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: _json_schema_node(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _json_schema_node(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [_json_schema_node(child) for child in value]
        else:
            out[key] = copy.deepcopy(value)
    preserves = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("type") == "object" and not preserves and "additionalProperties" not in node:
        # Strict field validation: a field the schema does not list is an error,
        # also in an object that lists none.
        out["additionalProperties"] = False
    if node.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"]
    bounds = {"int32": INT32, "int64": INT64}.get(node.get("format"))
    if bounds and node.get("type") == "integer":
        out.setdefault("minimum", bounds[0])
        out.setdefault("maximum", bounds[1])
    return out


def _render_path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _type_name(value) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _schema_problem(err: jsonschema.ValidationError) -> Problem:
    """A jsonschema error in the API server's words."""
    path = _render_path(err.absolute_path)
    value = err.instance
    shown = json.dumps(value) if not isinstance(value, (dict, list)) else f'"{_type_name(value)}"'
    keyword = err.validator
    if keyword == "required":
        missing = re.match(r"'(.*)' is a required property", err.message)
        field = missing.group(1) if missing else err.message
        return Problem(f"{path}.{field}" if path else field, "Required value")
    if keyword == "additionalProperties":
        extra = sorted(set(value) - set(err.schema.get("properties", {})))
        full = ", ".join(f"{path}.{name}" if path else name for name in extra)
        return Problem(path, f'unknown field "{full}"')
    if keyword in ("enum", "const"):
        allowed = err.validator_value if keyword == "enum" else [err.validator_value]
        return Problem(path, f"Unsupported value: {json.dumps(value)}: supported values: "
                             + ", ".join(json.dumps(v) for v in allowed))
    if keyword == "type":
        expected = err.validator_value
        expected = expected[0] if isinstance(expected, list) else expected
        return Problem(path, f'Invalid value: "{_type_name(value)}": {path} in body must be of '
                             f'type {expected}: "{_type_name(value)}"')
    wording = {
        "minLength": "should be at least {} chars long",
        "maxLength": "may not be more than {} bytes",
        "pattern": "should match '{}'",
        "minimum": "should be greater than or equal to {}",
        "maximum": "should be less than or equal to {}",
        "minProperties": "should have at least {} properties",
        "maxProperties": "must have at most {} properties",
        "minItems": "should have at least {} items",
        "maxItems": "must have at most {} items",
    }.get(keyword)
    if wording:
        return Problem(path, f"Invalid value: {shown}: {path} in body "
                             + wording.format(err.validator_value))
    return Problem(path, f"Invalid value: {shown}: {err.message}")


# --- CEL rules and list types ------------------------------------------------------


class _KubernetesRules:
    """Walks a document along its structural schema, checking what JSON schema cannot
    say: `x-kubernetes-validations` and `x-kubernetes-list-type` uniqueness."""

    def __init__(self, schema: dict):
        self.schema = schema
        self.problems = []

    def check(self, doc: dict) -> list:
        self._walk(self.schema, doc, [])
        return self.problems

    def _walk(self, schema: dict, value, path: list):
        if value is None:
            return
        for rule in schema.get("x-kubernetes-validations", []):
            self._rule(rule, schema, value, path)
        if isinstance(value, dict):
            for name, child in schema.get("properties", {}).items():
                if name in value:
                    self._walk(child, value[name], [*path, name])
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                for key, child in value.items():
                    self._walk(extra, child, [*path, key])
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            self._unique(schema, value, path)
            for index, item in enumerate(value):
                self._walk(schema["items"], item, [*path, index])

    def _unique(self, schema: dict, items: list, path: list):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type not in ("map", "set"):
            return
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for index, item in enumerate(items):
            if list_type == "map" and isinstance(item, dict):
                identity = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
            else:
                identity = json.dumps(item, sort_keys=True)
            if identity in seen:
                self.problems.append(Problem(_render_path([*path, index]),
                                             f"Duplicate value: {identity}"))
            seen.add(identity)

    def _rule(self, rule: dict, schema: dict, value, path: list):
        where = _render_path(path)
        try:
            verdict = _evaluate(rule["rule"], to_cel(value, schema))
        except ValidatorError:
            raise
        except Exception as err:  # noqa: BLE001 - a failing rule is a refusal
            self.problems.append(Problem(where, f"Invalid value: \"object\": {_cel_error(err)}"
                                                f" evaluating rule: {rule['rule']}"))
            return
        if verdict is not True and not (isinstance(verdict, cel.BoolType) and bool(verdict)):
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            self.problems.append(Problem(where, f"Invalid value: \"object\": {message}"))


def to_cel(value, schema: dict):
    """A JSON value as the API server hands it to CEL: typed by its schema (a `number`
    written `5` is a double, an `integer` an int), objects as maps."""
    if value is None:
        return None
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return celpy.json_to_cel(value)
    kind = schema.get("type")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return cel.MapType({
            cel.StringType(k): to_cel(v, props.get(k) or (extra if isinstance(extra, dict) else {}))
            for k, v in value.items()})
    if isinstance(value, list):
        item = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return cel.ListType([to_cel(v, item) for v in value])
    if isinstance(value, bool):
        return cel.BoolType(value)
    if kind == "number" and isinstance(value, (int, float)):
        return cel.DoubleType(float(value))
    if isinstance(value, int):
        return cel.IntType(value)
    if isinstance(value, float):
        return cel.DoubleType(value)
    return cel.StringType(str(value))


_CEL = celpy.Environment()


def _evaluate(rule: str, self_value):
    program = _compiled(rule)
    return program.evaluate({"self": self_value})


_PROGRAMS = {}


def _compiled(rule: str):
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _CEL.program(_CEL.compile(rule), functions=KUBERNETES_CEL_FUNCTIONS)
    return _PROGRAMS[rule]


def _cel_error(err: Exception) -> str:
    text = " ".join(str(a) for a in getattr(err, "args", ()) if a)
    if "undeclared reference" in text:
        name = re.search(r"undeclared reference to '([^']+)'", text)
        raise ValidatorError(f"CEL function {name.group(1) if name else '?'} is not "
                             f"implemented by this validator") from err
    if "invalid literal for int()" in text:
        return "type conversion error from 'string' to 'int'"
    if "no such member" in text or "KeyError" in text:
        return "no such key"
    return text or type(err).__name__


# --- the Kubernetes CEL library functions Istio's rules use ------------------------


class GoUrl:
    """What Go's `url.ParseRequestURI` accepts (Kubernetes' `isURL`/`url()` use it)."""

    def __init__(self, raw: str):
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
            raise ValueError("invalid control character in URL")
        if raw == "":
            raise ValueError("empty url")
        self.scheme, self.host, self.path = "", "", ""
        if raw == "*":
            self.path = "*"
            return
        scheme, rest = _go_scheme(raw)
        self.scheme = scheme.lower()
        if rest.endswith("?") and rest.count("?") == 1:
            rest = rest[:-1]
        else:
            rest = rest.split("?", 1)[0]
        if not rest.startswith("/"):
            if self.scheme:
                self.path = rest  # opaque
                return
            raise ValueError("invalid URI for request")
        if self.scheme and rest.startswith("//"):
            authority, rest = rest[2:], ""
            if "/" in authority:
                cut = authority.index("/")
                authority, rest = authority[:cut], authority[cut:]
            self.host = _go_authority(authority)
        _go_unescape(rest, host=False)
        self.path = rest


def _go_scheme(raw: str):
    for i, c in enumerate(raw):
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and (c.isdigit() or c in "+-."):
            if i == 0:
                return "", raw
            continue
        if c == ":":
            if i == 0:
                raise ValueError("missing protocol scheme")
            return raw[:i], raw[i + 1:]
        return "", raw
    return "", raw


_USERINFO_CHARS = set("-._:~!$&'()*+,;=%@")
_HOST_CHARS = set("-_.~!$&'()*+,;=:[]<>\"")


def _go_authority(authority: str) -> str:
    at = authority.rfind("@")
    host = _go_host(authority[at + 1:] if at >= 0 else authority)
    if at >= 0:
        userinfo = authority[:at]
        if not all((c.isascii() and c.isalnum()) or c in _USERINFO_CHARS for c in userinfo):
            raise ValueError("invalid userinfo")
        _go_unescape(userinfo, host=False)
    return host


def _go_host(host: str) -> str:
    if host.startswith("["):
        end = host.rfind("]")
        if end < 0:
            raise ValueError("missing ']' in host")
        port = host[end + 1:]
    elif ":" in host:
        port = host[host.rfind(":"):]
    else:
        port = ""
    if port and not (port.startswith(":") and port[1:].isdigit() or port == ":"):
        raise ValueError(f"invalid port {port!r} after host")
    return _go_unescape(host, host=True)


def _go_unescape(text: str, host: bool) -> str:
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%":
            code = text[i + 1:i + 3]
            if len(code) < 2 or not all(ch in "0123456789abcdefABCDEF" for ch in code):
                raise ValueError(f"invalid URL escape {text[i:i + 3]!r}")
            if host and int(code[0], 16) < 8 and code != "25":
                raise ValueError(f"invalid URL escape {text[i:i + 3]!r}")
            i += 3
            continue
        if host and c.isascii() and not (c.isalnum() or c in _HOST_CHARS):
            raise ValueError(f"invalid character {c!r} in host name")
        i += 1
    return text


def _is_url(value):
    try:
        GoUrl(str(value))
        return cel.BoolType(True)
    except ValueError:
        return cel.BoolType(False)


def _url(value):
    return GoUrl(str(value))  # raises: url() of a non-URL is an evaluation error


def _get_scheme(url):
    if not isinstance(url, GoUrl):
        raise TypeError("getScheme() needs a url")
    return cel.StringType(url.scheme)


def _substring(text, start, end=None):
    text, start = str(text), int(start)
    end = len(text) if end is None else int(end)
    if not 0 <= start <= end <= len(text):
        raise IndexError(f"substring({start}, {end}) out of range for a string of {len(text)}")
    return cel.StringType(text[start:end])


KUBERNETES_CEL_FUNCTIONS = {
    "isURL": _is_url,
    "url": _url,
    "getScheme": _get_scheme,
    "substring": _substring,
}
