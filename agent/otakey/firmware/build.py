"""``otakey firmware build --product FILE``: the factory image of one product order (PO).

Stage 1 of the scheme: every device of a PO gets the same image, which carries the PO's product key
(PK) in a factory keystore record (generation 1, PRODUCT + PK TLVs, docs/flash-layout.md §1) at the
start of keystore area B. This module reads and checks the product file that ``otakey product
create`` wrote, encodes that record with :mod:`otakey.protocol.keystore`, and runs CMake with the
cross toolchain file and ``-DOTAKEY_FACTORY_RECORD`` (firmware_c/port/stm32f429/README.md).

Builds are cached. One CMake tree per source checkout holds the compiled core and port: a new
product only recompiles the keystore image and relinks. Each product's artifacts (ELF, .bin, .hex,
.map and ``build.json``) go to their own folder — ``--out``, or a folder in the cache named after
the PO and the record's hash — and are reused as long as the record and the firmware sources are
unchanged. The cache lives in ``$OTAKEY_CACHE_DIR`` (default ``$XDG_CACHE_HOME/otakey`` or
``~/.cache/otakey``); only the most recent product folders there are kept.

The image carries the PK, so it is as secret as the product file: artifacts are written with mode
0600 and the cache folder is private to its owner.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otakey.agent.product_file import FORMAT as PRODUCT_FORMAT
from otakey.agent.product_file import ProductFile
from otakey.errors import Error, KeystoreError
from otakey.protocol.keystore import decode_record

from .elf import ElfError, FirmwareElf

CACHE_ENV = "OTAKEY_CACHE_DIR"
SETUP_HINT = "run scripts/setup.sh"
TOOLS = ("cmake", "arm-none-eabi-gcc")
ARTIFACTS = ("otakey-fw.elf", "otakey-fw.bin", "otakey-fw.hex", "otakey-fw.map")
META = "build.json"
KEEP_PRODUCTS = 32  # product folders kept in the cache (least recently used go first)
# What the image is made from: a change to any of these invalidates cached artifacts.
SOURCE_GLOBS = ("firmware_c/**/*", "CMakeLists.txt", "cmake/*.cmake")

REPO_ROOT = Path(__file__).resolve().parents[3]


class FirmwareBuildError(Error):
    """The product file, the toolchain or the build failed; the message says what to do."""


@dataclass(frozen=True)
class BuildResult:
    elf: Path
    out_dir: Path
    po_name: str
    po_id: int
    record_sha256: str
    size_report: str
    cached: bool  # True: reused from an earlier build
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"elf": str(self.elf), "out_dir": str(self.out_dir), "po_name": self.po_name,
                "po_id": self.po_id, "record_sha256": self.record_sha256, "size_report": self.size_report,
                "cached": self.cached, "seconds": round(self.seconds, 3)}


# --------------------------------------------------------------------------------------------- product file


def load_product(path: str | os.PathLike[str]) -> ProductFile:
    """Read and check a product file; FirmwareBuildError with one sentence when it will not do."""
    where = f"the product file {path}"
    p = Path(path)
    if not p.exists():
        raise FirmwareBuildError(f"{where} does not exist (make one with `otakey product create`)")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise FirmwareBuildError(f"cannot read {where}: {reason}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FirmwareBuildError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise FirmwareBuildError(f"{where} must hold one JSON object")
    if data.get("format") != PRODUCT_FORMAT:
        raise FirmwareBuildError(f"{where} is not an OTA-Key product file "
                                 f"(\"format\" must be {PRODUCT_FORMAT!r})")
    for key in ("po_name", "po_id", "pk"):
        if key not in data:
            raise FirmwareBuildError(f"{where} has no {key!r} field")
    name, po_id, pk = data["po_name"], data["po_id"], data["pk"]
    if not (isinstance(name, str) and 1 <= len(name) <= 32 and name.isascii() and name.isprintable()):
        raise FirmwareBuildError(f"{where}: 'po_name' must be 1..32 printable ASCII characters")
    if isinstance(po_id, bool) or not isinstance(po_id, int) or not 0 <= po_id <= 0xFFFFFFFF:
        raise FirmwareBuildError(f"{where}: 'po_id' must be an integer 0..4294967295")
    if not (isinstance(pk, str) and re.fullmatch(r"[0-9a-fA-F]{64}", pk)):
        raise FirmwareBuildError(f"{where}: 'pk' must be 64 hex digits (a 32-byte key)")
    quantity = data.get("quantity", 0)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
        raise FirmwareBuildError(f"{where}: 'quantity' must be a non-negative integer")
    pf = ProductFile(po_name=name, po_id=po_id, pk=bytes.fromhex(pk), quantity=quantity)
    record = data.get("factory_record")
    if record is not None:
        # The file's own record must say what its fields say: a hand-edited file is refused.
        try:
            if not isinstance(record, str):
                raise ValueError("not a string")
            state = decode_record(bytes.fromhex(record))
        except (ValueError, KeystoreError):
            raise FirmwareBuildError(f"{where}: 'factory_record' is not a valid keystore record") from None
        if (state.po_id, state.po_name, state.pk) != (pf.po_id, pf.po_name, pf.pk):
            raise FirmwareBuildError(f"{where}: 'factory_record' does not match po_id, po_name and pk")
    return pf


# --------------------------------------------------------------------------------------------- paths


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "otakey"


def sources_digest(source: Path) -> str:
    """SHA-256 over the paths and contents of what the image is built from."""
    h = hashlib.sha256()
    files = sorted({f for pattern in SOURCE_GLOBS for f in source.glob(pattern)
                    if f.is_file() and "__pycache__" not in f.parts})
    for f in files:
        rel = f.relative_to(source).as_posix().encode()
        data = f.read_bytes()
        h.update(len(rel).to_bytes(4, "little") + rel + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _check_tools() -> None:
    for tool in TOOLS:
        if shutil.which(tool) is None:
            raise FirmwareBuildError(f"{tool} is not installed or not on PATH: {SETUP_HINT}")


def _check_source(source: Path) -> None:
    if not (source / "CMakeLists.txt").is_file() or not (source / "firmware_c/port/stm32f429").is_dir():
        raise FirmwareBuildError(f"no firmware sources at {source} (CMakeLists.txt and firmware_c/ "
                                 "expected); pass --source with the repository's folder")
    toolchain = source / "cmake/arm-none-eabi.cmake"
    if not toolchain.is_file():
        raise FirmwareBuildError(f"the cross toolchain file {toolchain} is missing")


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on a folder (other processes building into it wait)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_meta(out: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _size_report(output: str) -> str:
    """The ``arm-none-eabi-size`` table and the budget lines the post-build step prints."""
    lines = output.splitlines()
    keep = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("text") and "filename" in stripped:
            keep += [stripped, *(x.strip() for x in lines[i + 1:i + 2])]
        elif stripped.startswith("otakey-fw:"):
            keep.append(stripped)
    return "\n".join(keep)


def _run(cmd: list[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FirmwareBuildError(f"cannot run {cmd[0]}: {exc.strerror}: {SETUP_HINT}") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise FirmwareBuildError(f"the firmware {what} failed (exit {proc.returncode}):\n{tail}")
    return output


def _evict(products: Path, keep: int, current: Path) -> None:
    folders = [d for d in products.iterdir() if d.is_dir() and (d / META).exists() and d != current]
    folders.sort(key=lambda d: (d / META).stat().st_mtime, reverse=True)
    for old in folders[max(0, keep - 1):]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------- build


def build_firmware(product: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                   source: str | os.PathLike[str] | None = None, force: bool = False,
                   log: Callable[[str], None] | None = None) -> BuildResult:
    """Build (or reuse) the factory image for the product file ``product``.

    ``out``: folder for the artifacts (default: a folder in the cache). ``force``: rebuild even when
    the artifacts there are current. ``log`` receives progress lines.
    """
    started = time.monotonic()
    say = log or (lambda _line: None)
    pf = load_product(product)
    record = pf.factory_record()
    record_sha = hashlib.sha256(record).hexdigest()
    src = Path(source).resolve() if source is not None else REPO_ROOT
    _check_source(src)
    digest = sources_digest(src)
    root = cache_root()
    products = root / "firmware" / "products"
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", pf.po_name)
    out_dir = Path(out).resolve() if out is not None else products / f"{safe_name}-{record_sha[:16]}"

    def current() -> BuildResult | None:
        meta = _read_meta(out_dir)
        elf = out_dir / ARTIFACTS[0]
        if force or meta is None or not elf.is_file():
            return None
        if meta.get("record_sha256") != record_sha or meta.get("sources_sha256") != digest:
            return None
        os.utime(out_dir / META)  # recently used: kept by the eviction
        return BuildResult(elf, out_dir, pf.po_name, pf.po_id, record_sha, str(meta.get("size_report", "")),
                           True, time.monotonic() - started)

    reused = current()
    if reused is not None:
        say(f"reusing {reused.elf} (same product record and firmware sources)")
        return reused
    _check_tools()
    # One CMake tree per source checkout; products share its compiled core. The PK is in the
    # records, the objects and the images: the cache is private to its owner.
    (root / "firmware").mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root / "firmware", 0o700)
    tree = root / "firmware" / f"tree-{hashlib.sha256(str(src).encode()).hexdigest()[:12]}"
    with _locked(tree):
        with _locked(out_dir):
            reused = current()  # another process may have built it while we waited
            if reused is not None:
                return reused
            records = tree / "records"
            records.mkdir(parents=True, exist_ok=True)
            record_file = records / f"{record_sha[:16]}.bin"
            fd = os.open(record_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, record)
            finally:
                os.close(fd)
            build_dir = tree / "build"
            say(f"configuring {build_dir} for PO {pf.po_name} (number {pf.po_id})")
            _run(["cmake", "-S", str(src), "-B", str(build_dir),
                  f"-DCMAKE_TOOLCHAIN_FILE={src / 'cmake/arm-none-eabi.cmake'}",
                  "-DCMAKE_BUILD_TYPE=MinSizeRel", f"-DOTAKEY_FACTORY_RECORD={record_file}"], "configuration")
            say("building otakey-fw.elf")
            # The post-build size report only prints when the image is relinked; force the link
            # so every product gets its report (the core's objects stay compiled).
            elf_in_tree = build_dir / ARTIFACTS[0]
            elf_in_tree.unlink(missing_ok=True)
            jobs = str(min(2, os.cpu_count() or 1))
            output = _run(["cmake", "--build", str(build_dir), "-j", jobs], "build")
            report = _size_report(output)
            for stale in records.iterdir():
                if stale != record_file:
                    stale.unlink(missing_ok=True)
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in ARTIFACTS:
                made = build_dir / name
                if made.exists():
                    tmp = out_dir / f".{name}.tmp"
                    shutil.copyfile(made, tmp)
                    os.chmod(tmp, 0o600)  # the image carries the PK, like the product file
                    os.replace(tmp, out_dir / name)
            elf = out_dir / ARTIFACTS[0]
            _verify(elf, pf)
            meta = {"po_name": pf.po_name, "po_id": pf.po_id, "record_sha256": record_sha,
                    "sources_sha256": digest, "source": str(src), "size_report": report,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            tmp = out_dir / f".{META}.tmp"
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
            os.replace(tmp, out_dir / META)
    if out is None:
        _evict(products, KEEP_PRODUCTS, out_dir)
    return BuildResult(elf, out_dir, pf.po_name, pf.po_id, record_sha, report, False,
                       time.monotonic() - started)


def _verify(elf_path: Path, pf: ProductFile) -> None:
    """The image must carry exactly this product's factory record in area B, and nothing in A."""
    try:
        elf = FirmwareElf(elf_path)
        state = elf.factory_state()
        result = elf.keystore_boot()
    except ElfError as exc:
        raise FirmwareBuildError(f"the built image is not usable: {exc}") from None
    if (state.po_id, state.po_name, state.pk, state.generation) != (pf.po_id, pf.po_name, pf.pk, 1):
        raise FirmwareBuildError(f"the built image {elf_path} does not carry the factory record "
                                 f"of PO {pf.po_name}")
    if result.active != "B" or not result.blank[0]:
        raise FirmwareBuildError(f"the built image {elf_path} does not boot on its factory record "
                                 "(keystore area A must be erased)")
