"""The typed SDK: one stub module per server, one async function per tool.

From MCP tool definitions (as `tools/list` returns them), grouped by server, this builds:

- `tools/__init__.pyi`, which declares `ToolContent`, the one shape every tool without an `outputSchema` returns;
- `tools/<server>.pyi` per server: TypedDicts for nested inputs and for structured outputs, then
  `async def <tool>(*, arg: T, ...) -> R` per tool, documented from the tool's description and annotations;
- a `ToolBinding` per tool: how a call from the sandbox maps back to the real server, tool and argument names.

Servers and tools are processed in sorted order and every name comes from `names`, so the same catalog always gives
the same text, whatever order the servers listed their tools in.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from codemode.names import STUB_NAMES, Namespace, identifier, module_name, pascal_case, public_identifier
from codemode.render import docstring, first_sentence, literal
from codemode.schema import SchemaConverter, TypedDictDef, TypeRegistry, field_description

__all__ = ["PACKAGE", "PACKAGE_STUB", "ParamBinding", "Sdk", "ServerModule", "ToolBinding", "build_sdk"]

PACKAGE = "tools"
"""The sandbox package holding one module per server: `from tools import notes`."""

PACKAGE_STUB = '''"""One module per server (`from tools import <server>`); each tool is an async function."""

from typing import Any, TypedDict

class ToolContent(TypedDict):
    """What a tool without an output schema returns."""

    text: str  # the text of every text block, joined with newlines
    content: list[dict[str, Any]]  # every content block as the server sent it (text, image, audio, resource, ...)
    structured: dict[str, Any] | None  # the structuredContent the server sent anyway, else None
'''

_HEADER = "from typing import Any, Literal, NotRequired, TypedDict\n\nfrom tools import ToolContent\n"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HINTS = (
    ("readOnlyHint", True, "Read-only."),
    ("destructiveHint", True, "Destructive: may delete or overwrite data."),
    ("idempotentHint", True, "Idempotent: repeating a call has no further effect."),
    ("openWorldHint", True, "Reaches outside systems."),
)


@dataclass(frozen=True)
class ParamBinding:
    """One keyword argument: the name the sandbox uses and the name the server expects."""

    name: str
    real_name: str
    annotation: str
    required: bool
    default: str | None  # Python literal shown in the signature; None means `= None` (argument left out)
    description: str
    nullable: bool  # whether the schema itself admits null; if not, an explicit None means "leave it out"

    def render(self) -> str:
        if self.required:
            return f"{self.name}: {self.annotation}"
        if self.default is not None:
            return f"{self.name}: {self.annotation} = {self.default}"
        nullable = self.annotation == "Any" or self.annotation.endswith("| None")
        annotation = self.annotation if nullable else f"{self.annotation} | None"
        return f"{self.name}: {annotation} = None"


@dataclass(frozen=True)
class ToolBinding:
    """One tool as the sandbox sees it, and the way back to the real call."""

    server: str
    tool: str
    module: str
    function: str
    params: tuple[ParamBinding, ...]
    extra: str | None  # annotation of `**arguments` when the schema admits keys it does not list
    returns: str
    structured: bool  # whether the tool declares an outputSchema (so it returns structuredContent)
    description: str
    hints: tuple[str, ...]

    @property
    def qualified(self) -> str:
        """`server_module.function`, as a program writes it after `from tools import server_module`."""
        return f"{self.module}.{self.function}"

    @property
    def runtime_name(self) -> str:
        """The dotted name the sandbox reports when the program calls this function."""
        return f"{PACKAGE}.{self.module}.{self.function}"

    def signature(self, *, qualified: bool = True) -> str:
        params = [param.render() for param in self.params]
        if self.extra is not None:
            params.append(f"**arguments: {self.extra}")
        arguments = ", ".join(["*", *params]) if self.params else ", ".join(params)
        name = self.qualified if qualified else self.function
        return f"async def {name}({arguments}) -> {self.returns}"

    def summary(self) -> str:
        """The first sentence of the description: the one-line doc of a compact listing."""
        return first_sentence(self.description) if self.description else ""

    def stub(self) -> str:
        """The function's stub: signature and full docstring."""
        description = inspect.cleandoc(self.description)
        doc = [description] if description else []
        args = [_arg_doc(param) for param in self.params if param.description or param.name != param.real_name]
        if self.extra is not None:
            args.append("**arguments: further arguments the tool accepts.")
        if args:
            doc.append("Args:\n" + "\n".join(f"    {line}" for line in args))
        doc.append(" ".join([*self.hints, f"Tool `{self.tool}` of server `{self.server}`."]))
        return "\n".join([self.signature(qualified=False) + ":", *docstring("\n\n".join(doc), "    "), "    ..."])


