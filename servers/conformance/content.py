"""Tools returning each content shape the suite checks: text, image, audio, embedded resources, a mix, an error.

Also the media they (and the resources and prompts) serve: a minimal PNG and a minimal WAV, built at import.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import wave
import zlib

from mcp.types import AudioContent as AudioBlock
from mcp.types import CallToolResult, EmbeddedResource, ImageContent, TextContent, TextResourceContents

from .core import server


def _png_1x1_red() -> bytes:
    """Build a minimal valid PNG: one opaque red pixel (the suite asks for "a minimal test image")."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit depth, truecolour RGB
    scanline = b"\x00\xff\x00\x00"  # filter byte 0, then R G B
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanline)) + chunk(b"IEND", b"")


def _wav_silence() -> bytes:
    """Build a minimal valid WAV: 10 ms of 8 kHz mono 16-bit silence (the suite checks `audio/wav`)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 80)
    return buffer.getvalue()


PNG_BYTES = _png_1x1_red()
PNG_BASE64 = base64.b64encode(PNG_BYTES).decode()
WAV_BASE64 = base64.b64encode(_wav_silence()).decode()


@server.tool()
def test_simple_text() -> str:
    """Tests simple text content response."""
    return "This is a simple text response for testing."


@server.tool()
def test_image_content() -> list[ImageContent]:
    """Tests image content response (a 1x1 PNG)."""
    return [ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")]


@server.tool()
def test_audio_content() -> list[AudioBlock]:
    """Tests audio content response (a short WAV)."""
    return [AudioBlock(type="audio", data=WAV_BASE64, mime_type="audio/wav")]


@server.tool()
def test_embedded_resource() -> list[EmbeddedResource]:
    """Tests embedded resource content response."""
    resource = TextResourceContents(
        uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
    )
    return [EmbeddedResource(type="resource", resource=resource)]


@server.tool()
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Tests a response mixing text, image and embedded resource content."""
    resource = TextResourceContents(
        uri="test://mixed-content-resource",
        mime_type="application/json",
        text=json.dumps({"test": "data", "value": 123}),
    )
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG_BASE64, mime_type="image/png"),
        EmbeddedResource(type="resource", resource=resource),
    ]


@server.tool()
def test_error_handling() -> CallToolResult:
    """Tests error reporting: always fails, with a result carrying isError true and the message.

    Returned rather than raised so the text is exactly what the suite documents; a raised `ToolError` would
    arrive prefixed with "Error executing tool ...".
    """
    message = TextContent(type="text", text="This tool intentionally returns an error for testing")
    return CallToolResult(content=[message], is_error=True)
