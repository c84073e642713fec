"""JSON Schema to Python type expressions, with TypedDicts for objects.

One `TypeRegistry` per generated module collects the TypedDicts that module needs; one `SchemaConverter` per schema
document (a tool's `inputSchema` or `outputSchema`) resolves that document's `$ref`s. Objects with properties become
named TypedDicts, `enum`/`const` become `Literal`, `anyOf`/`oneOf`/type lists become unions, `nullable` adds `None`.
Anything not expressible (remote refs, a schema nested absurdly deep, a `$ref` cycle through a non-object) degrades
to `Any` rather than failing, because one odd tool must never break the SDK of a whole catalog.
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from codemode.names import Namespace, pascal_case
from codemode.render import comment, docstring, literal, one_line

__all__ = ["FieldDef", "SchemaConverter", "TypeRegistry", "TypedDictDef", "is_identifier_key"]

_SHADOWING = frozenset({"str", "int", "float", "bool", "list", "dict"})  # builtins that annotations use
_MAX_DEPTH = 24
_MAX_LITERALS = 64
_SIMPLE = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}
# Titles that pydantic and similar generators put on argument objects; they name nothing a reader cares about.
_GENERIC_TITLE_SUFFIXES = ("Arguments", "Args", "Input", "Params", "Parameters", "Request")


def is_identifier_key(key: str) -> bool:
    """Whether `key` can be a field of a class-syntax TypedDict.

    It must be an identifier and not a keyword, and must not shadow a name that later annotations in the class body
    use: a builtin type, a typing name, or (for any capitalised key) a generated class.
    """
    return key.isidentifier() and not keyword.iskeyword(key) and key not in _SHADOWING and not key[:1].isupper()


@dataclass(frozen=True)
class FieldDef:
    """One key of a TypedDict."""

    key: str
    annotation: str
    required: bool
    description: str = ""

    def rendered_annotation(self) -> str:
        return self.annotation if self.required else f"NotRequired[{self.annotation}]"


@dataclass(frozen=True)
class TypedDictDef:
    """A generated TypedDict: rendered in class syntax when every key is an identifier, functional syntax if not."""

    name: str
    fields: tuple[FieldDef, ...]
    description: str = ""

    def body_signature(self) -> str:
        """The definition without its name, so two identical types under the same wanted name can be merged."""
        return repr((self.fields, self.description))

    def render(self) -> str:
        if all(is_identifier_key(item.key) for item in self.fields):
            lines = [f"class {self.name}(TypedDict):"]
            if self.description:
                lines += docstring(self.description, "    ")
            lines += [
                f"    {item.key}: {item.rendered_annotation()}{comment(item.description)}" for item in self.fields
            ]
            if not self.fields and not self.description:
                lines.append("    pass")
            return "\n".join(lines)
        lines = [f"# {one_line(self.description)}"] if self.description else []
        lines.append(f"{self.name} = TypedDict({self.name!r}, {{")
        lines += [f"    {item.key!r}: {item.rendered_annotation()},{comment(item.description)}" for item in self.fields]
        lines.append("})")
        return "\n".join(lines)


class TypeRegistry:
    """The TypedDicts of one generated module, in definition order (a type's dependencies come first)."""

    def __init__(self, namespace: Namespace) -> None:
        self._namespace = namespace
        self.types: list[TypedDictDef] = []
        self._by_signature: dict[tuple[str, str], str] = {}

    def reserve(self, wanted: str) -> str:
        return self._namespace.claim(wanted, separator="")

    def add(self, wanted: str, definition: TypedDictDef, *, mergeable: bool) -> str:
        """Register `definition`; an identical earlier type wanted under the same name is reused instead."""
        key = (wanted, definition.body_signature())
        existing = self._by_signature.get(key)
        if mergeable and existing is not None:
            self._namespace.release(definition.name)
            return existing
        self._by_signature.setdefault(key, definition.name)
        self.types.append(definition)
        return definition.name


@dataclass
class SchemaConverter:
    """Converts the schemas of one document (resolving its `$ref`s) into type expressions."""

    registry: TypeRegistry
    root: Mapping[str, Any]
    root_hint: str = "Model"  # names the document itself when a `$ref` points back at it ("#")
    _refs: dict[str, str] = field(default_factory=dict)
    _in_progress: set[str] = field(default_factory=set)
    _cycle_hit: set[str] = field(default_factory=set)

    def annotation(self, schema: Any, hint: str, depth: int = 0) -> str:
        """The type expression for `schema`; `hint` names a TypedDict the schema itself does not name."""
        if depth > _MAX_DEPTH or not isinstance(schema, Mapping):
            return "Any"
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self._nullable(schema, self._ref(ref, depth))
        if "const" in schema:
            return self._nullable(schema, self._literals([schema["const"]]) or "Any")
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self._nullable(schema, self._literals(enum) or self._typed(schema, hint, depth))
        for combinator in ("anyOf", "oneOf"):
            options = schema.get(combinator)
            if isinstance(options, list) and options:
                parts = [self.annotation(self._inherit(schema, option), hint, depth + 1) for option in options]
                return self._nullable(schema, union(parts))
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            return self._nullable(schema, self._all_of(schema, all_of, hint, depth))
        return self._nullable(schema, self._typed(schema, hint, depth))

    def object_fields(self, schema: Mapping[str, Any], hint: str, depth: int = 0) -> tuple[FieldDef, ...]:
        """The fields of an object schema, in the schema's own order."""
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return ()
        required = schema.get("required")
        required_keys = {key for key in required if isinstance(key, str)} if isinstance(required, list) else set()
        fields = []
        for key, sub in properties.items():
            sub_schema = sub if isinstance(sub, Mapping) else {}
            fields.append(
                FieldDef(
                    key=str(key),
                    annotation=self.annotation(sub_schema, hint + pascal_case(str(key), fallback="Field"), depth + 1),
                    required=key in required_keys,
                    description=field_description(sub_schema),
                )
            )
        return tuple(fields)

    def _typed(self, schema: Mapping[str, Any], hint: str, depth: int) -> str:
        declared = schema.get("type")
        types = [declared] if isinstance(declared, str) else [t for t in declared or [] if isinstance(t, str)]
        if not types:
            if isinstance(schema.get("properties"), Mapping):
                types = ["object"]
            elif "items" in schema:
                types = ["array"]
            else:
                return "Any"
        return union([self._single(kind, schema, hint, depth) for kind in types])

    def _single(self, kind: str, schema: Mapping[str, Any], hint: str, depth: int) -> str:
        if kind in _SIMPLE:
            return _SIMPLE[kind]
        if kind == "array":
            items = schema.get("items", schema.get("prefixItems"))
            if isinstance(items, list):
                return f"list[{union([self.annotation(item, hint + 'Item', depth + 1) for item in items])}]"
            if isinstance(items, Mapping):
                return f"list[{self.annotation(items, hint + 'Item', depth + 1)}]"
            return "list[Any]"
        if kind == "object":
            properties = schema.get("properties")
            if isinstance(properties, Mapping) and properties:
                return self._object_type(schema, hint, depth)
            extra = schema.get("additionalProperties")
            if isinstance(extra, Mapping) and extra:
                return f"dict[str, {self.annotation(extra, hint + 'Value', depth + 1)}]"
            return "dict[str, Any]"
        return "Any"

    def _object_type(
        self, schema: Mapping[str, Any], hint: str, depth: int, reserved: tuple[str, str] | None = None
    ) -> str:
        if reserved is None:
            wanted = _class_name(schema, hint)
            reserved = (wanted, self.registry.reserve(wanted))
        wanted, name = reserved
        definition = TypedDictDef(name, self.object_fields(schema, name, depth), field_description(schema, False))
        return self.registry.add(wanted, definition, mergeable=name not in self._cycle_hit)

    def _ref(self, ref: str, depth: int) -> str:
        if ref in self._refs:
            if ref in self._in_progress:
                self._cycle_hit.add(self._refs[ref])  # a recursive type is never merged with another
            return self._refs[ref]
        if ref in self._in_progress:
            # A cycle through a non-object (`A = list[A]`) has no TypedDict name to point at.
            return "Any"
        target = self._resolve(ref)
        if target is None:
            return "Any"
        pointer_name = ref.rsplit("/", 1)[-1] if ref.startswith("#/") else ""
        hint = pascal_case(pointer_name, fallback=self.root_hint) if pointer_name else self.root_hint
        if _is_object_with_properties(target):
            wanted = hint if pointer_name else _class_name(target, hint)
            name = self.registry.reserve(wanted)
            # Registered before the body is built, so a self-reference resolves to the name (cycle safety).
            self._refs[ref] = name
            self._in_progress.add(ref)
            final = self._object_type(target, name, depth, reserved=(wanted, name))
            self._in_progress.discard(ref)
            self._refs[ref] = final
            return final
        self._in_progress.add(ref)
        result = self.annotation(target, hint, depth + 1)
        self._in_progress.discard(ref)
        return result

    def _resolve(self, ref: str) -> Mapping[str, Any] | None:
        if not ref.startswith("#"):
            return None  # remote documents are never fetched
        node: Any = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node if isinstance(node, Mapping) else None

    def _all_of(self, schema: Mapping[str, Any], parts: list[Any], hint: str, depth: int) -> str:
        resolved = [self._deref(part) for part in parts]
        if len(resolved) == 1:
            return self.annotation(self._inherit(schema, parts[0]), hint, depth + 1)
        if all(_is_object_with_properties(part) for part in resolved):
            merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
            for part in resolved:
                merged["properties"].update(part.get("properties", {}))
                merged["required"].extend(part.get("required", []) or [])
            for key in ("title", "description"):
                if key in schema:
                    merged[key] = schema[key]
            return self._object_type(merged, hint, depth)
        return "Any"

    def _deref(self, schema: Any) -> Mapping[str, Any]:
        seen: set[str] = set()
        while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str) and schema["$ref"] not in seen:
            seen.add(schema["$ref"])
            schema = self._resolve(schema["$ref"]) or {}
        return schema if isinstance(schema, Mapping) else {}

    def _literals(self, values: list[Any]) -> str | None:
        rendered = []
        for value in values:
            if isinstance(value, float) or not (value is None or isinstance(value, bool | int | str)):
                return None  # Literal cannot hold floats, lists or objects
            text = literal(value)
            if text is None:
                return None
            if text not in rendered:
                rendered.append(text)
        if len(rendered) > _MAX_LITERALS:
            return None
        return f"Literal[{', '.join(rendered)}]"

    @staticmethod
    def _inherit(parent: Mapping[str, Any], option: Any) -> Any:
        # `{"type": "object", "anyOf": [{"required": [...]}, ...]}`: an option without a type inherits the parent's.
        if isinstance(option, Mapping) and "type" not in option and "$ref" not in option and "type" in parent:
            merged = {key: value for key, value in parent.items() if key not in ("anyOf", "oneOf")}
            merged.update(option)
            return merged
        return option

    @staticmethod
    def _nullable(schema: Mapping[str, Any], annotation: str) -> str:
        return union([annotation, "None"]) if schema.get("nullable") is True else annotation