@dataclass(frozen=True)
class ServerModule:
    """The stub module of one server."""

    server: str
    module: str
    tools: tuple[ToolBinding, ...]
    types: tuple[TypedDictDef, ...]

    def stub(self) -> str:
        parts = ["\n".join(docstring(f"Tools of server `{self.server}`.", "")) + "\n", _HEADER]
        parts += [definition.render() + "\n" for definition in self.types]
        parts += [binding.stub() + "\n" for binding in self.tools]
        return "\n\n".join(part.rstrip("\n") for part in parts) + "\n"

    def tool_stub(self, binding: ToolBinding) -> str:
        """The stub of one tool with every TypedDict it needs, directly or through other types."""
        by_name = {definition.name: definition for definition in self.types}
        needed: set[str] = set()
        pending = _names_in([binding.returns, binding.extra or "", *(p.annotation for p in binding.params)])
        while pending:
            name = pending.pop()
            if name in by_name and name not in needed:
                needed.add(name)
                pending |= _names_in(field.annotation for field in by_name[name].fields)
        types = [definition.render() for definition in self.types if definition.name in needed]
        header = f"# from tools import {self.module}"
        return "\n\n".join([header, *types, binding.stub()]) + "\n"


@dataclass(frozen=True)
class Sdk:
    """The generated SDK of a whole catalog."""

    modules: tuple[ServerModule, ...]

    @property
    def bindings(self) -> dict[str, ToolBinding]:
        """Every tool, by its runtime name (`tools.<module>.<function>`)."""
        return {binding.runtime_name: binding for module in self.modules for binding in module.tools}

    def module(self, name: str) -> ServerModule | None:
        """A server module by server name or module name."""
        for module in self.modules:
            if name in (module.server, module.module):
                return module
        return None

    def find(self, name: str) -> tuple[ServerModule, ToolBinding] | None:
        """A tool by `module.function`, `server.tool` or `server_tool` (the aggregated endpoint's spelling)."""
        for module in self.modules:
            for binding in module.tools:
                if name in (binding.qualified, f"{module.server}.{binding.tool}", f"{module.server}_{binding.tool}"):
                    return module, binding
        return None


def build_sdk(catalog: Mapping[str, Sequence[Mapping[str, Any]]]) -> Sdk:
    """Generate the SDK for `catalog`: server name to that server's tool definitions."""
    modules: list[ServerModule] = []
    module_names = Namespace(set())
    for server in sorted(catalog):
        module = module_names.claim(module_name(server))
        modules.append(_build_module(server, module, catalog[server]))
    return Sdk(tuple(modules))


def _build_module(server: str, module: str, tools: Iterable[Mapping[str, Any]]) -> ServerModule:
    namespace = Namespace(STUB_NAMES)
    registry = TypeRegistry(namespace)
    ordered = sorted((tool for tool in tools if isinstance(tool.get("name"), str)), key=lambda tool: tool["name"])
    functions = [namespace.claim(public_identifier(tool["name"], prefix="tool")) for tool in ordered]
    bindings = tuple(
        _build_binding(server, module, function, tool, registry)
        for function, tool in zip(functions, ordered, strict=True)
    )
    return ServerModule(server, module, bindings, tuple(registry.types))


