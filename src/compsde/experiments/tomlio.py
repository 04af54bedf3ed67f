"""Reading and writing TOML: config files with their encoding checked, and a resolved config's text.

Reading (``read_file``, ``loads``): a config is UTF-8 without a byte-order mark, at most
``MAX_CONFIG_BYTES`` long, and valid TOML; anything else is a ValueError naming the file (and, for
a BOM or a bad byte, saying so and where). ``tomllib`` does the parsing.

Writing (``dumps``): the maintained ``tomli-w`` library writes the text, so strings, keys and numbers
are escaped and formatted by the book; floats are written with ``repr`` and read back to the same
double, so ``tomllib.loads(dumps(c)) == c`` for every resolved config (``compsde.experiments.schema``
refuses what TOML cannot hold — integers outside 64 bits, NaN and infinities — before a config is
ever written).
"""

from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

__all__ = ["MAX_CONFIG_BYTES", "decode", "dumps", "loads", "read_file"]

#: A config file is a few kB; anything this large is not one (and would be read into memory whole).
MAX_CONFIG_BYTES = 16 << 20

_BOM = b"\xef\xbb\xbf"


def decode(data: bytes, where: str) -> str:
    """The text of a config file's bytes: UTF-8 without a byte-order mark, else ValueError naming ``where``."""
    if data.startswith(_BOM):
        raise ValueError(f"{where} starts with a UTF-8 byte-order mark (BOM); TOML files must not have one: "
                         "save the file as UTF-8 without BOM")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{where} is not valid UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}) "
                         f"({e.reason}); TOML files must be UTF-8") from None


def loads(text: str, where: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error becomes ValueError ``"<where>: invalid TOML: ..."``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where}: invalid TOML: {e}") from None


def read_file(path: str | Path) -> dict[str, Any]:
    """Read and parse a TOML config file (a regular file, UTF-8, no BOM, at most ``MAX_CONFIG_BYTES``)."""
    path = Path(path)
    where = str(path)
    if path.is_dir():
        raise ValueError(f"{where} is a directory, not a config file")
    if not path.is_file():
        raise ValueError(f"{where} is not a regular file" if path.exists() else f"{where}: no such file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"{where} is {size} bytes long; a config file is at most {MAX_CONFIG_BYTES} bytes")
    return loads(decode(path.read_bytes(), where), where)


def dumps(config: Mapping[str, Any], header: str = "") -> str:
    """A config as TOML text, with ``header`` as leading comment lines.

    ``tomllib.loads(dumps(c)) == c`` for every config that ``schema.resolve`` returns.
    """
    # A comment ends at a line break and may hold no other control character than a tab.
    clean = "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else " " for c in header)
    lines = [f"# {h}" if h else "#" for h in clean.splitlines()]
    text = tomli_w.dumps(dict(config))
    return "\n".join(lines) + "\n\n" + text if lines else text
