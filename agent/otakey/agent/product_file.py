"""The product file ``otakey product create`` writes: what a PO's factory image needs.

JSON, one object::

    {
      "format": "otakey-product/1",
      "po_name": "PO-1",            # 1..32 printable ASCII, part of every AK derivation
      "po_id": 1,                   # key_ref of PK messages
      "quantity": 1000,
      "pk": "<64 hex digits>",      # the product key — SECRET
      "factory_record": "<hex>"     # keystore record of generation 1 (PRODUCT + PK TLVs,
                                    # docs/flash-layout.md §1): what the firmware build puts at
                                    # the start of keystore area B
    }

The PK is in the file because the factory image must carry it (stage 1 of the scheme): whoever
holds this file can provision devices of the PO until the PO is frozen or its quantity reached.
Keep it with the firmware build secrets; it is written with mode 0600.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from otakey.errors import Error
from otakey.protocol.keystore import KeystoreState, decode_record, encode_record

FORMAT = "otakey-product/1"


class ProductFileError(Error):
    """A product file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class ProductFile:
    po_name: str
    po_id: int
    pk: bytes = field(repr=False)
    quantity: int = 0

    def __post_init__(self) -> None:
        if len(self.pk) != 32:
            raise ValueError("a PK is 32 bytes")
        if not 0 <= self.po_id <= 0xFFFFFFFF:
            raise ValueError("po_id is a u32")
        if not (1 <= len(self.po_name) <= 32 and self.po_name.isascii() and self.po_name.isprintable()):
            raise ValueError("a PO name is 1..32 printable ASCII characters")

    def factory_state(self) -> KeystoreState:
        """The factory keystore record's content (generation 1, PRODUCT + PK)."""
        return KeystoreState(generation=1, po_id=self.po_id, po_name=self.po_name, pk=self.pk)

    def factory_record(self) -> bytes:
        return encode_record(self.factory_state())

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "po_name": self.po_name,
            "po_id": self.po_id,
            "quantity": self.quantity,
            "pk": self.pk.hex(),
            "factory_record": self.factory_record().hex(),
        }, indent=2) + "\n"

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write with mode 0600 (it holds the PK), replacing any earlier file atomically."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, self.to_json().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)

    @classmethod
    def parse(cls, text: str, where: str = "the product file") -> ProductFile:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProductFileError(f"{where} is not JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ProductFileError(f"{where} is not an OTA-Key product file (format {FORMAT!r} expected)")
        try:
            pf = cls(po_name=str(data["po_name"]), po_id=int(data["po_id"]), pk=bytes.fromhex(data["pk"]),
                     quantity=int(data.get("quantity", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProductFileError(f"{where} is malformed: {exc}") from None
        record = data.get("factory_record")
        if record is not None:
            try:
                state = decode_record(bytes.fromhex(record))
            except (ValueError, Error) as exc:
                raise ProductFileError(f"{where} has a bad factory_record: {exc}") from None
            if (state.po_id, state.po_name, state.pk) != (pf.po_id, pf.po_name, pf.pk):
                raise ProductFileError(f"{where}: factory_record does not match po_id/po_name/pk")
        return pf

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ProductFile:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ProductFileError(f"cannot read the product file {path}: {exc.strerror}") from None
        return cls.parse(text, f"the product file {path}")