def _build_binding(
    server: str, module: str, function: str, tool: Mapping[str, Any], registry: TypeRegistry
) -> ToolBinding:
    owner = pascal_case(function, fallback="Tool")
    input_schema = tool.get("inputSchema")
    input_schema = input_schema if isinstance(input_schema, Mapping) else {}
    converter = SchemaConverter(registry, input_schema, owner + "Arguments")
    extra = _extra(converter, input_schema, owner)
    params = _params(converter, input_schema, owner, reserve_arguments=extra is not None)

    output_schema = tool.get("outputSchema")
    structured = isinstance(output_schema, Mapping)
    if isinstance(output_schema, Mapping):
        converter = SchemaConverter(registry, output_schema, owner + "Result")
        returns = converter.annotation(output_schema, owner + "Result")
    else:
        returns = "ToolContent"

    description = tool.get("description") or tool.get("title") or ""
    annotations = tool.get("annotations")
    hints = tuple(
        text
        for key, wanted, text in _HINTS
        if isinstance(annotations, Mapping)
        and annotations.get(key) is wanted
        # Read-only implies the other hints; saying them again is noise.
        and not (key != "readOnlyHint" and annotations.get("readOnlyHint") is True)
    )
    return ToolBinding(
        server=server,
        tool=str(tool["name"]),
        module=module,
        function=function,
        params=params,
        extra=extra,
        returns=returns,
        structured=structured,
        description=str(description),
        hints=hints,
    )


def _params(
    converter: SchemaConverter, schema: Mapping[str, Any], owner: str, *, reserve_arguments: bool
) -> tuple[ParamBinding, ...]:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return ()
    required = schema.get("required")
    required_keys = {key for key in required if isinstance(key, str)} if isinstance(required, list) else set()
    names = Namespace({"arguments"} if reserve_arguments else set())
    params = []
    for real_name, sub in properties.items():
        sub_schema = sub if isinstance(sub, Mapping) else {}
        annotation = converter.annotation(sub_schema, owner + pascal_case(str(real_name), fallback="Arg"))
        default = _default(sub_schema)
        if default == "None" and not annotation.endswith("None"):
            default = None
        params.append(
            ParamBinding(
                name=names.claim(identifier(str(real_name), fallback="arg")),
                real_name=str(real_name),
                annotation=annotation,
                required=real_name in required_keys,
                default=default,
                description=field_description(sub_schema, with_default=False),
                nullable=annotation == "Any" or annotation.endswith("None"),
            )
        )
    # Required first reads best; keyword-only arguments may come in any order.
    return tuple(sorted(params, key=lambda param: not param.required))


def _extra(converter: SchemaConverter, schema: Mapping[str, Any], owner: str) -> str | None:
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping) and extra:
        return converter.annotation(extra, owner + "Extra")
    if extra is True or (extra is None and "properties" not in schema and schema.get("type") in (None, "object")):
        # Keys explicitly allowed, or a schema that declares no properties at all: a free-form tool.
        return "Any"
    return None


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _default(schema: Mapping[str, Any]) -> str | None:
    """The literal to show as a parameter's default; `...` when the schema's default contradicts its own type."""
    if "default" not in schema:
        return None
    value = schema["default"]
    if value is None:
        return "None"  # "absent by default", whatever the type: shown as `T | None = None`
    declared = schema.get("type")
    kinds = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else []
    allowed = tuple(t for kind in kinds if isinstance(kind, str) for t in _JSON_TYPES.get(kind, (object,)))
    mismatch = bool(allowed) and (
        not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed and object not in allowed)
    )
    shown = literal(value)
    return "..." if mismatch or shown is None else shown


def _arg_doc(param: ParamBinding) -> str:
    name = param.name if param.name == param.real_name else f"{param.name} (sent as `{param.real_name}`)"
    return f"{name}: {param.description}" if param.description else name


def _names_in(annotations: Iterable[str]) -> set[str]:
    return {match.group(0) for text in annotations for match in _NAME.finditer(text)}