def union(parts: list[str]) -> str:
    """`A | B` without duplicates, `None` last; `Any` absorbs everything."""
    unique: list[str] = []
    for part in parts:
        for piece in _split_union(part):
            if piece not in unique:
                unique.append(piece)
    if "Any" in unique:
        return "Any"
    if "None" in unique:
        unique = [piece for piece in unique if piece != "None"] + ["None"]
    return " | ".join(unique) if unique else "Any"


def _split_union(annotation: str) -> list[str]:
    # Splits only top-level `|`, so `list[int | str]` stays whole.
    pieces, depth, start = [], 0, 0
    for index, char in enumerate(annotation):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "|" and depth == 0:
            pieces.append(annotation[start:index].strip())
            start = index + 1
    pieces.append(annotation[start:].strip())
    return pieces


def field_description(schema: Mapping[str, Any], with_default: bool = True) -> str:
    """A schema's description, plus its default and format when it has them, as one line of prose."""
    parts = []
    description = schema.get("description")
    if isinstance(description, str) and description.strip():
        parts.append(one_line(description))
    if with_default and "default" in schema:
        shown = literal(schema["default"])
        if shown is not None:
            parts.append(f"(default: {shown})")
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt:
        parts.append(f"(format: {one_line(fmt)})")
    return " ".join(parts)


def _is_object_with_properties(schema: Mapping[str, Any]) -> bool:
    properties = schema.get("properties")
    declared = schema.get("type")
    return isinstance(properties, Mapping) and bool(properties) and declared in (None, "object")


def _class_name(schema: Mapping[str, Any], hint: str) -> str:
    title = schema.get("title")
    if isinstance(title, str) and title.strip() and not title.endswith(_GENERIC_TITLE_SUFFIXES):
        return pascal_case(title, fallback=hint)
    return pascal_case(hint, fallback="Model")
